"""HF models through ``backend="clusterfusion"`` on an sm_90 GPU: the kernels run, tokens match eager.

Real checkpoints' layer shapes (hidden, heads, KV heads, head_dim, intermediate, vocab, biases) with
random weights, two decoder layers each to keep the test short. The LM head is scaled up so that
random logits have clear winners: greedy agreement then tests the blocks, not coin flips between
near-tied logits.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

MODELS = ["llama2-7b", "llama3-8b", "qwen2.5-0.5b", "qwen3-8b", "gemma-2b", "phi3-mini", "mistral-7b"]
REQUIRE_KERNEL = {"llama2-7b", "llama3-8b", "qwen2.5-0.5b", "qwen3-8b"}   # issue 4/5's shapes
TOKENS = 64
LOGIT_SCALE = 64.0


def _model(name: str, dtype: torch.dtype):
    from cf_compile.models import SPECS, config_kwargs

    kwargs = dict(config_kwargs(name, "full"), num_hidden_layers=2)
    cfg = getattr(transformers, SPECS[name].config_class)(**kwargs)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()
    with torch.no_grad():
        head = model.get_output_embeddings().weight
        if head is not model.get_input_embeddings().weight:
            head.mul_(LOGIT_SCALE)
    return model, cfg


def _greedy(model, cfg, step, tokens=TOKENS, prompt=7):
    cache = transformers.StaticCache(config=cfg, max_cache_len=prompt + tokens + 8)
    ids = (torch.arange(prompt, device="cuda")[None] * 131 + 5) % cfg.vocab_size
    out = []
    with torch.no_grad():
        tok = model(ids, past_key_values=cache).logits[:, -1:].argmax(-1)
        for _ in range(tokens):
            out.append(tok)
            tok = step(tok, past_key_values=cache).logits[:, -1:].argmax(-1)
    return torch.cat(out, 1), cache


@pytest.mark.parametrize("name", MODELS)
def test_fused_kernels_run_and_match_eager_inside_the_bf16_band(name):
    """64 teacher-forced decode steps (cf_compile.accuracy): the compiled logits stay inside eager
    bf16's own rounding band against fp32, the compiled argmax flips no more steps than eager bf16 flips
    against fp32 (random weights have near-tied logits: a free-running greedy run of Inductor itself
    leaves eager within 1-17 of 128 steps, benchmarks/RESULTS.md), and the caches end as eager's."""
    from cf_compile.accuracy import compare
    from cf_compile.report import last_report

    model, cfg = _model(name, torch.bfloat16)
    ids = ((torch.arange(7, device="cuda")[None] * 131 + 5) % cfg.vocab_size)
    rep = compare(model, ids, steps=TOKENS, options={"kernels": "all"}, name=name)
    records = last_report().records
    impls = {(r.block, r.implementation, r.reason) for r in records}
    assert last_report().coverage() == "2/2 attention, 2/2 FFN", impls
    if name in REQUIRE_KERNEL:
        assert all(r.implementation == "kernel" for r in records), impls
    else:   # another shape may fall back to the reference, but never silently
        assert all(r.implementation == "kernel" or r.reason for r in records), impls
    assert rep.ok, rep.verdict()
    ours, eager_vs_fp32 = rep.compiled_vs_eager, rep.pair("eager", "float32")
    flips = round((1 - ours.tokens.fraction) * rep.steps)
    eager_flips = round((1 - eager_vs_fp32.tokens.fraction) * rep.steps)
    assert flips <= 2 * eager_flips + 1, f"{name}: {flips} flipped steps vs eager bf16's own {eager_flips}"
    # the caches: no further from eager's than eager's own rounding puts them from fp32
    assert ours.kv_worst <= 2 * eager_vs_fp32.kv_worst, (ours.kv_max_abs, eager_vs_fp32.kv_max_abs)


def test_mla_kernel_runs_through_the_backend_inside_the_bf16_band():
    """DeepSeek-V2-Lite's MLA blocks (full shapes, dense MLPs in both layers) run the fused MLA kernel through
    the backend: inside eager bf16's band against fp32 for 32 teacher-forced steps, caches as eager's."""
    from cf_compile.accuracy import compare
    from cf_compile.models import SPECS, config_kwargs
    from cf_compile.report import last_report

    kwargs = dict(config_kwargs("deepseek-v2-lite", "full"), num_hidden_layers=2, first_k_dense_replace=99)
    cfg = getattr(transformers, SPECS["deepseek-v2-lite"].config_class)(**kwargs)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(LOGIT_SCALE)
    ids = ((torch.arange(7, device="cuda")[None] * 131 + 5) % cfg.vocab_size)
    rep = compare(model, ids, steps=32, options={"kernels": "all"}, name="deepseek-v2-lite")
    mla = [r for r in last_report().records if r.block == "mla"]
    assert len(mla) == 2 and all(r.implementation == "kernel" for r in mla), [(r.implementation, r.reason) for r in mla]
    assert rep.ok, rep.verdict()
    ours, eager_vs_fp32 = rep.compiled_vs_eager, rep.pair("eager", "float32")
    assert ours.kv_worst <= 2 * eager_vs_fp32.kv_worst, (ours.kv_max_abs, eager_vs_fp32.kv_max_abs)


