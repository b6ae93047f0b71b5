"""DeepSeek-V2/V3 multi-head latent attention: matched by structure, eager-identical, near-misses named.

Graph tests run the Dynamo graph eagerly (no Inductor): the rewritten graph must compute bit for bit
what the original computes, both latent caches included, because the MLA reference keeps eager's ops
and rounding points. The end-to-end tests compile with Inductor and decode greedily.
"""

from __future__ import annotations

import pytest
import torch
from families import GraphRecorder, anonymised, decode_graph, toggle_post_sdpa_reshape, transformers
from test_backend import assert_caches_close, compiled_step, greedy
from test_patterns import assert_same_results, count_ops, run_rewrite

from cf_compile import report as report_mod
from cf_compile.ops import mla as mla_ops
from cf_compile.options import Options
from cf_compile.rewrite import ClusterFusionError, choose_implementation, family_of

NOPE, ROPE, V_DIM, LORA = 16, 8, 16, 32
MLA_COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=LORA,
                  q_lora_rank=48, qk_nope_head_dim=NOPE, qk_rope_head_dim=ROPE, v_head_dim=V_DIM,
                  max_position_embeddings=256, first_k_dense_replace=2, n_routed_experts=4,
                  n_shared_experts=1, num_experts_per_tok=2)
CONFIGS = {"v2": "DeepseekV2Config", "v3": "DeepseekV3Config"}
YARN = dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=64,
            mscale=1.0, mscale_all_dim=1.0, beta_fast=32, beta_slow=1)

# (version, config overrides, expected RoPE form, q LoRA)
VARIANTS = {
    "v2-lite (q_proj, complex rope)": ("v2", dict(q_lora_rank=None), "complex", False),
    "v2 (q lora, complex rope)": ("v2", {}, "complex", True),
    "v3 (q lora, interleaved rope)": ("v3", {}, "interleave", True),
    "v3 (q_proj, interleaved rope)": ("v3", dict(q_lora_rank=None), "interleave", False),
    "v3 (neox rope)": ("v3", dict(rope_interleave=False), "neox", True),
    "v3 (biases)": ("v3", dict(attention_bias=True), "interleave", True),
}


def build_mla(version: str, dtype: torch.dtype = torch.float32, seed: int = 0, **overrides):
    """Tiny random DeepSeek model with dense MLPs (first_k_dense_replace = layers); no downloads."""
    torch.manual_seed(seed)
    cfg = getattr(transformers, CONFIGS[version])(**{**MLA_COMMON, **overrides})
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval().to(dtype)
    return model, cfg


def mla_records(rep):
    return [r for r in rep.records if r.block == "mla"]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_mla_layer_is_fused_and_eager_identical(variant):
    version, overrides, form, q_lora = VARIANTS[variant]
    model, cfg = build_mla(version, **overrides)
    gm, inputs = decode_graph(model, cfg)
    new, rep, matches = run_rewrite(gm)
    assert rep.coverage() == "2/2 FFN, 2/2 MLA"
    assert len(matches) == 4
    rec = mla_records(rep)[0]
    assert rec.features["rope"] == form and rec.features["q_lora"] is q_lora
    assert rec.features["bias"] is bool(overrides.get("attention_bias"))
    assert rec.implementation == "reference (inlined)" and "CUDA" in rec.reason  # CPU: no kernel device
    assert rec.shapes == dict(hidden=64, heads=4, q_lora_rank=48 if q_lora else 0, kv_lora_rank=LORA,
                              qk_nope_head_dim=NOPE, qk_rope_head_dim=ROPE, v_head_dim=V_DIM)
    # every projection of the blocks is gone (only the LM head's linear remains), and so is SDPA
    assert count_ops(gm, "sdpa") == 2 and count_ops(new, "sdpa") == 0
    assert count_ops(new, "linear") == 1
    assert_same_results(gm, new, inputs)


