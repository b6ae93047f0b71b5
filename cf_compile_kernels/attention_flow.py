"""Launcher of the claimed-tile attention kernel (csrc/attention_flow.cu): batch 1, head_dim 64 / 128.

attention.attention_decode launches it for batch-1 MHA shapes (is_default; CF_ATTN_KERNEL=cluster|flow or
variant="flow" choose explicitly) after validating every tensor. The host cuts three kinds of tiles, all
from the shape and the resident CTA count (`slots`): q/k/v tiles of whole rows of one head, the largest that
still give half the slots a tile; NC attention chunks per KV group (at most MAX_CHUNKS, so the merge of a
group's partials stays one short pass); o_proj tiles of O_TILE_ROWS rows (the FFN's measured down-tile cut).
Scratch (fp32 q/k/v, per-chunk partials, the rounded attention output, counters) is allocated once per
(shape, device); the kernel zeroes its counters at the end of every launch (CUDA-graph replay safe).
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass, replace

import torch

from . import env
from .flow import (
    CTYPES,
    PHASE_MARKS,
    STAMP_WORDS,
    THREADS,
    WARPS,
    cuts,
    nearest_cut,
    resident_slots,
    tile_rows,
)
from .launch import PlanCache, load_kernel
from .registry import register_check

SOURCE = "attention_flow.cu"
KERNEL = "attention_flow_kernel"
VARIANT = "flow"

RPW = 4  # weight rows per warp (batch 1: the FFN's measured choice)
HEAD_DIMS = (64, 128)
# Query heads per KV head a build holds, per head_dim: D = 128 with 8 spills (24-32 B, NVRTC 13.5).
GROUP_BUILDS = {64: (1, 2, 4, 8), 128: (1, 2, 4)}
MAX_CHUNKS = 16  # attention tiles per KV group by default: the last one merges them all (kSingleMergeMax)
SINGLE_MERGE_MAX = 16  # kSingleMergeMax: above it (CF_ATTN_FLOW_MAX_CHUNKS > 16) the merge is two-level
MERGE_FAN_IN = 8  # kMergeFanIn: chunks per first-level merge block
O_TILE_ROWS = 4
# The steps each tile kind marks in a timeline build (TileClock::mark, in order; PHASE_MARKS at most).
PHASE_STEPS = {
    "qkv": ("rows summed", "counted"),
    "attention": ("q/k/v ready", "rope done", "chunk walked", "partial counted", "group merged"),
    "o_proj": ("groups merged", "rows summed"),
}
CTRL_FIXED = 3  # ticket, exit count, groups merged; then 2 words per KV group


def group_build(groups: int, head_dim: int) -> int | None:
    """The smallest build (GM) holding `groups` query heads per KV head, or None."""
    for gm in GROUP_BUILDS.get(head_dim, ()):
        if groups <= gm:
            return gm
    return None


def qkv_wpr(num_heads: int, num_kv_heads: int, head_dim: int, slots: int) -> int | None:
    """Warps per row group of the q/k/v tiles: tiles inside one head, the largest giving >= slots / 2 tiles."""
    rows = (num_heads + 2 * num_kv_heads) * head_dim
    inside_head = cuts(head_dim, RPW)
    for w in inside_head:
        if rows // tile_rows(RPW, w) >= slots // 2:
            return w
    return inside_head[-1] if inside_head else None


def o_wpr(hidden: int) -> int | None:
    """o_proj tiles of O_TILE_ROWS rows where they cut the hidden size, else the nearest cut."""
    return nearest_cut(hidden, RPW, O_TILE_ROWS)


def chunks(num_kv_heads: int, slots: int, cap: int = MAX_CHUNKS) -> int:
    """Attention tiles per KV group: one per resident slot, at most `cap`."""
    return max(1, min(cap, slots // num_kv_heads))


def merge_blocks(nc: int) -> int:
    """First-level merge blocks per KV group: 0 where one tile merges all nc partials (nc <= SINGLE_MERGE_MAX)."""
    return -(-nc // MERGE_FAN_IN) if nc > SINGLE_MERGE_MAX else 0


@dataclass(frozen=True)
class Knobs:
    """The build and cut of one launch (part of the plan key). Defaults are the measured choices; env.py's
    CF_ATTN_FLOW_* knobs override them for benchmarks: the chunk cap (above SINGLE_MERGE_MAX the merge is
    two-level), warps per row group of the q/k/v tiles (1/2/4/8: smaller tiles, k-split rows), token-parallel lanes
    (-DCF_ATTN_TOKEN_LANES) and o_proj tiles per head segment (-DCF_ATTN_O_SPLIT; both None: by shape, on for GQA,
    uses_gqa_builds), release/acquire hand-offs (lean_sync, -DCF_FLOW_LEAN_SYNC=0 when off), no mask loads on
    dense rows (dense_mask, -DCF_ATTN_DENSE_MASK=0 when off), the merge stage (-DCF_ATTN_MERGE_STAGE) and the K/V
    chunk asked of L2 before the q/k/v wait (-DCF_ATTN_KV_PREFETCH), the next step's K loaded before the current
    step's scores in the token-lane walk (-DCF_ATTN_WALK_PIPELINE)."""

    max_chunks: int = MAX_CHUNKS
    qkv_wpr: int | None = None
    token_lanes: bool | None = None
    o_split: bool | None = None
    lean_sync: bool = True
    dense_mask: bool = True
    merge_stage: bool = False
    kv_prefetch: bool = False
    walk_pipeline: bool = False

    @staticmethod
    def from_env() -> Knobs:
        return Knobs(env.attention_flow_max_chunks() or MAX_CHUNKS, env.attention_flow_qkv_wpr(),
                     env.attention_flow_token_lanes(), env.attention_flow_o_split(),
                     env.attention_flow_lean_sync(), env.attention_flow_dense_mask(), env.attention_flow_merge_stage(),
                     env.attention_flow_kv_prefetch(), env.attention_flow_walk_pipeline())

    def resolved(self, num_heads: int, num_kv_heads: int) -> Knobs:
        """The shape's choice for every knob left None."""
        gqa = uses_gqa_builds(num_heads, num_kv_heads)
        return replace(self, token_lanes=gqa if self.token_lanes is None else self.token_lanes,
                       o_split=gqa if self.o_split is None else self.o_split)

    def row_flags(self) -> dict[str, bool | int]:
        """How a benchmark row names this (resolved) build: a flow_<knob> entry per build switch that is on, the
        chunk cap and q/k/v cut where overridden (policy_table.ran_flow_default compares them)."""
        flags: dict[str, bool | int] = {f"flow_{name}": True for name in BUILD_SWITCHES if getattr(self, name)}
        if self.max_chunks != MAX_CHUNKS:
            flags["flow_max_chunks"] = self.max_chunks
        if self.qkv_wpr is not None:
            flags["flow_qkv_wpr"] = self.qkv_wpr
        return flags

    def defines(self, timeline: bool) -> dict[str, int] | None:
        """The build's -D defines (None: the default build); token_lanes / o_split as resolved (None: off)."""
        defines = {"CF_FLOW_TIMELINE": 1} if timeline else {}
        if self.token_lanes:
            defines["CF_ATTN_TOKEN_LANES"] = 1
        if self.o_split:
            defines["CF_ATTN_O_SPLIT"] = 1
        if not self.lean_sync:
            defines["CF_FLOW_LEAN_SYNC"] = 0
        if not self.dense_mask:
            defines["CF_ATTN_DENSE_MASK"] = 0
        if self.merge_stage:
            defines["CF_ATTN_MERGE_STAGE"] = 1
        if self.kv_prefetch:
            defines["CF_ATTN_KV_PREFETCH"] = 1
        if self.walk_pipeline:
            defines["CF_ATTN_WALK_PIPELINE"] = 1
        return defines or None


