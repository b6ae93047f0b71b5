"""Soundness and coverage sweep: every causal-LM family of the installed transformers, tiny config.

For each family: trace one decode step (static cache) with Dynamo, rewrite it with the
clusterfusion pass, run original and rewritten graph eagerly on the same inputs, and check outputs
and mutated inputs (KV caches, counters) are bitwise equal. Prints one line per family (coverage,
eager-identical or MISMATCH, near-miss reasons); a MISMATCH is a bug in the matcher.

    python benchmarks/sweep_families.py [family ...] > sweep.txt     # each family in its own process:
    for f in $(python benchmarks/sweep_families.py --list); do timeout 120 python benchmarks/sweep_families.py $f; done
"""

from __future__ import annotations

import copy
import inspect
import sys

import torch
import transformers

TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=256, n_embd=64, n_layer=2, n_head=4,
            num_layers=2, d_model=64, ffn_dim=128, moe_intermediate_size=64, num_experts=4, n_routed_experts=4,
            num_experts_per_tok=2, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
            pad_token_id=0, bos_token_id=1, eos_token_id=2)


def families() -> list[tuple[str, str]]:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return [(k, CONFIG_MAPPING_NAMES[k]) for k in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES if k in CONFIG_MAPPING_NAMES]


def decode_graph(config_class: str):
    cls = getattr(transformers, config_class)
    params = inspect.signature(cls.__init__).parameters
    cfg = cls(**{k: v for k, v in TINY.items() if k in params})
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    torch._dynamo.reset()
    cache = transformers.StaticCache(config=cfg, max_cache_len=24)
    ids = torch.randint(3, TINY["vocab_size"], (1, 5))
    graphs = []

    def record(gm, example_inputs, **kwargs):
        graphs.append((gm, list(example_inputs)))
        return gm.forward

    with torch.no_grad():
        model(ids, past_key_values=cache, use_cache=True)
        torch.compile(model.forward, backend=record, fullgraph=True)(ids[:, -1:], past_key_values=cache, use_cache=True)
    return graphs[-1]


def same_results(a, b, inputs) -> bool:
    def run(gm):
        fresh = [t.clone() if isinstance(t, torch.Tensor) and not isinstance(t, torch.nn.Parameter) else t
                 for t in inputs]
        with torch.no_grad():
            return gm(*fresh), fresh

    (out_a, in_a), (out_b, in_b) = run(a), run(b)
    pairs = list(zip(out_a, out_b, strict=True)) + list(zip(in_a, in_b, strict=True))
    return all(not isinstance(x, torch.Tensor) or torch.equal(x, y) for x, y in pairs)


def sweep_one(key: str, config_class: str) -> str:
    from cf_compile.options import Options
    from cf_compile.report import new_graph_report
    from cf_compile.rewrite import rewrite

    try:
        gm, inputs = decode_graph(config_class)
    except Exception as e:
        return f"{key:24s} not traced ({type(e).__name__}: {str(e).splitlines()[0][:90]})"
    rep = new_graph_report()
    new = copy.deepcopy(gm)
    rewrite(new, Options(), rep)
    verdict = "eager-identical" if same_results(gm, new, inputs) else "MISMATCH"
    reasons = sorted({f"{r.block}: {r.reason}" for r in rep.records if r.status != "fused"})
    return f"{key:24s} {rep.coverage():34s} {verdict:16s} {'; '.join(reasons)[:220]}"


def main() -> None:
    wanted = sys.argv[1:]
    if wanted == ["--list"]:
        print("\n".join(k for k, _ in families()))
        return
    for key, config_class in families():
        if not wanted or key in wanted:
            print(sweep_one(key, config_class), flush=True)


if __name__ == "__main__":
    main()