@pytest.mark.parametrize("version", ["v2", "v3"])
def test_both_transformers_sdpa_tails_are_fused_and_eager_identical(version):
    """With and without 5.23's no-op reshape after SDPA (5.17 has none): both are matched."""
    model, cfg = build_mla(version)
    gm, inputs = decode_graph(model, cfg, batch=2)
    done = []
    for _ in range(2):                  # the installed version's tail toggled, then toggled back
        done.append(toggle_post_sdpa_reshape(gm))
        new, rep, _ = run_rewrite(gm)
        assert rep.coverage() == "2/2 FFN, 2/2 MLA"
        assert_same_results(gm, new, inputs)
    assert sorted(done) == ["inserted", "removed"]


@pytest.mark.parametrize("version", ["v2", "v3"])
def test_bf16_batch_3_is_eager_identical_through_the_op(version):
    """bf16 (complex RoPE upcasts to fp32 and back) and batch 3, through the opaque op's reference."""
    model, cfg = build_mla(version, torch.bfloat16)
    gm, inputs = decode_graph(model, cfg, batch=3)
    new, rep, _ = run_rewrite(gm, kernels="reference")
    assert rep.coverage() == "2/2 FFN, 2/2 MLA"
    assert all(r.batch == 3 and r.dtype == "bfloat16" for r in mla_records(rep))
    assert sum(n.target is mla_ops.mla_decode_call for n in new.graph.nodes) == 2
    assert_same_results(gm, new, inputs)


def test_yarn_mscale_is_in_the_constant_softmax_scale():
    model, cfg = build_mla("v3", rope_parameters=YARN)
    attn = model.model.layers[0].self_attn
    assert attn.scaling != pytest.approx((NOPE + ROPE) ** -0.5)      # yarn's mscale^2 is folded in
    gm, inputs = decode_graph(model, cfg)
    new, rep, _ = run_rewrite(gm)
    assert rep.coverage() == "2/2 FFN, 2/2 MLA"
    assert mla_records(rep)[0].features["scale"] == attn.scaling
    assert_same_results(gm, new, inputs)


def test_symbolic_cache_length_after_a_second_max_cache_len_is_fused_and_eager_identical():
    """A second cache length makes Dynamo recompile with L symbolic (HF generate() with a new prompt)."""
    model, cfg = build_mla("v2", q_lora_rank=None)
    torch._dynamo.reset()
    rec = GraphRecorder()
    step = torch.compile(model.forward, backend=rec, fullgraph=True)
    for cache_len in (24, 32):
        cache = transformers.StaticCache(config=cfg, max_cache_len=cache_len)
        ids = torch.randint(0, cfg.vocab_size, (1, 5))
        with torch.no_grad():
            model(ids, past_key_values=cache, use_cache=True)
            step(ids[:, -1:], past_key_values=cache, use_cache=True)
    gm, inputs = rec.graphs[-1]
    keys = next(n for n in gm.graph.nodes if n.op == "placeholder" and "keys" in n.name)
    assert isinstance(keys.meta["example_value"].shape[2], torch.SymInt)
    new, rep, _ = run_rewrite(gm)
    assert rep.coverage() == "2/2 FFN, 2/2 MLA"
    concrete = [i.node.hint if isinstance(i, torch.SymInt) else i for i in inputs]   # the size inputs
    assert_same_results(gm, new, concrete)


def test_moe_layers_keep_their_mla_fused():
    model, cfg = build_mla("v2", q_lora_rank=None, first_k_dense_replace=1)
    gm, inputs = decode_graph(model, cfg)
    new, rep, _ = run_rewrite(gm)
    assert [r.status for r in mla_records(rep)] == ["fused", "fused"]
    assert_same_results(gm, new, inputs)


