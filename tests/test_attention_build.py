"""The attention decode kernel compiles for sm_90a with NVRTC (no GPU needed) within its resource plan.

Specification: every batch bucket / heads-per-pass extreme compiles to SASS with no spills (the kernel
runs one 256-thread CTA per SM, so 255 registers are available), and the launcher's work split for the
benchmark models fills the SMs with one CTA each inside the shared-memory limit.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

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
# The chosen split of the benchmark shapes on the H100 estimate (132 SMs): recorded so an override can never
# move the default. (C, P) per model, the same at every batch and dtype.
DEFAULT_SPLITS = {"llama-2-7b": (4, 1), "llama-3-8b": (8, 2), "llama-3.2-1b": (8, 2), "qwen2.5-0.5b": (8, 8)}


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
def test_benchmark_shapes_fill_the_gpu_with_the_recorded_default_split(model, batch, dtype):
    hidden, heads, kv_heads, head_dim = MODELS[model]
    shape = dict(hidden=hidden, num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim, batch=batch, dtype=dtype)
    assert attention.attention_unsupported_reason(**shape, max_cache_len=4096, num_sms=H100_SMS) is None
    cfg = attention.attention_config(**shape, num_sms=H100_SMS, kernel="cluster")
    assert H100_SMS * 0.9 <= cfg["ctas"] <= H100_SMS  # one CTA per SM, co-resident, no idle tenth
    assert (cfg["cluster"], cfg["clusters_per_kv_head"]) == DEFAULT_SPLITS[model]
    assert attention.attention_config(**shape, num_sms=H100_SMS, split=None, kernel="cluster") == cfg
    assert cfg["cluster"] <= attention.MAX_CLUSTER
    assert cfg["smem_bytes"] <= attention.SMEM_LIMIT
    assert cfg["k_chunk"] == hidden  # the normalised activations of the whole batch fit at once here


def test_work_split_follows_the_sm_count():
    shape = dict(hidden=4096, num_heads=32, num_kv_heads=8, head_dim=128, batch=1, dtype=torch.float16,
                 kernel="cluster")  # batch 1 defaults to the claimed tiles; this is the cluster kernel's split
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


def test_default_variant_is_the_measured_v5_heads_and_needs_one_wave_for_its_grid_waits():
    """The default is v5_heads: v4 (tail + the q/k/v hand-off) plus the tensor-core GEMVs from batch bucket
    MMA_MIN_BUCKET plus the deep K/V loads, plus the K/V ring and the head-lane loop where they apply (v5
    elsewhere). tail and the hand-off wait for other CTAs of the grid: allowed only when every cluster is
    co-resident; otherwise version 3 (bits 0, the local bits kept) runs."""
    v = attention.VARIANTS
    assert attention.DEFAULT_VARIANT == "v5_heads" and v["v5_heads"] & ~attention.HEAD_LANES == v["v5_ring"]
    assert v["v5_ring"] & ~attention.KV_RING == v["v5"]
    assert v["v4_mma"] == v["v4"] | attention.MMA
    assert v["v5"] == v["v4_mma"] | attention.DEEP_KV
    assert attention.VARIANTS["tail"] == 1 and attention.VARIANTS["v3"] == 0
    assert attention.VARIANTS["v4"] == attention.VARIANTS["tail"] | attention.VARIANTS["qkv"]
    shape = dict(hidden=4096, num_heads=32, num_kv_heads=32, head_dim=128, batch=1, esize=2, num_sms=132)
    one_wave = attention._plan(**shape)
    assert one_wave.one_wave and attention.effective_variant(one_wave, "tail") == 1
    few = {8: 2, 4: 3, 2: 4, 1: 8}.__getitem__  # fewer co-resident clusters than KV heads: two waves
    two_waves = attention._plan(**shape, active=few)
    assert not two_waves.one_wave and attention.effective_variant(two_waves, "tail") == 0
    assert attention.effective_variant(two_waves, "v4") == 0
    assert attention.effective_variant(one_wave, "v4_mma") == attention.WIDE_TAIL  # batch 1, P = 1
    batch16 = attention._plan(**{**shape, "batch": 16})
    assert attention.effective_variant(batch16, "v4_mma") & attention.MMA


def test_qkv_split_bit_only_with_several_clusters_per_kv_head():
    """Bit 2 splits a KV head's q/k/v rows over its P clusters: with P = 1 it must not change the launch."""
    h100 = {8: 16, 4: 33, 2: 66, 1: 132}.__getitem__
    one = attention._plan(hidden=8192, num_heads=32, num_kv_heads=32, head_dim=256, batch=1, esize=2,
                          num_sms=132, active=h100)
    assert one.clusters_per_kv_head == 1
    assert attention.effective_variant(one, "qkv") == attention.effective_variant(one, "v3") == 0
    assert attention.effective_variant(one, "v4") == attention.effective_variant(one, "tail") == 1
    split = attention._plan(hidden=4096, num_heads=32, num_kv_heads=8, head_dim=128, batch=1, esize=2,
                            num_sms=132, active=h100)
    assert split.clusters_per_kv_head > 1
    assert attention.effective_variant(split, "qkv") == 2 and attention.effective_variant(split, "v4") == 3


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _qkv_split_model(group: int, head_dim: int, cluster: int, per_head: int, batch: int, hidden: int):
    """Python mirror of the kernel's phase 2 with kSplitQkv (attention_decode_body + gemv + gather_global):
    per CTA of a KV head, its rows [row0, row0+nrows), the warp whose sink writes each of them and the
    thread that publishes each float4. Returns (times each row is written, published float4s whose rows
    another warp wrote)."""
    warps, threads = attention.WARPS, attention.THREADS
    rows = (group + 2) * head_dim
    parts = per_head * cluster
    rc = _ceil_div(_ceil_div(rows, parts), 4) * 4
    bucket = attention.batch_bucket(batch)
    vectors = hidden // attention.VECTOR_ELEMS  # lanes_for(k_chunk); k_chunk = hidden at these shapes
    lpr = 32 if vectors >= 32 else (16 if vectors >= 16 else 8)
    groups, rb = 32 // lpr, (4 if bucket <= 2 else 2)  # kLongRows<BB>
    written = [0] * rows
    cross_warp = 0
    for part in range(parts):
        row0 = min(rows, part * rc)
        nrows = min(rows, row0 + rc) - row0
        assert row0 % 4 == 0 and nrows % 4 == 0  # float4 hand-off
        owner = {}
        for warp in range(warps):
            for first in range(warp * groups * rb, nrows, warps * groups * rb):
                for r in range(rb):
                    for g in range(groups):
                        if first + r * groups + g < nrows:
                            owner[first + r * groups + g] = warp
        assert sorted(owner) == list(range(nrows))
        for i in range(nrows):
            written[row0 + i] += 1
        n4 = nrows // 4
        for idx in range(batch * n4):
            thread = idx % threads
            if any(owner[4 * (idx % n4) + e] != thread // 32 for e in range(4)):
                cross_warp += 1
    return written, cross_warp


@pytest.mark.parametrize(
    "shape",
    [  # (batch, hidden, heads, kv heads, head_dim): failures of the 2026-11-23 sweep, Llama-3-8B, Qwen2.5-0.5B
        (2, 1536, 8, 8, 256),
        (2, 1536, 24, 4, 64),
        (2, 1536, 16, 1, 128),
        (1, 1536, 12, 4, 128),
        (1, 1536, 32, 8, 128),
        (1, 4096, 32, 8, 128),
        (1, 896, 14, 2, 64),
        (16, 896, 14, 2, 64),
        (3, 256, 8, 2, 128),
    ],
)
def test_qkv_split_writes_every_row_once_and_needs_the_barrier(shape):
    """Every q/k/v row of a KV head is computed by exactly one of its P*C CTAs (so every CTA's read-back
    finds each row written once); and the threads that publish a CTA's rows are mostly not the warps that
    computed them, so gather_global must start with a CTA barrier (the 2026-11-23 failures)."""
    batch, hidden, heads, kvh, head_dim = shape
    h100 = {8: 16, 4: 33, 2: 66, 1: 132}.__getitem__
    plan = attention._plan(hidden=hidden, num_heads=heads, num_kv_heads=kvh, head_dim=head_dim, batch=batch,
                           esize=2, num_sms=132, active=h100)
    assert plan.clusters_per_kv_head > 1 and plan.k_chunk == hidden
    written, cross_warp = _qkv_split_model(heads // kvh, head_dim, plan.cluster, plan.clusters_per_kv_head,
                                           batch, hidden)
    assert set(written) == {1}
    assert cross_warp > 0


def test_qkv_hand_off_publishes_after_a_cta_barrier():
    """Source guard: gather_global's first statement is the barrier that orders the GEMV sink's shared
    stores (one lane per row, any warp) before other threads copy them to global memory."""
    src = (Path(attention.__file__).parent / "csrc" / attention.SOURCE).read_text()
    body = src[src.index("void gather_global("):]
    body = body[body.index("{") + 1 :]
    first = next(line.strip() for line in body.splitlines() if line.strip())
    assert first.startswith("__syncthreads();"), first


def test_counters_cover_every_hand_off():
    """attn::counters: merge and slice arrive/depart pairs per (KV head, rank) and per slice, q/k/v per KV head."""
    kvh, c, p = 2, 8, 8
    assert attention._counter_count(kvh, c, p) == 2 * kvh * c + 2 * p * c + 2 * kvh


def test_mma_variant_is_tail_on_the_tensor_cores_from_bucket_4():
    """mma = tail + bit 16. The bit only changes the arithmetic (no grid-wide wait),
    so it survives a split that is not one wave; below batch bucket MMA_MIN_BUCKET the kernel keeps the
    CUDA-core GEMV, and the launcher reports the bit off there."""
    v = attention.VARIANTS
    assert attention.MMA == 16 and not attention.MMA & (attention.WIDE_TAIL | attention.SPLIT_QKV_BIT)
    assert v["mma"] == v["tail"] | attention.MMA
    assert attention.MMA_MIN_BUCKET == 4
    shape = dict(hidden=4096, num_heads=32, num_kv_heads=8, head_dim=128, esize=2, num_sms=132)
    for batch in (1, 2, 3, 4, 9, 16):
        plan = attention._plan(**shape, batch=batch)
        assert plan.one_wave
        want = attention.MMA if plan.batch_bucket >= attention.MMA_MIN_BUCKET else 0
        assert attention.effective_variant(plan, "mma") == attention.WIDE_TAIL | want
        assert attention.effective_variant(plan, "tail") == attention.WIDE_TAIL
    two_waves = attention._plan(**(shape | dict(num_kv_heads=32)), batch=16,
                                active={8: 2, 4: 3, 2: 4, 1: 8}.__getitem__)
    assert not two_waves.one_wave
    assert attention.effective_variant(two_waves, "mma") == attention.MMA
    assert attention.effective_variant(two_waves, "tail") == 0


def test_mma_gemv_constants_are_named_and_used():
    """The tensor-core GEMV's shape constants live in csrc/mma.cuh / attention_decode.cu, not as literals at
    the call sites, and the variant bit matches the launcher's."""
    csrc = Path(attention.__file__).parent / "csrc"
    kernel = (csrc / "attention_decode.cu").read_text()
    helpers = (csrc / "mma.cuh").read_text()
    assert f"kMma = {attention.MMA}," in kernel
    assert f"constexpr int kMmaMinBucket = {attention.MMA_MIN_BUCKET};" in kernel
    assert "gemv_mma<T, BB, kMmaLongDepth>(qkv_row" in kernel and "gemv_mma<T, BB, kMmaShortDepth>(wo_row" in kernel
    assert '#include "mma.cuh"' in kernel and '"gated_ffn.cu"' not in kernel
    for name in ("kTileRows = 16", "kTileCols = 8", "kLanesPerGroup = 4", "kStepK ="):
        assert name in helpers


def test_v5_is_v4_mma_plus_deep_kv_and_kept_off_one_wave():
    """v5 = v4_mma + bit 32 (DEEP_KV: phase 4's loads all in flight before the first use). The bit changes one
    CTA's schedule, never the arithmetic, and waits for no other CTA: like MMA it survives a split that is not
    one wave, and it is never dropped for P = 1 or small batch buckets."""
    v = attention.VARIANTS
    assert attention.DEEP_KV == 32 and v["v5"] == v["v4_mma"] | attention.DEEP_KV
    assert not attention.DEEP_KV & (attention.WIDE_TAIL | attention.SPLIT_QKV_BIT | attention.MMA)
    assert attention.LOCAL_BITS == attention.MMA | attention.DEEP_KV | attention.KV_RING | attention.HEAD_LANES
    h100 = {8: 16, 4: 33, 2: 66, 1: 132}.__getitem__
    llama2 = attention._plan(hidden=4096, num_heads=32, num_kv_heads=32, head_dim=128, batch=1, esize=2,
                             num_sms=132, active=h100)
    assert llama2.clusters_per_kv_head == 1 and llama2.one_wave
    assert attention.effective_variant(llama2, "v5") == attention.WIDE_TAIL | attention.DEEP_KV
    split = attention._plan(hidden=4096, num_heads=32, num_kv_heads=8, head_dim=128, batch=1, esize=2,
                            num_sms=132, active=h100)
    assert attention.effective_variant(split, "v5") == v["v4"] | attention.DEEP_KV
    b16 = attention._plan(hidden=4096, num_heads=32, num_kv_heads=8, head_dim=128, batch=16, esize=2,
                          num_sms=132, active=h100)
    assert attention.effective_variant(b16, "v5") == v["v5"]
    few = {8: 2, 4: 3, 2: 4, 1: 8}.__getitem__
    for batch, want in ((1, attention.DEEP_KV), (16, attention.DEEP_KV | attention.MMA)):
        two_waves = attention._plan(hidden=4096, num_heads=32, num_kv_heads=32, head_dim=128, batch=batch,
                                    esize=2, num_sms=132, active=few)
        assert not two_waves.one_wave
        assert attention.effective_variant(two_waves, "v5") == want
        assert attention.effective_variant(two_waves, "v4_mma") == want & attention.MMA


def test_deep_kv_bit_matches_the_kernel_and_defers_the_mask_test():
    """Source guard: the kernel's bit value is the launcher's, and the deep path tests the mask bytes only after
    the loop that issues the step's loads (the schedule the bit exists for)."""
    src = (Path(attention.__file__).parent / "csrc" / attention.SOURCE).read_text()
    assert f"kDeepKv = {attention.DEEP_KV}," in src
    loop = src[src.index("__device__ __forceinline__ void attend_tokens("):]
    loads = loop.index("vr[u] = *reinterpret_cast<const uint4*>")
    test = loop.index("ok[u] = mk[u] != 0u;")
    assert loads < test < loop.index("float sc[kTokenUnroll<HG>][HG];")
    body = src[src.index("__device__ __forceinline__ void attention_decode_body("):]
    assert "attend_tokens<true>(" in body and "attend_tokens<false>(" in body


def test_v5_ring_is_v5_plus_the_kv_ring_kept_only_for_mha_builds_where_its_ring_fits():
    """v5_ring = v5 + bit 64 (KV_RING: phase 4's K/V through a shared-memory ring of bulk copies). Only the
    builds of batch buckets 1, 2 and 8 with one head per pass (MHA) have the ring path, with any number of rows
    in parallel: elsewhere (bucket 4: its register path is as fast), or where the ring does not fit beside the
    plan (Llama-2-7B at batch 16), the launcher
    drops the bit and launches with the plan's shared memory; where it keeps the bit it adds RING_BYTES after
    the plan, 128-byte aligned, as the kernel places the ring."""
    v = attention.VARIANTS
    assert attention.KV_RING == 64 and v["v5_ring"] == v["v5"] | attention.KV_RING
    assert not attention.KV_RING & (v["v5"] | 4 | 8 | 128)  # no bit in use or retired
    h100 = {8: 16, 4: 33, 2: 66, 1: 132}.__getitem__
    shape = dict(hidden=4096, num_heads=32, num_kv_heads=32, head_dim=128, esize=2, num_sms=132, active=h100)
    for batch in (1, 2, 5, 8):
        plan = attention._plan(**shape, batch=batch)
        bits, shared = attention.launch_bits(plan, "v5_ring", 128)
        assert bits == attention.effective_variant(plan, "v5") | attention.KV_RING, batch
        assert shared == attention.ring_shared_bytes(plan.smem_bytes) <= attention.SMEM_LIMIT
        assert shared % 16 == 0 and shared - attention.RING_BYTES >= plan.smem_bytes
        assert (shared - attention.RING_BYTES) % attention.RING_ALIGN == 0
        assert attention.launch_bits(plan, "v5", 128) == (attention.effective_variant(plan, "v5"), plan.smem_bytes)
    b16 = attention._plan(**shape, batch=16)  # bucket 16: no ring path, and no room for it
    assert attention.ring_shared_bytes(b16.smem_bytes) > attention.SMEM_LIMIT
    assert attention.launch_bits(b16, "v5_ring", 128) == (attention.effective_variant(b16, "v5"), b16.smem_bytes)
    for batch in (3, 4):  # bucket 4: no ring path
        plan = attention._plan(**shape, batch=batch)
        assert attention.launch_bits(plan, "v5_ring", 128) == (attention.effective_variant(plan, "v5"), plan.smem_bytes)
    for kv_heads in (8, 4, 1):  # GQA / MQA: several heads per pass, no ring path in the build
        gqa = attention._plan(**dict(shape, num_kv_heads=kv_heads), batch=1)
        assert gqa.heads_per_pass > 1 and not attention.keeps_ring(gqa.batch_bucket, gqa.heads_per_pass)
        assert attention.launch_bits(gqa, "v5_ring", 128) == (attention.effective_variant(gqa, "v5"), gqa.smem_bytes)
    assert [b for b in (1, 2, 4, 8, 16) if attention.keeps_ring(b, 1)] == [1, 2, 8]
    b1 = attention._plan(**shape, batch=1)
    big = dataclasses.replace(b1, smem_bytes=attention.SMEM_LIMIT - attention.RING_BYTES + 1)
    assert attention.launch_bits(big, "v5_ring", 128) == (attention.effective_variant(b1, "v5"), big.smem_bytes)


def test_v5_heads_is_v5_ring_plus_the_head_lane_loop_kept_only_where_built():
    """v5_heads = v5_ring + bit 128 (HEAD_LANES: phase 4 with lanes as (query head, slice of D)). Only the builds of
    batch buckets 1 and 2 with several heads per pass (HG >= 4) have the loop, at head_dim 64 and 128: the launcher
    keeps the bit there and drops it elsewhere (MHA, G = 2, batch 3+, head_dim 256), so what the report and the
    rows say ran is what ran."""
    v = attention.VARIANTS
    assert attention.HEAD_LANES == 128 and v["v5_heads"] == v["v5_ring"] | attention.HEAD_LANES
    assert attention.HEAD_LANES & attention.LOCAL_BITS  # waits for no other CTA: kept on splits of two waves
    h100 = {8: 16, 4: 33, 2: 66, 1: 132}.__getitem__
    base = dict(hidden=2048, num_heads=32, esize=2, num_sms=132, active=h100)
    for kvh, d, batch, kept in [(8, 64, 1, True), (8, 128, 1, True), (1, 128, 1, True), (2, 64, 1, True),
                                (8, 256, 1, False), (16, 128, 1, False), (32, 128, 1, False),
                                (8, 64, 2, True), (8, 64, 4, False), (8, 128, 16, False)]:
        plan = attention._plan(**base, num_kv_heads=kvh, head_dim=d, batch=batch)
        bits, shared = attention.launch_bits(plan, "v5_heads", d)
        assert bool(bits & attention.HEAD_LANES) == kept, (kvh, d, batch)
        assert kept == attention.keeps_head_lanes(plan.batch_bucket, plan.heads_per_pass, d)
        ring_bits, ring_shared = attention.launch_bits(plan, "v5_ring", d)
        assert (bits & ~attention.HEAD_LANES, shared) == (ring_bits, ring_shared)
        loop = attention.phase4_loop(plan, "v5_heads", d)
        assert loop == ("head-lanes" if kept else "kv-ring" if ring_bits & attention.KV_RING else "token-slots")
    mha = attention._plan(**base, num_kv_heads=32, head_dim=64, batch=1)
    assert attention.phase4_loop(mha, "v5_heads", 64) == "kv-ring"
    assert attention.phase4_loop(mha, "v5", 64) == "token-slots"


def test_head_lane_loop_in_the_kernel_matches_the_launcher():
    """Source guard: the bit's value, the builds that have the loop and the head dims it runs at are the launcher's
    (keeps_head_lanes), and every lane of a warp attends the same token (runs of consecutive tokens per warp)."""
    src = (Path(attention.__file__).parent / "csrc" / attention.SOURCE).read_text()
    assert f"kHeadLanes = {attention.HEAD_LANES}," in src
    assert "constexpr bool kHeadLanesBuild = BB <= 2 && HG >= 4;" in src
    assert attention.HEAD_LANES_BUCKETS == (1, 2)
    dims = " || ".join(f"D == {d}" for d in attention.HEAD_LANES_DIMS)
    assert f"(p.variant & kHeadLanes) != 0 && ({dims});" in src
    assert "const int first = cs + wig * run, stride = warps_per_row * run;" in src
    assert all(f"attend_heads<T, HG, {d} * HG / 32>(" in src for d in attention.HEAD_LANES_DIMS)


def test_kv_ring_constants_and_schedule_match_the_kernel():
    """Source guard: the ring's size is the launcher's, it starts at the plan's end rounded to RING_ALIGN, only
    the MHA builds of buckets 1, 2 and 8 have it, and warp w of a row group reads step block w of its group's
    sub-block of each stage (one step block per warp per stage: the tokens and order of the loop without the
    ring, hence bitwise v5)."""
    src = (Path(attention.__file__).parent / "csrc" / attention.SOURCE).read_text()
    assert f"kKvRing = {attention.KV_RING}," in src
    data = int(re.search(r"kRingDataBytes = (\d+) \* 1024;", src).group(1)) * 1024
    barriers = int(re.search(r"kRingBarrierBytes = (\d+);", src).group(1))
    assert attention.RING_BYTES == barriers + data
    assert f"+ {attention.RING_ALIGN - 1}) & ~{attention.RING_ALIGN - 1})" in src
    buckets = " || ".join(f"BB == {b}" for b in attention.RING_BUCKETS)
    assert f"constexpr bool kRingBuild = ({buckets}) && HG == 1;" in src  # attention.keeps_ring
    assert "const int row_tokens = warps_per_row * step_tokens;" in src
    assert "const int ring_tokens = kWarps * step_tokens;" in src
    assert "ts.first = t_first + wig * step_tokens;" in src
    pipe = (Path(attention.__file__).parent / "csrc" / "pipeline.cuh").read_text()
    assert "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes" in pipe


DEEP_BUILDS = [(dt, bb, hg) for dt in ("__half", "__nv_bfloat16") for bb in (1, 2, 4, 16) for hg in (1, 8)]
DEEP_BUILDS += [(dt, bb, 4) for dt in ("__half", "__nv_bfloat16") for bb in (1, 2)]  # head lanes at 4 heads per pass


@pytest.mark.parametrize("args", DEEP_BUILDS, ids=lambda a: f"{a[0]}-B{a[1]}-G{a[2]}")
def test_v5_buckets_compile_without_spills(args):
    """Both attention loops (with and without DEEP_KV) live in every instantiation, and the head-lane loop in the
    bucket-1 and bucket-2 ones with several heads per pass: buckets 1/2/4/16 at the fewest and most heads per pass (and bucket 1
    at four) stay within 255 registers with no spills."""
    assert_clean_sass(compile_or_skip(attention.SOURCE, attention.KERNEL, [args])[args])


# ------------------------------------------------------------------ work-split override (round 5)

OVERRIDES = [(8, 1), (4, 1), (8, 2), (4, 2), (2, 1), (1, 1), (8, 16)]


@pytest.mark.parametrize("model", ["qwen2.5-0.5b", "llama-3.2-1b"])
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("split", OVERRIDES, ids=lambda s: f"C{s[0]}P{s[1]}")
def test_split_override_sets_every_launch_size(model, batch, split):
    """The override is the plan's (C, P); the grid (C, P, KVH), the cluster dims (C), the arrival counters
    (attn::counters) and the split-merge / q/k/v scratch all follow it; shared memory and the K chunk do not
    depend on the split."""
    hidden, heads, kv_heads, head_dim = MODELS[model]
    c, p = split
    shape = dict(hidden=hidden, num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim, batch=batch, esize=2,
                 num_sms=H100_SMS)
    h100 = {8: 16, 4: 33, 2: 66, 1: 132}.__getitem__
    default = attention._plan(**shape, active=h100)
    plan = attention._plan(**shape, active=h100, split=split)
    assert (plan.cluster, plan.clusters_per_kv_head) == split
    assert plan.grid == (c, p, kv_heads)
    assert (plan.smem_bytes, plan.k_chunk, plan.batch_bucket, plan.heads_per_pass) == (
        default.smem_bytes, default.k_chunk, default.batch_bucket, default.heads_per_pass)
    assert plan.one_wave == (kv_heads * p <= h100(c))
    group = heads // kv_heads
    n_attn, n_o, n_counters, n_qkv = attention._scratch_numel(kv_heads, plan, batch, group, head_dim, hidden)
    assert n_counters == 2 * kv_heads * c + 2 * p * c + 2 * kv_heads
    assert n_o == kv_heads * batch * hidden
    if p > 1:  # [KVH, C, P, B, G, D+2] partials of the split merge, [KVH, B, G+2, D] q/k/v hand-off
        assert n_attn == kv_heads * c * p * batch * group * (head_dim + 2)
        assert n_qkv == kv_heads * batch * (group + 2) * head_dim
    else:  # P = 1 merges over DSMEM and gathers q/k/v over DSMEM: no global scratch
        assert n_attn == 1 and n_qkv == 1
    scratch = attention._scratch_for(torch.device("cpu"), kv_heads, plan, batch, group, head_dim, hidden)
    assert [t.numel() for t in scratch] == [n_attn, n_o, n_counters, n_qkv]
    assert int(scratch[2].abs().sum()) == 0  # counters start at zero
    # every CTA of a KV head still gets whole float4 q/k/v rows and output columns (phase 2 / phase 6)
    written, _ = _qkv_split_model(group, head_dim, c, p, batch, hidden) if p > 1 else ([1], 0)
    assert set(written) == {1}
    cfg = attention.attention_config(hidden=hidden, num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
                                     batch=batch, dtype=torch.float16, num_sms=H100_SMS, split=split)
    assert (cfg["cluster"], cfg["clusters_per_kv_head"], cfg["ctas"]) == (c, p, c * p * kv_heads)


def test_split_override_that_is_not_one_wave_falls_back_to_version_3():
    """Llama-3.2-1B with C = 8, P = 8: 64 clusters of 8 where the H100 holds 16 -> not one wave; the variants'
    grid-wide waits are dropped (MMA kept) exactly as for a chosen split that is not one wave."""
    h100 = {8: 16, 4: 33, 2: 66, 1: 132}.__getitem__
    shape = dict(hidden=2048, num_heads=32, num_kv_heads=8, head_dim=64, esize=2, num_sms=H100_SMS, active=h100)
    plan = attention._plan(**shape, batch=1, split=(8, 8))
    assert not plan.one_wave and plan.grid == (8, 8, 8)
    assert attention.effective_variant(plan, "v4_mma") == 0
    b16 = attention._plan(**shape, batch=16, split=(8, 8))
    assert attention.effective_variant(b16, "v4_mma") == attention.MMA
    ok = attention._plan(**shape, batch=1, split=(8, 2))
    assert ok.one_wave and attention.effective_variant(ok, "v4_mma") == attention.WIDE_TAIL | attention.SPLIT_QKV_BIT
    assert attention.effective_variant(attention._plan(**shape, batch=1, split=(8, 1)), "v4_mma") == attention.WIDE_TAIL


@pytest.mark.parametrize(
    ("split", "message"),
    [
        ((3, 1), "cluster size 3 is not one of"),
        ((16, 1), "cluster size 16 is not one of"),
        ((8, 0), "clusters per KV head 0 outside 1..16"),
        ((8, 17), "clusters per KV head 17 outside 1..16"),
        ((8,), "two integers"),
        ("8,1", "two integers"),
        ((8.5, 1), "two integers"),
    ],
)
def test_invalid_split_override_is_rejected(split, message):
    shape = dict(hidden=896, num_heads=14, num_kv_heads=2, head_dim=64, batch=1, dtype=torch.float16)
    with pytest.raises(ValueError, match=message):
        attention.attention_config(**shape, num_sms=H100_SMS, split=split)
    with pytest.raises(ValueError, match=message):
        attention.check_split(split)


def test_split_override_needs_clusters_the_device_can_run():
    no_eights = {8: 0, 4: 33, 2: 66, 1: 132}.__getitem__
    with pytest.raises(ValueError, match="runs no cluster of 8 CTAs"):
        attention._plan(hidden=896, num_heads=14, num_kv_heads=2, head_dim=64, batch=1, esize=2, num_sms=132,
                        active=no_eights, split=(8, 1))


def test_split_override_is_part_of_every_memo_key():
    """device_plan (functools.cache) takes split as an argument; _launch_for's key and the scratch key
    (via the plan's C and P) include it, so an override never reuses the default's plan, kernel or counters."""
    import inspect

    assert "split" in inspect.signature(attention.device_plan).parameters
    assert "split" in inspect.signature(attention.attention_decode).parameters
    src = inspect.getsource(attention._launch_for)
    assert "device, split)" in src and "split=split" in src
    assert "cfg.cluster, cfg.clusters_per_kv_head" in inspect.getsource(attention._scratch_for)


# ------------------------------------------------------------------ timeline build (-DCF_ATTN_TIMELINE=1)

TIMELINE_BUILDS = [("__half", 1, 1), ("__nv_bfloat16", 16, 4)]
KERNEL_SRC = Path(attention.__file__).parent / "csrc" / attention.SOURCE


@pytest.mark.parametrize("args", TIMELINE_BUILDS, ids=lambda a: f"{a[0]}-B{a[1]}-G{a[2]}")
def test_timeline_build_compiles_without_spills(args):
    """The per-CTA timeline build (benchmarks/attention.py --timeline) keeps the plan: no spills, no stack, only
    dynamic shared memory, and it is a build of its own (the define enters the options, hence the cache key)."""
    kernel = compile_or_skip(attention.SOURCE, attention.KERNEL, [args], defines={"CF_ATTN_TIMELINE": 1})[args]
    assert_clean_sass(kernel)
    assert "-DCF_ATTN_TIMELINE=1" in kernel.options


def test_timeline_stamps_match_the_kernel_enum_and_live_in_o_partials_tail():
    """Source guard: attention.TIMELINE lists the kernel's enum TimelineStamp in order (kTlQkvArrive ->
    "qkv_arrive"), every stamp is written somewhere in the kernel, the default build defines CF_ATTN_TIMELINE 0,
    and the stamps live where the launcher reads them: past o_partial's KVH*B*H floats, which only timeline
    launches enlarge (by the int64 stamps, 2 floats each)."""
    import re

    src = KERNEL_SRC.read_text()
    enum = src[src.index("enum TimelineStamp : int {"):src.index("kTlCount")]
    names = re.findall(r"^\s*kTl(\w+?)(?: = 0)?,", enum, flags=re.M)
    snake = tuple(re.sub(r"(?<!^)([A-Z])", r"_\1", n).lower() for n in names)
    assert snake == attention.TIMELINE
    body = src[src.index("__device__ __forceinline__ void gather_global("):]
    for n in names:
        assert re.search(rf"stamp\(tl, kTl{n}[,)]", body), f"kTl{n} is never stamped"
    assert "#define CF_ATTN_TIMELINE 0" in src
    assert "o_partial + static_cast<size_t>(KVH) * B * H" in src
    hidden, heads, kv_heads, head_dim = MODELS["llama-3-8b"]
    plan = attention._plan(hidden=hidden, num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim, batch=1,
                           esize=2, num_sms=H100_SMS, active=attention.estimated_active_clusters(H100_SMS))
    ctas = math.prod(plan.grid)
    args = (kv_heads, plan, 1, heads // kv_heads, head_dim, hidden)
    plain, timed = attention._scratch_numel(*args), attention._scratch_numel(*args, timeline=True)
    assert timed[1] == plain[1] + 2 * attention.timeline_elems(ctas) and timed[1] - plain[1] == 2 * ctas * 14
    assert timed[:1] + timed[2:] == plain[:1] + plain[2:]
    launcher = Path(attention.__file__).read_text()
    assert "o_partial[kvh * batch * hidden:].view(torch.int64)" in launcher


def test_built_from_compiles_another_source_and_restores_the_launcher(monkeypatch, tmp_path):
    """attention.built_from(path): kernels compiled inside come from that source (an earlier revision, for a
    bitwise or timing A/B); on leaving -- by an exception too -- SOURCE and the memo of launches are as before."""
    asked = []
    monkeypatch.setattr(attention, "compile_kernel", lambda source, *a, **k: asked.append(source))
    monkeypatch.setattr(attention, "_launches", {"kept": "launch"})
    earlier = str(tmp_path / "attention_decode.cu")
    with pytest.raises(RuntimeError), attention.built_from(earlier):
        assert attention._launches == {}  # nothing built from SOURCE is launched inside
        attention.compiled_kernel(torch.float16, 1, 1)
        raise RuntimeError
    attention.compiled_kernel(torch.float16, 1, 1)
    assert asked == [earlier, "attention_decode.cu"] and attention.SOURCE == "attention_decode.cu"
    assert attention._launches == {"kept": "launch"}
