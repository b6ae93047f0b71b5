"""Tiny random HF decoders of every supported family, and their Dynamo decode/prefill graphs.

The models keep each family's structure (GQA, qkv bias, q/k norm, fused projections, Gemma's norm
and GELU) at hidden 64 and 2 layers, so that matching and Inductor compiles stay fast on 2 cores.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256)

FAMILIES = {
    "llama": lambda **kw: transformers.LlamaConfig(**{**COMMON, **kw}),
    "mistral": lambda **kw: transformers.MistralConfig(**{**COMMON, "sliding_window": None, **kw}),
    "qwen2": lambda **kw: transformers.Qwen2Config(**{**COMMON, **kw}),
    "qwen3": lambda **kw: transformers.Qwen3Config(**{**COMMON, "head_dim": 16, **kw}),
    "phi3": lambda **kw: transformers.Phi3Config(**{**COMMON, "pad_token_id": 0, **kw}),
    "gemma": lambda **kw: transformers.GemmaConfig(**{**COMMON, "head_dim": 16, **kw}),
    # Gemma3: per-head q/k norms with the (1 + w) factor; its sliding window is wider than the caches
    "gemma3": lambda **kw: transformers.Gemma3TextConfig(**{**COMMON, "head_dim": 16, **kw}),
}


def build(family: str, dtype: torch.dtype = torch.float32, seed: int = 0, **overrides):
    """(model, config) with random weights; no downloads."""
    torch.manual_seed(seed)
    cfg = FAMILIES[family](**overrides)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval().to(dtype)
    return model, cfg


class GraphRecorder:
    """A Dynamo backend that keeps the graphs it is given and runs them eagerly."""

    def __init__(self):
        self.graphs: list[tuple[torch.fx.GraphModule, list]] = []

    def __call__(self, gm, example_inputs, **kwargs):
        self.graphs.append((gm, list(example_inputs)))
        return gm.forward


def decode_graph(model, cfg, batch: int = 1, max_cache_len: int = 24, prompt_len: int = 5):
    """Dynamo graph of one decode step (torch.compile(model.forward) path) and its real inputs."""
    torch._dynamo.reset()
    cache = transformers.StaticCache(config=cfg, max_cache_len=max_cache_len)
    ids = torch.randint(0, cfg.vocab_size, (batch, prompt_len))
    rec = GraphRecorder()
    with torch.no_grad():
        model(ids, past_key_values=cache, use_cache=True)
        step = torch.compile(model.forward, backend=rec, fullgraph=True)
        step(ids[:, -1:], past_key_values=cache, use_cache=True)
    gm, inputs = rec.graphs[-1]
    return gm, inputs


def prefill_graph(model, cfg, prompt_len: int = 5, max_cache_len: int = 24):
    torch._dynamo.reset()
    cache = transformers.StaticCache(config=cfg, max_cache_len=max_cache_len)
    cache.early_initialization(batch_size=1, num_heads=cfg.num_key_value_heads,
                               head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads,
                               dtype=next(model.parameters()).dtype, device=torch.device("cpu"))
    ids = torch.randint(0, cfg.vocab_size, (1, prompt_len))
    rec = GraphRecorder()
    with torch.no_grad():
        torch.compile(model.forward, backend=rec, fullgraph=True)(ids, past_key_values=cache, use_cache=True)
    return rec.graphs[-1]


def anonymised(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """The same graph with placeholders renamed and module paths dropped: what a matcher that reads
    names would stumble on."""
    for i, n in enumerate(gm.graph.nodes):
        n.meta.pop("nn_module_stack", None)
        if n.op == "placeholder":
            n.name = f"input_{i}"
    gm.recompile()
    return gm


def toggle_post_sdpa_reshape(gm: torch.fx.GraphModule) -> str:
    """Give the graph the other transformers version's SDPA tail, in place; returns "removed" or "inserted".

    transformers 5.23's ``sdpa_attention_forward`` ends with ``attn_output.reshape(B, -1, q_len, D)``
    (undoing its GQA packing; a no-op in a compiled decode step); 5.17 has no such reshape. Removing it
    from a 5.23 graph gives the 5.17 shape and inserting it into a 5.17 graph the 5.23 shape, so either
    venv tests both."""
    sdpas = [n for n in gm.graph.nodes if n.op == "call_function" and "scaled_dot_product_attention" in str(n.target)]
    assert sdpas, "no SDPA in the graph"
    done = set()
    for sdpa in sdpas:
        (user,) = sdpa.users
        out_shape = tuple(sdpa.meta["example_value"].shape)
        if user.op == "call_method" and user.target == "reshape" and \
                tuple(user.meta["example_value"].shape) == out_shape:
            user.replace_all_uses_with(sdpa)
            gm.graph.erase_node(user)
            done.add("removed")
        else:
            with gm.graph.inserting_after(sdpa):
                r = gm.graph.call_method("reshape", (sdpa, out_shape[0], -1, out_shape[2], out_shape[3]))
            r.meta = {**sdpa.meta, "example_value": sdpa.meta["example_value"].reshape(out_shape)}
            user.replace_input_with(sdpa, r)
            done.add("inserted")
    assert len(done) == 1
    gm.recompile()
    return done.pop()