def test_kernel_support_gives_reasons_and_the_kernel_impl_checks_its_inputs():
    model, cfg = build_mla("v3")
    gm, _ = decode_graph(model, cfg)
    _, _, matches = run_rewrite(gm)
    m = next(m for m, _ in matches if m.block == "mla")
    impl, reason, _ = choose_implementation(m, Options())
    assert impl == "reference (inlined)" and "CUDA" in reason  # this machine has no GPU
    reason, config = family_of("mla").kernel_support(m, 132)
    assert "float32" in reason and config == {}  # the tiny fp32 test model is not a kernel shape
    t = torch.zeros(1, 1, 8)
    tensors = dict.fromkeys(("x", "norm_weight", "kv_a_weight", "kv_norm_weight", "kv_b_weight", "cache_position",
                             "k_cache", "v_cache", "o_weight"), t)
    constants = {k: v for k, v in m.op_args.items() if not isinstance(v, (torch.fx.Node, list))}
    with pytest.raises(ValueError, match="only float16 and bfloat16"):
        torch.ops.clusterfusion.mla_decode(**{**constants, **tensors, "q_weights": [t], "q_biases": [None],
                                              "q_norm_weight": t, "cos": t, "sin": t, "attn_mask": None, "impl": "kernel"})


# --- near-misses -----------------------------------------------------------------------------------