BUILD_SWITCHES = ("token_lanes", "o_split", "lean_sync", "dense_mask", "merge_stage", "kv_prefetch", "walk_pipeline")


def uses_gqa_builds(num_heads: int, num_kv_heads: int) -> bool:
    """Grouped-query shapes run token-parallel lanes and o_proj split by head segment (measured, H100 bf16 B=1,
    2026-12-07, round 31, us at 1024 / 4096 cached, with the lean hand-offs: Llama-3-8B 53.9 / 65.3 against 56.8 /
    76.1 without them, Llama-3.2-1B 25.9 / 32.5 against 26.5 / 46.7, Qwen2.5-0.5B 23.4 / 32.1 against 24.5 / 43.7;
    Llama-2-7B (MHA) loses with them at 4096, 92.8 against 87.2)."""
    return num_heads != num_kv_heads


def is_default(*, num_heads: int, num_kv_heads: int, batch: int) -> bool:
    """Batch 1 runs this kernel by default, where it supports the shape (flow_unsupported_reason).

    Measured (H100 bf16, 2026-12-07, NOTES-attention.md round 31, one run; us at 1024 / 4096 cached, against the
    cluster kernel v5_heads): Llama-2-7B 66.3 / 87.2 vs 78.3 / 108.0; with the GQA builds (uses_gqa_builds)
    Llama-3-8B 53.9 / 65.3 vs 58.1 / 69.8, Llama-3.2-1B 25.9 / 32.5 vs 30.9 / 40.8, Qwen2.5-0.5B 23.4 / 32.1 vs
    27.0 / 31.7 (a tie at 4096)."""
    return batch == 1


