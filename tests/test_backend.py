"""HF model in -> tokens out: ``torch.compile(..., backend="clusterfusion")`` end to end on Inductor.

fp32 models, so that eager and compiled logits agree to ~1e-6 and greedy tokens must be identical.
"""

from __future__ import annotations

import json

import pytest
import torch
from families import build, transformers

from cf_compile import report as report_mod
from cf_compile.ops import attention as attention_ops

STEPS = 32


def greedy(model, cfg, step_fn, steps=STEPS, batch=1, prompt_len=5, max_cache_len=48, seed=0):
    """Prefill eagerly, then ``steps`` greedy decode steps through ``step_fn``; returns tokens, cache."""
    torch.manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (batch, prompt_len))
    cache = transformers.StaticCache(config=cfg, max_cache_len=max_cache_len)
    tokens = []
    with torch.no_grad():
        nxt = model(ids, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)
        for _ in range(steps):
            tokens.append(nxt)
            nxt = step_fn(nxt, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)
    return torch.cat(tokens, 1), cache


def assert_caches_close(a, b):
    for la, lb in zip(a.layers, b.layers, strict=True):
        torch.testing.assert_close(la.keys, lb.keys)
        torch.testing.assert_close(la.values, lb.values)


def compiled_step(model, **kwargs):
    torch._dynamo.reset()
    return torch.compile(model.forward, backend="clusterfusion", fullgraph=True, **kwargs)


def test_backend_string_resolves_through_the_entry_point():
    assert "clusterfusion" in torch._dynamo.list_backends()


def test_greedy_tokens_and_caches_identical_to_eager(family):
    model, cfg = build(family)
    eager_tokens, eager_cache = greedy(model, cfg, model.forward)
    before = len(report_mod.reports())
    tokens, cache = greedy(model, cfg, compiled_step(model))
    assert torch.equal(tokens, eager_tokens)
    assert_caches_close(cache, eager_cache)
    decode = report_mod.reports()[before:]
    assert decode and decode[-1].coverage() == "2/2 attention, 2/2 FFN"


def test_batch_4_decode():
    model, cfg = build("qwen2")
    eager_tokens, _ = greedy(model, cfg, model.forward, batch=4, steps=8)
    tokens, _ = greedy(model, cfg, compiled_step(model), batch=4, steps=8)
    assert torch.equal(tokens, eager_tokens)


def test_reference_op_runs_in_place_on_the_users_cache(monkeypatch):
    """With an opaque op (kernels="reference"), Inductor must hand the op the user's cache tensors:
    a functionalisation clone would show up as a different data pointer (and a full-cache copy)."""
    model, cfg = build("llama")
    seen: list[int] = []
    real = attention_ops.attention_decode_reference

    def spy(*args):
        seen.append(args[13].data_ptr())    # k_cache
        return real(*args)

    monkeypatch.setattr(attention_ops, "attention_decode_reference", spy)
    eager_tokens, eager_cache = greedy(model, cfg, model.forward, steps=8)
    tokens, cache = greedy(model, cfg, compiled_step(model, options={"kernels": "reference"}), steps=8)
    assert torch.equal(tokens, eager_tokens)
    assert_caches_close(cache, eager_cache)
    user_ptrs = {layer.keys.data_ptr() for layer in cache.layers}
    assert seen and set(seen) == user_ptrs


def test_every_layers_op_reads_one_copy_of_the_steps_rope_tables_and_mask(monkeypatch):
    """Inductor copies an unrealised input per extern kernel: without clusterfusion::shared_input each
    layer's op got its own recomputed cos, sin and mask (two extra GPU kernels per layer). With it, every
    layer's op reads the same three buffers, and the tokens stay eager's."""
    model, cfg = build("llama")
    tables: list[tuple[int, int, int]] = []
    real = attention_ops.attention_decode_reference

    def spy(*args):
        tables.append((args[10].data_ptr(), args[11].data_ptr(), args[15].data_ptr()))   # cos, sin, mask
        return real(*args)

    monkeypatch.setattr(attention_ops, "attention_decode_reference", spy)
    eager_tokens, _ = greedy(model, cfg, model.forward, steps=2)
    tokens, _ = greedy(model, cfg, compiled_step(model, options={"kernels": "reference"}), steps=2)
    assert torch.equal(tokens, eager_tokens)
    per_step = cfg.num_hidden_layers
    assert len(tables) == 2 * per_step and cfg.num_hidden_layers > 1
    for step in range(2):
        assert len(set(tables[step * per_step:(step + 1) * per_step])) == 1


def test_reduce_overhead_mode_is_passed_to_inductor():
    model, cfg = build("llama")
    eager_tokens, _ = greedy(model, cfg, model.forward, steps=8)
    tokens, _ = greedy(model, cfg, compiled_step(model, mode="reduce-overhead"), steps=8)
    assert torch.equal(tokens, eager_tokens)


