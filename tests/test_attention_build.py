"""The attention decode kernel compiles for sm_90a with NVRTC (no GPU needed) within its resource plan.

Specification: every batch bucket / heads-per-pass extreme compiles to SASS with no spills (the kernel
runs one 256-thread CTA per SM, so 255 registers are available), and the launcher's work split for the
benchmark models fills the SMs with one CTA each inside the shared-memory limit.
"""

from __future__ import annotations

import pytest
import torch
from kernel_builds import assert_clean_sass, compile_or_skip

from cf_compile_kernels import attention
from cf_compile_kernels.registry import registered

EXTREMES = [(dt, bb, hg) for dt in ("__half", "__nv_bfloat16") for bb, hg in ((1, 1), (16, 8))]
MODELS = {  # hidden, heads, kv heads, head_dim
    "llama-2-7b": (4096, 32, 32, 128),
    "llama-3-8b": (4096, 32, 8, 128),
    "llama-3.2-1b": (2048, 32, 8, 64),
    "qwen2.5-0.5b": (896, 14, 2, 64),
}
H100_SMS = 132


@pytest.fixture(scope="module")
def compiled():
    return compile_or_skip(attention.SOURCE, attention.KERNEL, EXTREMES)


@pytest.mark.parametrize("args", EXTREMES, ids=lambda a: f"{a[0]}-B{a[1]}-G{a[2]}")
def test_compiles_without_spills(compiled, args):
    assert_clean_sass(compiled[args])


def test_registered_for_the_doctor():
    mine = [e for e in registered() if e.source == attention.SOURCE]
    assert {tuple(e.template_args) for e in mine} >= set(EXTREMES)


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("batch", [1, 4, 16])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_benchmark_shapes_fill_the_gpu(model, batch, dtype):
    hidden, heads, kv_heads, head_dim = MODELS[model]
    shape = dict(hidden=hidden, num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim, batch=batch, dtype=dtype)
    assert attention.attention_unsupported_reason(**shape, max_cache_len=4096, num_sms=H100_SMS) is None
    cfg = attention.attention_config(**shape, num_sms=H100_SMS)
    assert H100_SMS * 0.9 <= cfg["ctas"] <= H100_SMS  # one CTA per SM, co-resident, no idle tenth
    assert cfg["cluster"] <= attention.MAX_CLUSTER
    assert cfg["smem_bytes"] <= attention.SMEM_LIMIT
    assert cfg["k_chunk"] == hidden  # the normalised activations of the whole batch fit at once here


def test_work_split_follows_the_sm_count():
    shape = dict(hidden=4096, num_heads=32, num_kv_heads=8, head_dim=128, batch=1, dtype=torch.float16)
    small = attention.attention_config(**shape, num_sms=66)
    large = attention.attention_config(**shape, num_sms=132)
    assert small["ctas"] <= 66 and large["ctas"] <= 132
    assert large["clusters_per_kv_head"] > small["clusters_per_kv_head"]


def test_large_batch_and_hidden_stage_activations_in_chunks():
    cfg = attention.attention_config(hidden=8192, num_heads=64, num_kv_heads=8, head_dim=128, batch=16,
                                     dtype=torch.bfloat16, num_sms=H100_SMS)
    assert 0 < cfg["k_chunk"] < 8192 and cfg["k_chunk"] % attention.VECTOR_ELEMS == 0
    assert cfg["smem_bytes"] <= attention.SMEM_LIMIT


def test_split_keeps_every_cluster_in_one_wave():
    """When GPCs hold fewer clusters of 4 than SMs // 4, the split moves to smaller clusters, not two waves."""
    gpc_limited = {8: 14, 4: 30, 2: 66, 1: 132}.__getitem__
    c, p = attention.choose_split(32, gpc_limited)
    assert 32 * p <= gpc_limited(c) and 32 * p * c >= 120
    assert attention.choose_split(32, attention.estimated_active_clusters(132)) == (4, 1)  # no split needed
    c, p = attention.choose_split(2, gpc_limited)  # few KV heads: split tokens over clusters
    assert 2 * p <= gpc_limited(c) and 2 * p * c >= 112 and p <= attention.MAX_SPLIT
    assert attention.choose_split(1, attention.estimated_active_clusters(132))[1] <= attention.MAX_SPLIT


def test_default_variant_is_the_measured_tail_and_needs_one_wave():
    """The tail variant waits for other CTAs of the grid: allowed only when every cluster is co-resident;
    otherwise version 3 (bits 0) runs."""
    assert attention.DEFAULT_VARIANT == "tail" and attention.VARIANTS == {"v3": 0, "tail": 1}
    shape = dict(hidden=4096, num_heads=32, num_kv_heads=32, head_dim=128, batch=1, esize=2, num_sms=132)
    one_wave = attention._plan(**shape)
    assert one_wave.one_wave and attention.effective_variant(one_wave, "tail") == 1
    few = {8: 2, 4: 3, 2: 4, 1: 8}.__getitem__  # fewer co-resident clusters than KV heads: two waves
    two_waves = attention._plan(**shape, active=few)
    assert not two_waves.one_wave and attention.effective_variant(two_waves, "tail") == 0


def test_counters_cover_every_hand_off():
    """attn::counters: merge and slice arrive/depart pairs per (KV head, rank) and per slice, q/k/v per KV head."""
    kvh, c, p = 2, 8, 8
    assert attention._counter_count(kvh, c, p) == 2 * kvh * c + 2 * p * c + 2 * kvh