def _not_rope(q, k, cos, sin, position_ids=None, unsqueeze_dim=1):
    """A rotation that is not RoPE: the sign of the sin term is flipped."""
    cos = cos[..., : cos.shape[-1] // 2].unsqueeze(unsqueeze_dim)
    sin = sin[..., : sin.shape[-1] // 2].unsqueeze(unsqueeze_dim)
    q1, q2 = q[..., 0::2], q[..., 1::2]
    k1, k2 = k[..., 0::2], k[..., 1::2]
    return (torch.cat([q1 * cos - q2 * sin, q2 * cos - q1 * sin], dim=-1),
            torch.cat([k1 * cos - k2 * sin, k2 * cos - k1 * sin], dim=-1))


def test_unproven_rope_variant_is_a_near_miss(monkeypatch):
    from transformers.models.deepseek_v3 import modeling_deepseek_v3 as v3

    monkeypatch.setattr(v3, "apply_rotary_pos_emb_interleave", _not_rope)
    model, cfg = build_mla("v3")
    gm, inputs = decode_graph(model, cfg)
    new, rep, _ = run_rewrite(gm)
    assert rep.coverage() == "2/2 FFN, 0/2 MLA"
    assert all(r.reason.startswith("k: not a proven RoPE form (tried interleaved") for r in mla_records(rep))
    assert count_ops(new, "sdpa") == 2
    assert_same_results(gm, new, inputs)


def test_layernorm_latent_norm_is_a_near_miss():
    model, cfg = build_mla("v2", q_lora_rank=None)
    for layer in model.model.layers:
        layer.self_attn.kv_a_layernorm = torch.nn.LayerNorm(LORA)
    gm, inputs = decode_graph(model, cfg)
    new, rep, _ = run_rewrite(gm)
    assert [r.reason for r in mla_records(rep)] == ["kv_a_layernorm: norm: LayerNorm (mean-centred), not RMSNorm"] * 2
    assert_same_results(gm, new, inputs)
    with pytest.raises(ClusterFusionError, match=r"mla block of layer 0.*LayerNorm"):
        run_rewrite(gm, strict=True)


def _expand_kv_by_cat(self, kv_nope, k_rot):
    """HF's expand_kv with the keys built by torch.cat instead of new_empty + slice copy_."""
    batch_size, _, seq_length, _ = kv_nope.shape
    kv = self.kv_b_proj(kv_nope).view(batch_size, seq_length, -1, self.qk_nope_head_dim + self.v_head_dim)
    k_nope, value_states = torch.split(kv.transpose(1, 2), [self.qk_nope_head_dim, self.v_head_dim], dim=-1)
    return torch.cat((k_nope, k_rot.expand(-1, k_nope.shape[1], -1, -1)), dim=-1), value_states


def test_other_key_assembly_is_a_near_miss(monkeypatch):
    from transformers.models.deepseek_v2 import modeling_deepseek_v2 as v2

    monkeypatch.setattr(v2.DeepseekV2Attention, "expand_kv", _expand_kv_by_cat)
    model, cfg = build_mla("v2")
    gm, inputs = decode_graph(model, cfg)
    new, rep, _ = run_rewrite(gm)
    assert [r.reason for r in mla_records(rep)] == ["key: not assembled by new_empty + slice copy_ (HF's expand_kv)"] * 2
    assert_same_results(gm, new, inputs)


def test_matcher_never_reads_module_names():
    """Renaming every placeholder and dropping module paths must not change what is matched."""
    model, cfg = build_mla("v3")
    gm, inputs = decode_graph(model, cfg)
    gm = anonymised(gm)
    new, rep, _ = run_rewrite(gm)
    assert rep.coverage() == "2/2 FFN, 2/2 MLA"
    assert_same_results(gm, new, inputs)


def test_without_the_mla_family_attention_reports_it_and_leaves_it():
    model, cfg = build_mla("v3")
    gm, inputs = decode_graph(model, cfg)
    new, rep, _ = run_rewrite(gm, patterns=("attention", "ffn"))
    assert rep.coverage() == "0/2 attention, 2/2 FFN"
    assert all("multi-head latent attention" in r.reason for r in rep.records if r.block == "attention")
    assert_same_results(gm, new, inputs)


def test_prefill_graph_is_skipped():
    model, cfg = build_mla("v2")
    cache = transformers.StaticCache(config=cfg, max_cache_len=24)
    ids = torch.randint(0, cfg.vocab_size, (1, 5))
    rec = GraphRecorder()
    torch._dynamo.reset()
    with torch.no_grad():
        model(ids[:, :1], past_key_values=cache, use_cache=True)     # allocates the latent caches
        cache.reset()
        torch.compile(model.forward, backend=rec, fullgraph=True)(ids, past_key_values=cache, use_cache=True)
    gm, _ = rec.graphs[-1]
    new, rep, matches = run_rewrite(gm)
    assert not matches and mla_records(rep)
    assert all(r.status == "skipped" and "prefill" in r.reason for r in mla_records(rep))
    assert str(new.graph) == str(gm.graph)


# --- end to end through Inductor -------------------------------------------------------------------


@pytest.mark.parametrize(("version", "kernels"), [("v2", "auto"), ("v3", "auto"), ("v2", "reference")])
def test_greedy_tokens_and_latent_caches_match_eager(version, kernels):
    """kernels="reference" keeps the opaque op, which Inductor must functionalise and re-inplace; V2's
    complex RoPE table crosses it as a real view (a complex operand would fail the compile)."""
    model, cfg = build_mla(version, **({"q_lora_rank": None} if version == "v2" else {}))
    eager_tokens, eager_cache = greedy(model, cfg, model.forward, steps=16)
    before = len(report_mod.reports())
    tokens, cache = greedy(model, cfg, compiled_step(model, options={"kernels": kernels}), steps=16)
    assert torch.equal(tokens, eager_tokens)
    assert_caches_close(cache, eager_cache)
    decode = report_mod.reports()[before:]
    assert decode and decode[-1].coverage() == "2/2 FFN, 2/2 MLA"
    impl = {"auto": "reference (inlined)", "reference": "reference (op)"}[kernels]
    assert {r.implementation for r in mla_records(decode[-1])} == {impl}


def test_accuracy_tool_diffs_each_mla_op_and_its_cache_slots():
    from cf_compile.accuracy import compare

    model, cfg = build_mla("v3")
    rep = compare(model, torch.randint(0, cfg.vocab_size, (1, 5)), steps=3)
    ops = [o for o in rep.ops if o.block == "mla"]
    assert len(ops) == 2 and all(o.implementation == "reference (inlined)" for o in ops)
    # the op against its own eager subgraph, on the same inputs: identical, latent and rope slots included
    assert all(o.output.max_abs == 0.0 and [m.max_abs for m in o.cache_slot] == [0.0, 0.0] for o in ops)