def test_generate_with_compile_config_and_no_recompile_on_second_generate():
    model, cfg = build("llama")
    ids = torch.randint(0, cfg.vocab_size, (1, 6))
    gen = dict(max_new_tokens=12, do_sample=False, cache_implementation="static")
    eager = model.generate(ids, disable_compile=True, **gen)
    cc = transformers.CompileConfig(backend="clusterfusion", mode=None, fullgraph=True)
    cc._compile_all_devices = True          # HF compiles only on CUDA unless told otherwise
    torch._dynamo.reset()
    before = len(report_mod.reports())
    out = model.generate(ids, compile_config=cc, **gen)
    compiled_graphs = len(report_mod.reports()) - before
    out2 = model.generate(ids, compile_config=cc, **gen)
    assert torch.equal(out, eager) and torch.equal(out2, eager)
    assert compiled_graphs >= 1
    assert len(report_mod.reports()) - before == compiled_graphs, "second generate() recompiled"
    assert report_mod.reports()[-1].coverage() == "2/2 attention, 2/2 FFN"


def test_strict_option_raises_through_torch_compile():
    model, cfg = build("phi3", partial_rotary_factor=0.5)
    with pytest.raises(Exception, match=r"attention block of layer 0.*partial rotary"):
        greedy(model, cfg, compiled_step(model, options={"strict": True}), steps=1)


def test_unknown_option_is_rejected():
    model, cfg = build("llama")
    with pytest.raises(Exception, match="unknown option"):
        greedy(model, cfg, compiled_step(model, options={"kernel": "auto"}), steps=1)


def test_report_option_writes_json(tmp_path):
    model, cfg = build("gemma")
    path = tmp_path / "report.json"
    greedy(model, cfg, compiled_step(model, options={"report": str(path)}), steps=2)
    rows = json.loads(path.read_text())
    assert [(r["layer"], r["block"], r["status"]) for r in rows] == [
        (0, "attention", "fused"), (1, "attention", "fused"), (0, "ffn", "fused"), (1, "ffn", "fused")]
    assert all(r["implementation"] in ("kernel", "reference (inlined)") for r in rows)


def test_inductor_fx_graph_cache_hits_for_a_rewritten_graph(monkeypatch, tmp_path):
    from torch._dynamo.utils import counters
    from torch._inductor import config

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    model, cfg = build("llama")
    with config.patch(fx_graph_cache=True):
        greedy(model, cfg, compiled_step(model), steps=1)
        counters.clear()
        greedy(model, cfg, compiled_step(model), steps=1)
    assert counters["inductor"]["fxgraph_cache_hit"] >= 1


def _normalised_code(code: str) -> list[str]:
    """Inductor's output code without comments and with buffer/kernel names erased."""
    import re

    lines = [ln for ln in code.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return [re.sub(r"\b(buf|arg|cpp_fused_|triton_)\w*", "N", ln) for ln in lines]


def test_without_kernels_inductor_generates_the_same_code_as_for_the_original_graph():
    """The inlined reference is what makes the rewrite free where no kernel runs: Inductor must
    produce the very code it produces for the untouched model."""
    from torch._inductor.utils import run_and_get_code

    model, cfg = build("llama")

    def generated(**kw):
        torch._dynamo.reset()
        cache = transformers.StaticCache(config=cfg, max_cache_len=32)
        ids = torch.randint(0, cfg.vocab_size, (1, 4))
        with torch.no_grad():
            model(ids, past_key_values=cache)
            step = torch.compile(model.forward, fullgraph=True, **kw)
            return run_and_get_code(step, ids[:, -1:], past_key_values=cache)[1][-1]

    ours = generated(backend="clusterfusion")
    assert report_mod.last_report().coverage() == "2/2 attention, 2/2 FFN"
    assert _normalised_code(ours) == _normalised_code(generated(backend="inductor"))


def test_new_cache_lengths_compile_once_more_with_a_symbolic_length_and_stay_fused():
    model, cfg = build("llama")
    step = compiled_step(model)
    before = len(report_mod.reports())
    for max_cache_len in (24, 40, 56):
        eager_tokens, _ = greedy(model, cfg, model.forward, steps=6, max_cache_len=max_cache_len)
        tokens, _ = greedy(model, cfg, step, steps=6, max_cache_len=max_cache_len)
        assert torch.equal(tokens, eager_tokens)
    graphs = report_mod.reports()[before:]
    assert len(graphs) == 2, "the third length must reuse the symbolic-length graph"
    assert all(g.coverage() == "2/2 attention, 2/2 FFN" for g in graphs)


def test_generate_with_left_padded_batch_matches_eager():
    """Padding positions are masked through the attention mask the fused op receives."""
    model, cfg = build("qwen2")
    ids = torch.randint(1, cfg.vocab_size, (2, 7))
    mask = torch.ones_like(ids)
    ids[0, :3], mask[0, :3] = 0, 0            # row 0 is left-padded by three tokens
    gen = dict(attention_mask=mask, max_new_tokens=10, do_sample=False, cache_implementation="static",
               pad_token_id=0)
    eager = model.generate(ids, disable_compile=True, **gen)
    cc = transformers.CompileConfig(backend="clusterfusion", mode=None, fullgraph=True)
    cc._compile_all_devices = True
    torch._dynamo.reset()
    out = model.generate(ids, compile_config=cc, **gen)
    assert torch.equal(out, eager)
    assert report_mod.last_report().coverage() == "2/2 attention, 2/2 FFN"