@functools.cache  # asked on every launch: the answer is per shape
def flow_unsupported_reason(*, hidden: int, num_heads: int, num_kv_heads: int, head_dim: int, batch: int,
                            has_qk_norm: bool) -> str | None:
    if batch != 1:
        return f"batch {batch} (the claimed-tile attention kernel is batch 1)"
    if head_dim not in HEAD_DIMS:
        return f"head_dim {head_dim} (64 or 128)"
    if has_qk_norm:
        return "per-head q/k norms are not in the claimed-tile kernel"
    if num_heads % num_kv_heads or group_build(num_heads // num_kv_heads, head_dim) is None:
        return f"{num_heads} / {num_kv_heads} heads: groups above {GROUP_BUILDS[head_dim][-1]} at head_dim {head_dim}"
    if hidden % 8 or o_wpr(hidden) is None:
        return f"hidden {hidden} not cut by o_proj tiles"
    return None


def tile_counts(hidden: int, num_heads: int, num_kv_heads: int, head_dim: int, qkv_cut: int, o_cut: int,
                nc: int, o_segments: int = 1) -> dict[str, int]:
    """The queue of one launch, tile kinds in queue order: q/k/v tiles, attention tiles, o_proj tiles (per head
    segment where o_proj is split)."""
    return {
        "qkv": (num_heads + 2 * num_kv_heads) * head_dim // tile_rows(RPW, qkv_cut),
        "attention": num_kv_heads * nc,
        "o_proj": hidden // tile_rows(RPW, o_cut) * o_segments,
    }


O_SPLIT_SEGMENT_COLS = 1024  # columns of W_o per split o_proj tile at most: one 16-vector chunk per lane per row
O_SPLIT_TILE_ROWS = 32  # rows per split o_proj tile: 8 warps x 4 rows, each warp a whole segment row (<= 64 KB)


def o_segment_groups(num_heads: int, num_kv_heads: int, head_dim: int) -> int:
    """KV groups per o_proj segment (CF_ATTN_O_SPLIT): the most that divide the groups and stay within
    O_SPLIT_SEGMENT_COLS columns (at least one group)."""
    group_cols = num_heads // num_kv_heads * head_dim
    best = 1
    for n in range(1, num_kv_heads + 1):
        if num_kv_heads % n == 0 and n * group_cols <= O_SPLIT_SEGMENT_COLS:
            best = n
    return best


def tile_cut(knobs: Knobs, hidden: int, num_heads: int, num_kv_heads: int, head_dim: int,
             slots: int) -> tuple[int, int, int, int]:
    """(q/k/v warps per row, o_proj warps per row, attention chunks per group, KV groups per o_proj segment) of a
    resolved build on `slots` resident CTAs: the launcher's cut, which the report shows."""
    qw = knobs.qkv_wpr or qkv_wpr(num_heads, num_kv_heads, head_dim, slots)
    ow = nearest_cut(hidden, RPW, O_SPLIT_TILE_ROWS) if knobs.o_split else o_wpr(hidden)
    seg = o_segment_groups(num_heads, num_kv_heads, head_dim) if knobs.o_split else num_kv_heads
    return qw, ow, chunks(num_kv_heads, slots, knobs.max_chunks), seg


def flow_config(*, hidden: int, num_heads: int, num_kv_heads: int, head_dim: int, num_sms: int,
                ctas_per_sm: int = 2) -> dict:
    """The tile cut and build for the report, from the shape, the knobs (Knobs.from_env, resolved for the shape)
    and an estimate of the resident CTAs (the launcher asks the occupancy API; two per SM is what the builds are
    bounded for); the same cut _build makes."""
    knobs = Knobs.from_env().resolved(num_heads, num_kv_heads)
    slots = ctas_per_sm * num_sms
    qw, ow, nc, seg = tile_cut(knobs, hidden, num_heads, num_kv_heads, head_dim, slots)
    segments = num_kv_heads // seg
    return {
        "kernel": VARIANT,
        "ctas": slots,
        "qkv_tile_rows": tile_rows(RPW, qw),
        "attention_tiles": num_kv_heads * nc,
        "o_tile_rows": tile_rows(RPW, ow),
        "o_segments": segments,
        "tiles": sum(tile_counts(hidden, num_heads, num_kv_heads, head_dim, qw, ow, nc, segments).values()),
        "group_build": group_build(num_heads // num_kv_heads, head_dim),
        "token_lanes": knobs.token_lanes,
    }


def smem_bytes(hidden: int, head_dim: int, gm: int, merge_stage: bool = False) -> int:
    """n [H] (T) | q [GM][D] fp32 | k_new, v_new [D] (T) | warp partials o [8][GM][D], m, l fp32 [| the merge stage:
    SINGLE_MERGE_MAX partials of GM x (D + 2) fp32] (the kernel's)."""
    n = -(-hidden * 2 // 16) * 16
    stage = SINGLE_MERGE_MAX * gm * (head_dim + 2) * 4 if merge_stage else 0
    return n + gm * head_dim * 4 + 2 * head_dim * 2 + WARPS * gm * head_dim * 4 + 2 * WARPS * gm * 4 + stage


@dataclass
class FlowPlan:
    kernel: object
    grid: int
    smem: int
    qkv_wpr: int
    o_wpr: int
    chunks: int
    o_seg_groups: int  # KV groups per o_proj segment (1 segment of all groups: not split)
    qkv: torch.Tensor
    part: torch.Tensor
    attn_o: torch.Tensor
    ctrl: torch.Tensor
    kinds: dict[str, int]  # tile_counts: tiles of each kind in queue order (how a timeline splits its stamps)
    timeline: bool = False  # the -DCF_FLOW_TIMELINE build: launch() then needs `stamps`
    o_part: torch.Tensor | None = None  # CF_ATTN_O_SPLIT: fp32 partial of every output row per segment

    @property
    def tiles(self) -> int:
        return sum(self.kinds.values())

    def stamp_elems(self) -> int:
        """int64 elements of a timeline launch's stamps: STAMP_WORDS per tile (queue order), then per CTA, then
        PHASE_MARKS step times per tile (PHASE_STEPS; 0 where a tile has no such step)."""
        return (self.tiles + self.grid) * STAMP_WORDS + self.tiles * PHASE_MARKS


_plans = PlanCache()


def plan(dtype: torch.dtype, hidden: int, num_heads: int, num_kv_heads: int, head_dim: int,
         device: torch.device, timeline: bool = False, knobs: Knobs | None = None) -> FlowPlan:
    knobs = Knobs.from_env() if knobs is None else knobs  # resolved in _build: the key already holds the shape
    return _plans.get((dtype, hidden, num_heads, num_kv_heads, head_dim, device, timeline, knobs),
                      lambda: _build(dtype, hidden, num_heads, num_kv_heads, head_dim, device, timeline,
                                     knobs.resolved(num_heads, num_kv_heads)))


def _build(dtype: torch.dtype, hidden: int, num_heads: int, num_kv_heads: int, head_dim: int,
           device: torch.device, timeline: bool, knobs: Knobs) -> FlowPlan:
    from .build import compile_kernel

    gm = group_build(num_heads // num_kv_heads, head_dim)
    compiled = compile_kernel(SOURCE, KERNEL, template_args=(CTYPES[dtype], head_dim, gm, RPW),
                              defines=knobs.defines(timeline))
    kernel = load_kernel(compiled, device)
    smem = smem_bytes(hidden, head_dim, gm, knobs.merge_stage)
    slots = resident_slots(kernel, device, smem)
    qw, ow, nc, seg = tile_cut(knobs, hidden, num_heads, num_kv_heads, head_dim, slots)
    segments = num_kv_heads // seg
    if head_dim % tile_rows(RPW, qw):
        raise ValueError(f"attention_flow: q/k/v tiles of {tile_rows(RPW, qw)} rows cut across heads of {head_dim}")
    nb = merge_blocks(nc)
    qkv_rows = (num_heads + 2 * num_kv_heads) * head_dim
    kinds = tile_counts(hidden, num_heads, num_kv_heads, head_dim, qw, ow, nc, segments)
    split_words = segments + hidden // tile_rows(RPW, ow) if knobs.o_split else 0
    tiles = sum(kinds.values())
    f32 = dict(dtype=torch.float32, device=device)
    return FlowPlan(
        kernel, min(slots, tiles), smem, qw, ow, nc, seg,
        qkv=torch.empty(qkv_rows, **f32),
        part=torch.empty(num_kv_heads * (nc + nb) * gm * (head_dim + 2), **f32),
        attn_o=torch.empty(num_heads * head_dim, dtype=dtype, device=device),
        ctrl=torch.zeros(CTRL_FIXED + (2 + nb) * num_kv_heads + split_words, dtype=torch.int32, device=device),
        kinds=kinds,
        timeline=timeline,
        o_part=torch.empty(segments * hidden, **f32) if knobs.o_split else None,
    )


def launch(x, norm_weight, eps, unit_offset, wq, wk, wv, bq, bk, bv, cos, sin, cos_kind, cache_position, k_cache,
           v_cache, mask, scale, o_weight, o_bias, add_residual, out, stamps: torch.Tensor | None = None) -> None:
    """One launch (batch 1); attention.attention_decode has checked every tensor. cos/sin: [1, D] contiguous;
    mask: [1, L] bool rows or None. stamps (benchmarks): int64 on x's device, at least plan(..., timeline=True)
    .stamp_elems() elements, selects the -DCF_FLOW_TIMELINE build and receives its stamps (flow.cuh TileClock:
    per tile {claimed, done, SM} ns in queue order, then per CTA {start, end, ns waited}); same outputs."""
    hidden = x.shape[-1]
    _, kvh, max_len, head_dim = k_cache.shape
    num_heads = wq.shape[0] // head_dim
    p = plan(x.dtype, hidden, num_heads, kvh, head_dim, x.device, timeline=stamps is not None)
    if stamps is not None and (stamps.dtype != torch.int64 or stamps.device != x.device
                               or stamps.numel() < p.stamp_elems()):
        raise ValueError(f"attention_flow timeline: stamps must be int64 on {x.device} with >= {p.stamp_elems()} "
                         "elements")
    i32, f32 = ctypes.c_int32, ctypes.c_float
    args = [
        x, norm_weight, wq, wk, wv, bq, bk, bv, cos, sin, cache_position, k_cache, v_cache, mask, o_weight, o_bias,
        out, p.qkv, p.part, p.attn_o, p.ctrl, stamps, f32(eps), f32(scale), i32(hidden), i32(num_heads), i32(kvh),
        i32(max_len), i32(p.chunks), i32(cos_kind), i32(int(unit_offset)), i32(int(add_residual)), i32(p.qkv_wpr),
        i32(p.o_wpr), p.o_part, i32(p.o_seg_groups),
    ]
    p.kernel.launch((p.grid, 1, 1), (THREADS, 1, 1), args, shared_bytes=p.smem)


GQA_DEFINES = Knobs().resolved(2, 1).defines(timeline=False)  # uses_gqa_builds: every build holding 2+ heads
for _dtype in CTYPES.values():
    for _d, _gms in GROUP_BUILDS.items():
        for _gm in _gms:  # the default builds: GM = 1 serves MHA, GM >= 2 grouped heads
            register_check(SOURCE, KERNEL, (_dtype, _d, _gm, RPW), defines=GQA_DEFINES if _gm > 1 else None,
                           label=f"attention claimed tiles {_dtype} D {_d} groups <= {_gm}")
register_check(SOURCE, KERNEL, ("__nv_bfloat16", 64, 8, RPW), defines={"CF_FLOW_TIMELINE": 1, **GQA_DEFINES},
               label="attention claimed tiles bf16 D 64 groups <= 8, timeline")
register_check(SOURCE, KERNEL, ("__half", 128, 1, RPW), defines={"CF_FLOW_TIMELINE": 1},
               label="attention claimed tiles fp16 D 128 groups <= 1, timeline")
for _dtype, _d, _gm in (("__nv_bfloat16", 64, 8), ("__half", 128, 1)):  # the benchmarks' other forms
    register_check(SOURCE, KERNEL, (_dtype, _d, _gm, RPW), defines={"CF_FLOW_LEAN_SYNC": 0, "CF_ATTN_DENSE_MASK": 0},
                   label=f"attention claimed tiles {_dtype} D {_d} groups <= {_gm}, fenced hand-offs (before round 31)")
    register_check(SOURCE, KERNEL, (_dtype, _d, _gm, RPW), defines={"CF_ATTN_O_SPLIT": 1},
                   label=f"attention claimed tiles {_dtype} D {_d} groups <= {_gm}, o_proj split only")
    register_check(SOURCE, KERNEL, (_dtype, _d, _gm, RPW), defines={"CF_ATTN_TOKEN_LANES": 1},
                   label=f"attention claimed tiles {_dtype} D {_d} groups <= {_gm}, token lanes only")
for _dtype, _d, _gm in (("__nv_bfloat16", 64, 8), ("__half", 128, 1), ("__nv_bfloat16", 128, 4)):
    register_check(SOURCE, KERNEL, (_dtype, _d, _gm, RPW),
                   defines={"CF_ATTN_MERGE_STAGE": 1, **(GQA_DEFINES if _gm > 1 else {})},
                   label=f"attention claimed tiles {_dtype} D {_d} groups <= {_gm}, merge stage")
    register_check(SOURCE, KERNEL, (_dtype, _d, _gm, RPW),
                   defines={"CF_ATTN_KV_PREFETCH": 1, **(GQA_DEFINES if _gm > 1 else {})},
                   label=f"attention claimed tiles {_dtype} D {_d} groups <= {_gm}, K/V prefetch")
for _dtype, _d, _gm in (("__nv_bfloat16", 64, 8), ("__half", 64, 2), ("__nv_bfloat16", 128, 4)):
    register_check(SOURCE, KERNEL, (_dtype, _d, _gm, RPW), defines={"CF_ATTN_WALK_PIPELINE": 1, **GQA_DEFINES},
                   label=f"attention claimed tiles {_dtype} D {_d} groups <= {_gm}, pipelined token-lane walk")
