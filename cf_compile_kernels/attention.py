"""Launcher of the fused attention-block decode kernel (csrc/attention_decode.cu).

Shapes -> work split (cluster size, clusters per KV head, K chunk, batch bucket) -> compile (cached)
-> launch on the current stream. The split is derived here, from the shape and the SM count, and
passed to the kernel; the kernel hard-codes no model. Semantics: docs/kernel-contract.md.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch

from . import attention_flow, env
from .build import CompiledKernel, compile_kernel
from .launch import check_tensor, load_kernel
from .registry import register_check

SOURCE = "attention_decode.cu"
KERNEL = "attention_decode"

SUPPORTED_DTYPES = {torch.float16: "__half", torch.bfloat16: "__nv_bfloat16"}
SUPPORTED_HEAD_DIMS = (64, 128, 256)  # a lane holds 8 dims; RoPE pairs (i, i + D/2) stay in one lane
MAX_BATCH = 16
MAX_HIDDEN = 8192
THREADS = 256  # attn::kThreads
WARPS = THREADS // 32
VECTOR_ELEMS = 8  # 2-byte elements per 16-byte load
MAX_CLUSTER = 8  # portable cluster size; larger needs opt-in and schedules worse (attn::kMaxCluster)
MAX_SPLIT = 16  # clusters per KV head, merged from registers (attn::kMaxSplit)
MAX_HEADS_PER_PASS = 8  # query heads whose q/o live in registers during one pass over K/V
SMEM_LIMIT = 227 * 1024  # opt-in dynamic shared memory per block on sm_90
FIXUP_REDUCE_BYTES = THREADS * 16  # one float4 partial column sum per thread (attn::Smem::reduce)
# Work-split variants (attn::Variant bits). Both wait on other CTAs of the grid, so the launcher uses
# them only when the split is one wave (every cluster co-resident); otherwise it runs "v3".
#   v3    version 3: the last arriver of each hand-off finishes (merge, o_proj, fix-up by C CTAs)
#   tail  phase 6 over every CTA: all P clusters do o_proj (P*C column slices), KVH CTAs per slice fix up
#   qkv   q/k/v rows split over all P*C CTAs of a KV head, handed over through global memory (P > 1 only)
#   v4    tail + qkv
# "qkv" failed the fp64 sweep on the H100 (2026-11-23: relative errors up to 0.49, unwritten outputs):
# attn::gather_global published its GEMV rows without a CTA barrier after the GEMV (fixed; re-validated on the
# H100 in round 3: benchmarks/NOTES-attention.md, "Version 4: the qkv hand-off bug", "Round 3 (measured)").
#   mma        tail + q/k/v rows (phase 2) and o_proj slice (phase 6) on the tensor cores (mma.sync m16n8k16,
#              batch = N) for batch buckets >= MMA_MIN_BUCKET; deterministic, not bitwise "tail" (sum order,
#              o_proj inputs rounded to the model dtype as in eager). Waits for no other CTA: kept when the
#              split is not one wave.
#   v4_mma     v4 + mma
#   v5         v4_mma + deep_kv: phase 4 issues every K/V and mask load of a token step before the first use
#              (the mask byte was tested right after its load, so each token of a step waited one L2 latency
#              in turn) and reduces the tokens' dot products with unrolled, branch-free shuffles. Same
#              arithmetic in the same order: bitwise v4_mma. Waits for no other CTA: kept when the split is
#              not one wave. The default since round 5 (H100, 2026-11-23, fp16 B=1: Llama-2-7B 1024 cached
#              86.1 -> 79.7 us, 4096 131.1 -> 122.9, Llama-3-8B 63.5 -> 61.6, Qwen2.5-0.5B 32.5 -> 31.4).
# The L2 bulk-prefetch variants (stream_kv, stream, stream_mma; bits 4 and 8) measured slower than tail on
# every row (H100, round 3) and were removed; bits 4 and 8 are unused.
#   v5_ring    v5 + kv_ring: with one query head per K/V head (MHA) at batch buckets 1, 2 and 8, phase 4's
#              K/V token chunks stream through a shared-memory ring filled by bulk copies (attn::kKvRing), one
#              sub-block per row attended in parallel; each warp reads the tokens it read before, in the same
#              order: bitwise v5. Needs RING_BYTES more shared memory (the launcher adds them, or drops the bit
#              where they do not fit, at other buckets, or where a pass holds several heads). The default since
#              round 10 (H100, 2026-11-24, fp16 B=1, Llama-2-7B 4096 cached 123.0 -> 110.9 us, 1024 81.3 ->
#              79.9; with G >= 4 it was no faster: Llama-3-8B 4096 74.3 -> 74.8, Qwen2.5-0.5B 1024 32.3 -> 34.4,
#              so only MHA keeps the bit). Batch 2 and 8 since round 21 (Llama-2-7B bf16 4096: B=2 172 -> 147,
#              B=8 423 -> 286); bucket 4 is as fast without it (round 20).
#   v5_heads   v5_ring + head_lanes: the GQA builds of batch buckets 1-2 (several query heads per pass) at head_dim
#              64 and 128 (keeps_head_lanes) run phase 4 with the warp's lanes as (query head, slice of D) -- one rolled token loop for
#              every head -- instead of (token slot, 16-byte vector) with the heads unrolled (~1,100 instructions a
#              small model's warp ran once, fetch-bound: round 22). A new summation order, held to the fp64 band.
#              Other builds and head dims ignore the bit (launch_bits drops it there).
WIDE_TAIL, SPLIT_QKV_BIT, MMA, DEEP_KV, KV_RING, HEAD_LANES = 1, 2, 16, 32, 64, 128  # attn::Variant bits
VARIANTS = {"v3": 0, "tail": WIDE_TAIL, "qkv": SPLIT_QKV_BIT, "v4": WIDE_TAIL | SPLIT_QKV_BIT,
            "mma": WIDE_TAIL | MMA, "v4_mma": WIDE_TAIL | SPLIT_QKV_BIT | MMA,
            "v5": WIDE_TAIL | SPLIT_QKV_BIT | MMA | DEEP_KV,
            "v5_ring": WIDE_TAIL | SPLIT_QKV_BIT | MMA | DEEP_KV | KV_RING,
            "v5_heads": WIDE_TAIL | SPLIT_QKV_BIT | MMA | DEEP_KV | KV_RING | HEAD_LANES}
# Bits that wait for no other CTA (only the schedule or the arithmetic of one CTA changes): kept on splits that
# are not one wave.
LOCAL_BITS = MMA | DEEP_KV | KV_RING | HEAD_LANES
RING_BYTES = 128 + 128 * 1024  # attn::kRingBytes: mbarriers + kRingDataBytes of K/V stages
RING_ALIGN = 128  # the ring starts at the plan's end rounded up to this
# attn::kMmaMinBucket: below it an 8-column MMA is mostly padding, the kernel keeps the CUDA-core GEMV.
MMA_MIN_BUCKET = 4
# "tail" measured faster than v3 on every row timed (H100, 2026-11-23, fp16 batch 1, 1024 cached, 8 layers per
# graph): Llama-2-7B 96.5 -> 85.4 us, Llama-3-8B 134.0 -> 99.1, Qwen2.5-0.5B 40.4 -> 38.1. Round 3 (same day):
# "v4" (tail + the q/k/v hand-off, P > 1 only) Llama-3-8B 99.9 -> 64.5, Llama-3.2-1B 45.9 -> 36.0, Qwen2.5-0.5B
# 38.9 -> 32.7; "mma" at batch 16 Llama-2-7B 474.8 -> 256.5, Llama-3-8B 703.7 -> 288.2; the L2 stream hints
# (since removed) lost 1-15 us on every row. Round 5: "v5" (v4_mma + deep K/V loads, bitwise v4_mma) faster on
# every row timed. "v5" is v4 + deep_kv below batch bucket MMA_MIN_BUCKET and + mma from it. Round 10: the
# default, "v5_ring", is v5 + the K/V ring where it applies (batch 1, MHA) and v5 bit for bit elsewhere. Round 24
# (H100, 2026-12-07, bf16 B=1, one process): "v5_heads" (v5_ring + the head-lane loop of the batch-1 GQA builds)
# Qwen2.5-0.5B 1024 cached 31.3 -> 26.8 us, 4096 35.4 -> 31.0; Llama-3.2-1B 34.0 -> 31.3, 40.7 -> 40.8; Llama-3-8B
# 61.5 -> 58.4, 73.5 -> 70.3. It launches v5_ring's code everywhere else.
DEFAULT_VARIANT = "v5_heads"
# Per-CTA timeline (-DCF_ATTN_TIMELINE=1, benchmarks only): one %globaltimer stamp (ns) per entry, in the order
# of the kernel's enum TimelineStamp (kTlStart ... kTlEnd; a CPU test checks the two agree). Thread 0 of each CTA
# writes them into the int64 tail of o_partial (past its KVH*B*H floats), which timeline launches enlarge and
# zero; a stamp the CTA never reaches stays 0 (see the kernel's comment for which).
TIMELINE = ("start", "norm", "qkv", "qkv_arrive", "qkv_wait", "rope", "attn", "attn_sync", "merge_arrive",
            "merge_wait", "merge", "oproj", "slice_wait", "end")
_COS_KIND = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _floor_pow2(n: int) -> int:
    return 1 << max(0, n.bit_length() - 1)


def batch_bucket(batch: int) -> int:
    """Batch size the kernel is instantiated for (1, 2, 4, 8, 16): padding rows cost FMAs, not bytes."""
    return _next_pow2(batch)


def heads_per_pass(group: int) -> int:
    """Query heads per register pass over the K/V chunk (power of two, at most 8)."""
    return min(MAX_HEADS_PER_PASS, _next_pow2(group))


def rows_in_parallel(batch: int) -> int:
    """Batch rows whose attention runs at once, each on WARPS/rows warps (power of two, divides WARPS)."""
    return _floor_pow2(min(batch, WARPS))


def _align16(n: int) -> int:
    return (n + 15) & ~15


def _smem_bytes(
    *, batch: int, bucket: int, group: int, head_dim: int, k_chunk: int, hg: int, esize: int
) -> int:
    """Dynamic shared memory of one CTA; mirrors attn::plan_smem (the kernel traps if they disagree)."""
    qkv = _align16(bucket * (group + 2) * head_dim * 4)
    part = _align16(batch * group * (head_dim + 2) * 4)
    ws = _align16(WARPS * hg * (head_dim + 2) * 4)
    stage = max(_align16(bucket * k_chunk * esize), part + ws)
    new = _align16(batch * head_dim * esize)
    return qkv + stage + 2 * new + _align16(bucket * 4) + _align16(batch * 8) + FIXUP_REDUCE_BYTES + 16


@dataclass(frozen=True)
class AttentionConfig:
    """The work split of one shape on one device (see the kernel's header comment)."""

    cluster: int  # C: CTAs per cluster, each owning a slice of the q/k/v rows and output columns
    clusters_per_kv_head: int  # P: clusters splitting one KV head's tokens (few-KV-head models)
    k_chunk: int  # KC: hidden columns of normalised x staged in shared memory at a time
    batch_bucket: int
    heads_per_pass: int
    smem_bytes: int
    grid: tuple[int, int, int]
    active_clusters: tuple[tuple[int, int], ...] = ()  # (C, co-resident clusters of C) the split saw
    one_wave: bool = True  # every cluster co-resident: the variants' grid-wide waits cannot deadlock

    def as_dict(self) -> dict:
        return {
            "cluster": self.cluster,
            "clusters_per_kv_head": self.clusters_per_kv_head,
            "ctas": self.grid[0] * self.grid[1] * self.grid[2],
            "k_chunk": self.k_chunk,
            "batch_bucket": self.batch_bucket,
            "heads_per_pass": self.heads_per_pass,
            "threads": THREADS,
            "smem_bytes": self.smem_bytes,
            "active_clusters": dict(self.active_clusters),
            "one_wave": self.one_wave,
        }


CLUSTER_SIZES = (8, 4, 2, 1)


def choose_split(num_kv_heads: int, active: Callable[[int], int]) -> tuple[int, int]:
    """(cluster size C, clusters per KV head P): every cluster co-resident in one wave, as many CTAs as
    the device holds at once, then the fewest clusters per KV head (each extra one adds a global merge),
    then the larger cluster. active(C) = clusters of C CTAs the device runs at once (GPCs, not only the
    SM count, limit it: cuOccupancyMaxActiveClusters)."""
    best, best_key = (1, 1), None
    for c in CLUSTER_SIZES:
        a = active(c)
        if a < 1:
            continue
        if num_kv_heads <= a:
            p, waves = max(1, min(MAX_SPLIT, a // num_kv_heads)), 1
        else:
            p, waves = 1, math.ceil(num_kv_heads / a)
        ctas = min(num_kv_heads * p, a) * c
        key = (waves, -ctas, p, -c)
        if best_key is None or key < best_key:
            best, best_key = (c, p), key
    return best


def check_split(split: tuple[int, int] | None) -> tuple[int, int] | None:
    """A work-split override (cluster size C, clusters per KV head P) as a tuple of ints, or None (the
    launcher's choice, choose_split). Raises ValueError unless C is one of CLUSTER_SIZES and
    1 <= P <= MAX_SPLIT (the kernel merges at most MAX_SPLIT partials from registers and traps beyond).
    Whether C-CTA clusters fit on the device, and whether the grid is one wave, is for _plan to say."""
    if split is None:
        return None
    try:
        c, p = split
        ok = int(c) == c and int(p) == p
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"split {split!r}: expected (cluster, clusters_per_kv_head), two integers")
    c, p = int(c), int(p)
    if c not in CLUSTER_SIZES:
        raise ValueError(f"split {split!r}: cluster size {c} is not one of {CLUSTER_SIZES}")
    if not 1 <= p <= MAX_SPLIT:
        raise ValueError(f"split {split!r}: clusters per KV head {p} outside 1..{MAX_SPLIT}")
    return c, p


def estimated_active_clusters(num_sms: int) -> Callable[[int], int]:
    """Without a device: every SM takes one CTA and any C SMs form a cluster (optimistic on real GPCs)."""
    return lambda c: num_sms // c


def _plan(
    *,
    hidden: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    batch: int,
    esize: int,
    num_sms: int,
    active: Callable[[int], int] | None = None,
    split: tuple[int, int] | None = None,
) -> AttentionConfig | str:
    """The work split, or why none fits (the callers memoise: every launch asks for it).

    split: override of (C, P) (check_split); None = choose_split's. The grid, the cluster dims, the
    counters and the scratch all follow the plan, so an override changes every launch-side size with
    it; an override that is not one wave on this device gets one_wave=False, and effective_variant
    then falls back to version 3 exactly as for a chosen split that is not one wave. Raises ValueError
    for an invalid override, or one whose C-CTA clusters the device cannot run at all."""
    group = num_heads // num_kv_heads
    active = active or estimated_active_clusters(num_sms)
    split = check_split(split)
    if split is None:
        cluster, per_head = choose_split(num_kv_heads, active)
    else:
        cluster, per_head = split
        if active(cluster) < 1:
            raise ValueError(f"split {split}: the device runs no cluster of {cluster} CTAs at once "
                             f"(co-resident clusters: {active(cluster)})")
    bucket, hg = batch_bucket(batch), heads_per_pass(group)
    fixed = _smem_bytes(
        batch=batch, bucket=bucket, group=group, head_dim=head_dim, k_chunk=0, hg=hg, esize=esize
    )
    room = SMEM_LIMIT - fixed
    if room < 0:
        return f"shared memory: {fixed} bytes needed for batch {batch}, {group} heads x {head_dim} > {SMEM_LIMIT}"
    # stage region: max(x chunk, partials) already counts the partials; the x chunk may grow into the rest
    part_ws = _align16(batch * group * (head_dim + 2) * 4) + _align16(WARPS * hg * (head_dim + 2) * 4)
    max_chunk = (room + part_ws) // (bucket * esize) // VECTOR_ELEMS * VECTOR_ELEMS
    k_chunk = min(hidden, max_chunk)
    if k_chunk < 32 * VECTOR_ELEMS and k_chunk < hidden:
        return f"shared memory: only {k_chunk} hidden columns fit per chunk at batch {batch}"
    smem = _smem_bytes(
        batch=batch, bucket=bucket, group=group, head_dim=head_dim, k_chunk=k_chunk, hg=hg, esize=esize
    )
    return AttentionConfig(cluster, per_head, k_chunk, bucket, hg, smem, (cluster, per_head, num_kv_heads),
                           one_wave=num_kv_heads * per_head <= active(cluster))


@functools.cache  # every launch asks: the answer (and the plan behind it) is per shape
def attention_unsupported_reason(
    *,
    hidden: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    batch: int,
    dtype: torch.dtype,
    max_cache_len: int,
    has_qk_norm: bool = False,
    mask_dtype: torch.dtype | None = torch.bool,
    num_sms: int = 132,
) -> str | None:
    """None when the kernel covers this shape, else a one-line reason (the backend then falls back)."""
    del has_qk_norm  # supported
    if dtype not in SUPPORTED_DTYPES:
        return f"dtype {dtype}: only float16 and bfloat16"
    if head_dim not in SUPPORTED_HEAD_DIMS:
        return f"head_dim {head_dim}: supported {SUPPORTED_HEAD_DIMS}"
    if num_kv_heads < 1 or num_heads % num_kv_heads:
        return f"{num_heads} query heads are not a multiple of {num_kv_heads} KV heads"
    if not 1 <= batch <= MAX_BATCH:
        return f"batch {batch}: supported 1..{MAX_BATCH}"
    if hidden > MAX_HIDDEN or hidden % VECTOR_ELEMS:
        return f"hidden {hidden}: must be a multiple of {VECTOR_ELEMS} and at most {MAX_HIDDEN}"
    if max_cache_len < 1:
        return f"max_cache_len {max_cache_len}"
    if mask_dtype is not None and mask_dtype != torch.bool:
        return f"attention mask of dtype {mask_dtype}: only bool masks"
    plan = _plan(hidden=hidden, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim, batch=batch,
                 esize=dtype.itemsize, num_sms=num_sms)
    return plan if isinstance(plan, str) else None


def default_kernel(num_heads: int, num_kv_heads: int, batch: int) -> str:
    """The kernel a call without a variant asks for: CF_ATTN_KERNEL if set (flow or cluster), else the claimed-tile
    kernel (attention_flow.VARIANT) where attention_flow.is_default says so, else "cluster". Where the claimed
    tiles do not take the shape, attention_decode and attention_config fall back to the cluster kernel."""
    chosen = env.attention_kernel()
    if chosen is not None:
        return attention_flow.VARIANT if chosen == attention_flow.VARIANT else "cluster"
    default = attention_flow.is_default(num_heads=num_heads, num_kv_heads=num_kv_heads, batch=batch)
    return attention_flow.VARIANT if default else "cluster"


def attention_config(
    *,
    hidden: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    batch: int,
    dtype: torch.dtype,
    num_sms: int,
    split: tuple[int, int] | None = None,
    has_qk_norm: bool = False,
    kernel: str | None = None,
) -> dict:
    """The work split for the report (cluster size, clusters per KV head, chunks, shared memory), from the
    SM count (estimated_active_clusters); split overrides (C, P) as in attention_decode. kernel: "cluster", or
    "flow" for the claimed-tile kernel's tile cut where it takes the shape; None: what attention_decode runs
    (default_kernel's choice; a split override means the cluster kernel)."""
    if kernel is None:
        kernel = default_kernel(num_heads, num_kv_heads, batch) if split is None else "cluster"
    if kernel == attention_flow.VARIANT and attention_flow.flow_unsupported_reason(
            hidden=hidden, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim, batch=batch,
            has_qk_norm=has_qk_norm) is None:
        return attention_flow.flow_config(hidden=hidden, num_heads=num_heads, num_kv_heads=num_kv_heads,
                                          head_dim=head_dim, num_sms=num_sms)
    plan = _plan(hidden=hidden, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim, batch=batch,
                 esize=dtype.itemsize, num_sms=num_sms, split=split)
    if isinstance(plan, str):
        raise ValueError(plan)
    return {"kernel": "cluster", **plan.as_dict()}


def compiled_kernel(dtype: torch.dtype, bucket: int, hg: int, arch: str | None = None,
                    timeline: bool = False) -> CompiledKernel:
    """attention_decode<T, BB, HG> as a cubin (disk-cached). timeline: the -DCF_ATTN_TIMELINE=1 build (its own
    cache entry), which stamps TIMELINE into o_partial's tail; benchmarks only."""
    defines = {"CF_ATTN_TIMELINE": 1} if timeline else None
    return compile_kernel(SOURCE, KERNEL, template_args=(SUPPORTED_DTYPES[dtype], bucket, hg), defines=defines,
                          arch=arch)


def timeline_elems(ctas: int) -> int:
    """int64 elements of one launch's timeline: [ctas][len(TIMELINE)] globaltimer ns, CTA index
    blockIdx.x + C * (blockIdx.y + P * blockIdx.z)."""
    return ctas * len(TIMELINE)


@functools.cache
def device_plan(
    dtype: torch.dtype, *, hidden: int, num_heads: int, num_kv_heads: int, head_dim: int, batch: int,
    device_index: int,
    split: tuple[int, int] | None = None,
) -> AttentionConfig:
    """The launch plan on a real device: shared memory from the shape, the split from the driver's
    count of co-resident clusters of each size (so the grid is one wave), memoised per shape and split
    override (split: see _plan; its one_wave also comes from the driver's counts)."""
    split = check_split(split)
    shape = dict(hidden=hidden, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim, batch=batch,
                 esize=dtype.itemsize, num_sms=_num_sms(device_index))
    first = _plan(**shape)
    if isinstance(first, str):
        raise ValueError(first)
    kernel = load_kernel(compiled_kernel(dtype, first.batch_bucket, first.heads_per_pass), device_index)
    estimate = estimated_active_clusters(shape["num_sms"])
    counts = {}
    for c in CLUSTER_SIZES:
        found = kernel.max_active_clusters(c, THREADS, first.smem_bytes)
        counts[c] = estimate(c) if found is None else found
    plan = _plan(**shape, active=counts.__getitem__, split=split)
    assert not isinstance(plan, str)
    return replace(plan, active_clusters=tuple(sorted(counts.items())))


# ------------------------------------------------------------------ scratch (once per shape and device)

_scratch: dict[tuple, tuple[torch.Tensor, ...]] = {}
_scratch_lock = threading.Lock()


def _scratch_numel(kvh: int, cfg: AttentionConfig, batch: int, group: int, head_dim: int, hidden: int,
                   timeline: bool = False) -> tuple[int, ...]:
    """Elements of (attn_partial fp32, o_partial fp32, arrivals int32, qkv_global fp32) for the plan's C and P:
    the split-merge partials [KVH, C, P, B, G, D+2] and the q/k/v hand-off [KVH, B, G+2, D] exist for P > 1.
    timeline: o_partial also holds the int64 stamps (timeline_elems, 2 floats each) past its KVH*B*H floats."""
    c, p = cfg.cluster, cfg.clusters_per_kv_head
    stamps = 2 * timeline_elems(cfg.grid[0] * cfg.grid[1] * cfg.grid[2]) if timeline else 0
    return (
        max(1, kvh * c * p * batch * group * (head_dim + 2) if p > 1 else 1),
        kvh * batch * hidden + stamps,
        _counter_count(kvh, c, p),
        kvh * batch * (group + 2) * head_dim if p > 1 else 1,
    )


def _counter_count(kvh: int, cluster: int, per_head: int) -> int:
    """Arrival counters the kernel uses (attn::counters): merge arrive/depart per (KV head, rank),
    output-slice arrive/depart per slice (P*C slices at most), q/k/v arrive/depart per KV head."""
    return 2 * kvh * cluster + 2 * per_head * cluster + 2 * kvh


def _scratch_for(
    device: torch.device, kvh: int, cfg: AttentionConfig, batch: int, group: int, head_dim: int, hidden: int,
    timeline: bool = False,
) -> tuple[torch.Tensor, ...]:
    """fp32 partials, the q/k/v hand-off buffer and arrival counters; counters start at zero and every
    launch leaves them at zero.

    Shared by every launch of this shape on this device, so launches of one shape must be ordered
    (one stream, or a graph): two concurrent streams would share the counters."""
    # timeline launches get their own set (o_partial enlarged)
    key = (device, kvh, cfg.cluster, cfg.clusters_per_kv_head, batch, group, head_dim, hidden, timeline)
    with _scratch_lock:
        found = _scratch.get(key)
        if found is None:
            n_attn, n_o, n_counters, n_qkv = _scratch_numel(kvh, cfg, batch, group, head_dim, hidden, timeline)
            attn_partial = torch.empty(n_attn, dtype=torch.float32, device=device)
            o_partial = torch.empty(n_o, dtype=torch.float32, device=device)
            arrivals = torch.zeros(n_counters, dtype=torch.int32, device=device)
            qkv_global = torch.empty(n_qkv, dtype=torch.float32, device=device)
            found = _scratch[key] = (attn_partial, o_partial, arrivals, qkv_global)
        return found


def ring_shared_bytes(plan_bytes: int) -> int:
    """Dynamic shared memory with the K/V ring after a plan of ``plan_bytes`` (attn::kKvRing)."""
    return (plan_bytes + RING_ALIGN - 1) // RING_ALIGN * RING_ALIGN + RING_BYTES


# attn kRingBuild: bucket 16's plan leaves no room for two stages at D = 128; bucket 4's build streams K/V as fast
# without the ring and the ring path slows the rest of it (round 20)
RING_BUCKETS = (1, 2, 8)


def keeps_ring(bucket: int, hg: int) -> bool:
    """Whether a build has the K/V ring path (attn kRingBuild): batch bucket 1, 2 or 8, one query head per pass."""
    return bucket in RING_BUCKETS and hg == 1


# attn kHeadLanesBuild and the head dims attend_heads is instantiated for
HEAD_LANES_DIMS = (64, 128)
HEAD_LANES_BUCKETS = (1, 2)  # attn::kHeadLanesBuild (bucket 4 and up: round 25, H100)


def keeps_head_lanes(bucket: int, hg: int, head_dim: int) -> bool:
    """Whether a launch runs the head-lane token loop (attn::kHeadLanes): batch buckets 1 and 2, several query
    heads per pass, head_dim 64 or 128."""
    return bucket in HEAD_LANES_BUCKETS and hg >= 4 and head_dim in HEAD_LANES_DIMS


def launch_bits(plan: AttentionConfig, variant: str, head_dim: int) -> tuple[int, int]:
    """(variant bits, dynamic shared bytes) of one launch: effective_variant; the head-lane bit kept only where
    the build and head dim have that loop (keeps_head_lanes); the K/V ring's bit kept only at batch buckets 1, 2
    and 8 with one head per pass (the instantiations with the ring path; any rows in parallel), where the ring
    fits beside the plan (it then gets its bytes)."""
    bits = effective_variant(plan, variant)
    if not keeps_head_lanes(plan.batch_bucket, plan.heads_per_pass, head_dim):
        bits &= ~HEAD_LANES
    if not bits & KV_RING:
        return bits, plan.smem_bytes
    with_ring = ring_shared_bytes(plan.smem_bytes)
    if not keeps_ring(plan.batch_bucket, plan.heads_per_pass) or with_ring > SMEM_LIMIT:
        return bits & ~KV_RING, plan.smem_bytes
    return bits, with_ring


def phase4_loop(plan: AttentionConfig, variant: str, head_dim: int) -> str:
    """Which token loop phase 4 of a launch runs, from the bits launch_bits keeps: "head-lanes" (lanes as query
    head x slice of head_dim, GQA at batch 1-2), "kv-ring" (bulk copies into a shared-memory ring, MHA) or "token-slots"
    (lanes as token slot x 16-byte vector, every head unrolled). The report shows it beside the split."""
    bits, _ = launch_bits(plan, variant, head_dim)
    if bits & HEAD_LANES:
        return "head-lanes"
    return "kv-ring" if bits & KV_RING else "token-slots"


def effective_variant(plan: AttentionConfig, variant: str) -> int:
    """The kernel's variant bits: the requested ones on a one-wave split, 0 (version 3) otherwise (the
    variants wait for other CTAs of the grid, which is only safe when all of them are co-resident) --
    except LOCAL_BITS (MMA, DEEP_KV), which change only one CTA's work and are kept. The q/k/v split bit is dropped when P = 1,
    MMA below batch bucket MMA_MIN_BUCKET (the kernel ignores them there as well)."""
    bits = VARIANTS[variant]
    if plan.batch_bucket < MMA_MIN_BUCKET:  # the kernel ignores the bit there: report what runs
        bits &= ~MMA
    if not plan.one_wave:  # the MMA and DEEP_KV bits wait for nobody: they stay
        return bits & LOCAL_BITS
    if plan.clusters_per_kv_head == 1:  # nothing to split over: the DSMEM gather of version 3
        bits &= ~SPLIT_QKV_BIT
    return bits


@dataclass(frozen=True)
class _Launch:
    """What every launch of one shape on one device reuses: split, loaded kernel, scratch."""

    plan: AttentionConfig
    kernel: object  # launch.LoadedKernel
    scratch: tuple[torch.Tensor, ...]


_launches: dict[tuple, _Launch] = {}


@contextlib.contextmanager
def built_from(source: str) -> Iterator[None]:
    """Launches inside use kernels compiled from ``source`` (e.g. an earlier revision of attention_decode.cu, out
    of tree) instead of SOURCE: the A/B of a change, bit for bit and in time, in one process. The memo of launches
    is set aside and restored, so no launch built from one source is reused for the other."""
    global SOURCE
    saved_source, saved_launches = SOURCE, dict(_launches)
    SOURCE = source
    _launches.clear()
    try:
        yield
    finally:
        SOURCE = saved_source
        _launches.clear()
        _launches.update(saved_launches)


def _launch_for(
    dtype: torch.dtype, hidden: int, num_heads: int, kvh: int, head_dim: int, batch: int, device: torch.device,
    split: tuple[int, int] | None = None,
    timeline: bool = False,
) -> _Launch:
    """Memoised per shape and split override: a launch must not hash kernel sources or re-derive the split
    every call. The scratch is keyed by the plan's (C, P), so two overrides never share counters.
    timeline: the CF_ATTN_TIMELINE build with its own scratch (benchmarks only)."""
    key = (timeline, dtype, hidden, num_heads, kvh, head_dim, batch, device, split)
    found = _launches.get(key)
    if found is None:
        index = device.index if device.index is not None else torch.cuda.current_device()
        plan = device_plan(dtype, hidden=hidden, num_heads=num_heads, num_kv_heads=kvh, head_dim=head_dim,
                           batch=batch, device_index=index, split=split)
        kernel = load_kernel(compiled_kernel(dtype, plan.batch_bucket, plan.heads_per_pass, timeline=timeline),
                             device)
        scratch = _scratch_for(device, kvh, plan, batch, num_heads // kvh, head_dim, hidden, timeline)
        found = _launches[key] = _Launch(plan, kernel, scratch)
    return found


@functools.cache
def _num_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _split_rows(weights: list[torch.Tensor], sizes: tuple[int, int, int]) -> tuple[torch.Tensor, ...]:
    if len(weights) == 3:
        return tuple(weights)
    if len(weights) != 1:
        raise ValueError(f"qkv weights: 3 tensors or one fused tensor, got {len(weights)}")
    return tuple(weights[0].split(sizes, dim=0))


def _split_bias(biases: list[torch.Tensor | None], sizes: tuple[int, int, int]) -> tuple:
    if len(biases) == 3:
        return tuple(biases)
    if len(biases) != 1:
        raise ValueError(f"qkv biases: 3 entries or one fused entry, got {len(biases)}")
    if biases[0] is None:
        return (None, None, None)
    return tuple(biases[0].split(sizes, dim=0))


def attention_decode(
    x: torch.Tensor,
    norm_weight: torch.Tensor,
    eps: float,
    norm_kind: str,
    qkv_weights: list[torch.Tensor],
    qkv_biases: list[torch.Tensor | None],
    q_norm_weight: torch.Tensor | None,
    k_norm_weight: torch.Tensor | None,
    qk_norm_eps: float,
    cos: torch.Tensor,
    sin: torch.Tensor,
    cache_position: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    attn_mask: torch.Tensor | None,
    scale: float,
    o_weight: torch.Tensor,
    o_bias: torch.Tensor | None,
    add_residual: bool,
    out: torch.Tensor,
    *,
    prefetch: bool = False,
    stop_after_phase: int = 0,
    rows_parallel: int | None = None,
    variant: str | None = None,
    split: tuple[int, int] | None = None,
    timeline: torch.Tensor | None = None,
) -> None:
    """out = [x +] o_proj(attention(rope(qkv(rmsnorm(x))))), writing k/v into the caches at cache_position.

    One kernel launch, no host sync, no allocation after the first call of a shape (CUDA-graph safe).
    Raises ValueError/TypeError for unsupported inputs (attention_unsupported_reason says why first).
    prefetch: pull the o_proj weights into L2 after the q/k/v phase (an experiment the benchmark times).
    rows_parallel: batch rows attended at once (default: rows_in_parallel(batch)); 1 walks the rows in turn.
    stop_after_phase: measurement hook (benchmarks/attention.py --phases): k > 0 returns after the
    kernel's phase k, leaving `out` unwritten; 0 (the default) runs the whole block.
    variant: one of VARIANTS (default DEFAULT_VARIANT); a split that is not one wave runs "v3" (keeping only
        LOCAL_BITS, which wait for no other CTA).
    split: (cluster size C, clusters per KV head P) overriding the launcher's choice (default None: choose_split
        over the driver's co-resident cluster counts). C in CLUSTER_SIZES, 1 <= P <= MAX_SPLIT, else ValueError.
        Grid, cluster dims, counters and scratch follow it; if KVH*P clusters of C are not co-resident the
        launch is not one wave and runs version 3 as above. Results stay inside the dtype band but are not
        bitwise those of another split (P and C change the token chunks and the merge order).
    timeline: benchmarks only (the custom op and the backend never pass it). An int64 tensor on x's device with
        at least timeline_elems(CTAs of the plan) elements selects the CF_ATTN_TIMELINE build: the launch
        zeroes the stamp tail of its own (enlarged) o_partial, runs, and copies the tail into timeline[:n] as
        [CTAs][len(TIMELINE)] %globaltimer ns (0: stamp not reached). Same outputs as without it. With variant
        "flow" named explicitly it is the claimed-tile kernel's stamps instead (attention_flow.launch, sized by
        attention_flow.plan(..., timeline=True).stamp_elems())."""
    explicit_flow = variant == attention_flow.VARIANT
    split = check_split(split)
    if variant is not None and variant not in VARIANTS and not explicit_flow:
        raise ValueError(f"variant {variant!r}: one of {sorted(VARIANTS)} or {attention_flow.VARIANT!r}")
    if norm_kind not in ("weight", "unit_offset"):
        raise ValueError(f"norm_kind {norm_kind!r}: 'weight' or 'unit_offset'")
    batch, _, hidden = x.shape
    _, kvh, max_len, head_dim = k_cache.shape
    dtype = x.dtype
    q_rows = qkv_weights[0].shape[0] - (2 * kvh * head_dim if len(qkv_weights) == 1 else 0)
    num_heads = q_rows // head_dim
    if variant is None and default_kernel(num_heads, kvh, batch) == attention_flow.VARIANT:
        variant = attention_flow.VARIANT  # where the claimed-tile kernel takes the shape (checked below)
    variant = DEFAULT_VARIANT if variant is None else variant
    reason = attention_unsupported_reason(
        hidden=hidden,
        num_heads=num_heads,
        num_kv_heads=kvh,
        head_dim=head_dim,
        batch=batch,
        dtype=dtype,
        max_cache_len=max_len,
        has_qk_norm=q_norm_weight is not None,
        mask_dtype=None if attn_mask is None else attn_mask.dtype,
        num_sms=_num_sms(x.device.index or 0),
    )
    if reason:
        raise ValueError(f"attention_decode: {reason}")
    sizes = (num_heads * head_dim, kvh * head_dim, kvh * head_dim)
    wq, wk, wv = _split_rows(list(qkv_weights), sizes)
    bq, bk, bv = _split_bias(list(qkv_biases), sizes)
    dev = x.device
    check_tensor("x", x, dtype=dtype, shape=(batch, 1, hidden), device=dev)
    check_tensor("out", out, dtype=dtype, shape=(batch, 1, hidden), device=dev)
    check_tensor("norm_weight", norm_weight, dtype=dtype, shape=(hidden,), device=dev)
    for name, w, rows in (("Wq", wq, sizes[0]), ("Wk", wk, sizes[1]), ("Wv", wv, sizes[2])):
        check_tensor(name, w, dtype=dtype, shape=(rows, hidden), device=dev)
    for name, bias, rows in (("bq", bq, sizes[0]), ("bk", bk, sizes[1]), ("bv", bv, sizes[2])):
        if bias is not None:
            check_tensor(name, bias, dtype=dtype, shape=(rows,), device=dev, align=2)
    for name, w in (("q_norm_weight", q_norm_weight), ("k_norm_weight", k_norm_weight)):
        if w is not None:
            check_tensor(name, w, dtype=dtype, shape=(head_dim,), device=dev, align=2)
    if (q_norm_weight is None) != (k_norm_weight is None):
        raise ValueError("q_norm_weight and k_norm_weight come together")
    for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
        check_tensor(name, cache, dtype=dtype, shape=(batch, kvh, max_len, head_dim), device=dev)
    check_tensor("o_weight", o_weight, dtype=dtype, shape=(hidden, num_heads * head_dim), device=dev)
    if o_bias is not None:
        check_tensor("o_bias", o_bias, dtype=dtype, shape=(hidden,), device=dev, align=2)
    check_tensor(
        "cache_position", cache_position.reshape(-1), dtype=torch.int64, shape=(1,), device=dev, align=8
    )
    if cos.dtype not in _COS_KIND or sin.dtype != cos.dtype:
        raise TypeError(f"cos/sin dtypes {cos.dtype}/{sin.dtype}: one of float32, float16, bfloat16")
    cos2, sin2 = cos.reshape(-1, head_dim), sin.reshape(-1, head_dim)
    if cos2.shape[0] not in (1, batch) or sin2.shape != cos2.shape:
        raise ValueError(f"cos/sin shape {tuple(cos.shape)}: expected [B or 1, 1, {head_dim}]")
    cos2, sin2 = cos2.contiguous(), sin2.contiguous()
    cos_stride = head_dim if cos2.shape[0] == batch and batch > 1 else 0
    mask_stride = 0
    if attn_mask is not None:
        if attn_mask.shape[-1] != max_len or attn_mask.numel() // max_len not in (1, batch):
            raise ValueError(f"attn_mask shape {tuple(attn_mask.shape)}: expected [B, 1, 1, {max_len}]")
        attn_mask = attn_mask.reshape(-1, max_len)
        if attn_mask.stride(-1) != 1:
            attn_mask = attn_mask.contiguous()
        mask_stride = attn_mask.stride(0) if attn_mask.shape[0] == batch and batch > 1 else 0
    if variant == attention_flow.VARIANT:
        flow_reason = attention_flow.flow_unsupported_reason(
            hidden=hidden, num_heads=num_heads, num_kv_heads=kvh, head_dim=head_dim, batch=batch,
            has_qk_norm=q_norm_weight is not None,
        )
        if flow_reason is None and (stop_after_phase or split or prefetch or (timeline is not None and not explicit_flow)):
            flow_reason = "stop_after_phase / split / prefetch (and the cluster timeline) are cluster-kernel options"
        if flow_reason is None:
            attention_flow.launch(
                x, norm_weight, eps, norm_kind == "unit_offset", wq, wk, wv, bq, bk, bv, cos2, sin2,
                _COS_KIND[cos.dtype], cache_position, k_cache, v_cache, attn_mask, scale, o_weight, o_bias,
                add_residual, out, stamps=timeline,
            )
            return
        if explicit_flow:
            raise ValueError(f"attention_decode: variant 'flow': {flow_reason}")
        variant = DEFAULT_VARIANT  # CF_ATTN_KERNEL=flow where it does not apply: the cluster kernel
    launch = _launch_for(dtype, hidden, num_heads, kvh, head_dim, batch, dev, split, timeline is not None)
    plan, kernel = launch.plan, launch.kernel
    attn_partial, o_partial, arrivals, qkv_global = launch.scratch
    rows = rows_parallel or rows_in_parallel(batch)
    bits, shared_bytes = launch_bits(plan, variant, head_dim)
    i32, f32, i64 = ctypes.c_int32, ctypes.c_float, ctypes.c_int64
    args = [
        x,
        norm_weight,
        wq,
        wk,
        wv,
        bq,
        bk,
        bv,
        q_norm_weight,
        k_norm_weight,
        cos2,
        sin2,
        cache_position,
        k_cache,
        v_cache,
        attn_mask,
        o_weight,
        o_bias,
        out,
        attn_partial,
        o_partial,
        arrivals,
        qkv_global,
        f32(eps),
        f32(qk_norm_eps),
        f32(scale),
        i32(batch),
        i32(hidden),
        i32(num_heads),
        i32(kvh),
        i32(head_dim),
        i32(max_len),
        i64(mask_stride),
        i64(cos_stride),
        i32(_COS_KIND[cos.dtype]),
        i32(norm_kind == "unit_offset"),
        i32(bool(add_residual)),
        i32(plan.k_chunk),
        i32(bool(prefetch)),
        i32(rows),
        i32(stop_after_phase),
        i32(bits),
    ]
    stamps = None
    if timeline is not None:
        n_stamps = timeline_elems(plan.grid[0] * plan.grid[1] * plan.grid[2])
        if timeline.dtype != torch.int64 or timeline.device != dev or timeline.numel() < n_stamps:
            raise ValueError(f"attention_decode: timeline must be int64 on {dev} with >= {n_stamps} elements")
        stamps = o_partial[kvh * batch * hidden:].view(torch.int64)  # the kernel's timeline_row
        stamps.zero_()
    kernel.launch(
        plan.grid, (THREADS, 1, 1), args, shared_bytes=shared_bytes, cluster=(plan.cluster, 1, 1)
    )
    if stamps is not None:
        timeline.view(-1)[:n_stamps].copy_(stamps[:n_stamps])


# Representative instantiations for `python -m cf_compile_kernels check`:
# Llama-2-7B / Llama-3-8B / Llama-3.2-1B / Qwen2.5-0.5B at batch 1 and 16, and Llama-3-8B at the smallest
# batch bucket of the tensor-core GEMV (MMA_MIN_BUCKET: one N tile, half of it padding).
for _dtype in SUPPORTED_DTYPES.values():
    for _bucket, _hg in ((1, 1), (1, 4), (1, 8), (MMA_MIN_BUCKET, 4), (16, 1), (16, 4), (16, 8)):
        register_check(
            SOURCE, KERNEL, (_dtype, _bucket, _hg), label=f"attention {_dtype} B<={_bucket} G/pass {_hg}"
        )