def test_kernel_op_writes_the_users_cache_in_place(monkeypatch):
    """Inductor must hand the kernel the user's cache tensors (no functionalisation clone)."""
    import cf_compile_kernels.attention as kernels

    seen: list[int] = []
    real = kernels.attention_decode

    def spy(*args, **kwargs):
        seen.append(args[12].data_ptr())    # k_cache
        return real(*args, **kwargs)

    monkeypatch.setattr(kernels, "attention_decode", spy)
    model, cfg = _model("llama3-8b", torch.bfloat16)
    torch._dynamo.reset()
    step = torch.compile(model.forward, backend="clusterfusion", options={"cudagraphs": False, "kernels": "all"})
    _, cache = _greedy(model, cfg, step, tokens=4)
    assert seen and set(seen) == {layer.keys.data_ptr() for layer in cache.layers}


def test_reduce_overhead_mode_runs_the_kernels_under_cuda_graph_trees():
    model, cfg = _model("qwen2.5-0.5b", torch.bfloat16)
    eager, _ = _greedy(model, cfg, model.forward, tokens=16)
    torch._dynamo.reset()
    step = torch.compile(model.forward, backend="clusterfusion", options={"mode": "reduce-overhead", "kernels": "all"})
    ours, _ = _greedy(model, cfg, step, tokens=16)
    assert torch.equal(ours, eager)


def test_auto_runs_only_kernels_measured_faster_than_inductor():
    """kernels="auto" consults cf_compile/policy.py: a kernel runs with the benchmark's evidence in the
    report, a kernel left out says it was measured slower or never measured at this shape, and its block is
    left to Inductor as traced (not rewritten into the reference)."""
    from cf_compile.report import last_report

    model, cfg = _model("llama3-8b", torch.bfloat16)
    torch._dynamo.reset()
    _greedy(model, cfg, torch.compile(model.forward, backend="clusterfusion"), tokens=2)
    for r in last_report().records:
        if r.implementation == "kernel":
            assert r.kernel_config["evidence"].startswith("measured faster than Inductor"), r.kernel_config
        else:
            assert r.implementation == "Inductor (block as traced)", r
            assert "slower than Inductor" in r.reason or "not benchmarked" in r.reason, r.reason


def test_report_gives_the_split_the_launcher_uses():
    """The report's attention config is the launched plan (the driver's co-resident cluster counts), not the
    SM-count estimate: on the H100 they differ (Llama-3.2-1B: estimate C4/P8, launched C2/P8; round 17)."""
    import cf_compile_kernels.attention as kernels
    from cf_compile.report import last_report

    model, cfg = _model("llama3.2-1b", torch.bfloat16)
    torch._dynamo.reset()
    step = torch.compile(model.forward, backend="clusterfusion", options={"cudagraphs": False, "kernels": "all"})
    _greedy(model, cfg, step, tokens=2)
    fused = [r for r in last_report().records if r.block == "attention" and r.implementation == "kernel"]
    assert fused
    for r in fused:
        plan = kernels.device_plan(torch.bfloat16, hidden=r.shapes["hidden"], num_heads=r.shapes["heads"],
                                   num_kv_heads=r.shapes["kv_heads"], head_dim=r.shapes["head_dim"],
                                   batch=r.batch, device_index=torch.cuda.current_device())
        assert (r.kernel_config["cluster"], r.kernel_config["clusters_per_kv_head"]) == (
            plan.cluster, plan.clusters_per_kv_head), r.kernel_config
        # batch 1, group 4, head_dim 64: the default's head-lane loop runs, and the report says so
        assert (r.kernel_config["variant"], r.kernel_config["phase4"]) == (kernels.DEFAULT_VARIANT, "head-lanes")


def test_lean_graph_replays_match_ungraphed_steps_and_a_new_cache_recaptures():
    from cf_compile.cudagraph import captures
    from cf_compile.report import last_report

    model, cfg = _model("llama3.2-1b", torch.bfloat16)
    torch._dynamo.reset()
    plain = torch.compile(model.forward, backend="clusterfusion", options={"cudagraphs": False})
    ref_tokens, ref_cache = _greedy(model, cfg, plain, tokens=24)
    torch._dynamo.reset()
    graphed = torch.compile(model.forward, backend="clusterfusion")
    before = captures()
    tokens, cache = _greedy(model, cfg, graphed, tokens=24)
    assert last_report().cuda_graph and captures() == before + 1
    assert torch.equal(tokens, ref_tokens)
    for a, b in zip(cache.layers, ref_cache.layers, strict=True):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    # a second generation allocates a new cache: the runner must re-capture, not replay stale addresses
    tokens2, _ = _greedy(model, cfg, graphed, tokens=24)
    assert torch.equal(tokens2, ref_tokens) and captures() == before + 2
