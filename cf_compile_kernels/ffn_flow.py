"""Launcher of the claimed-tile gated-FFN kernel (csrc/gated_ffn_flow.cu), batch 1..8.

The kernel is a queue of tiles (gate/up tiles first, then down tiles) claimed from one counter, so the
split adapts to how fast each SM streams at run time; the host only cuts the tiles (rules measured on the
H100, benchmarks/NOTES-ffn.md round 9: whole gate/up rows per warp, down tiles of DOWN_TILE_ROWS rows,
four rows per warp where the batch bucket allows). The grid is the resident count (a CTA claims until
the queue is empty). Scratch (h rows and the control counters)
is allocated once per (intermediate, device); the kernel zeroes its counters at the end of every launch,
so launches replay in CUDA graphs. Launches that share the scratch must be ordered on one stream.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass

import torch

from .flow import (
    ASSUMED_CTAS_PER_SM,
    CTYPES,
    ELEMS_PER_VEC,
    STAMP_WORDS,
    THREADS,
    WPR_CHOICES,
    cuts,
    nearest_cut,
    resident_slots,
    tile_rows,
)
from .launch import PlanCache, load_kernel
from .registry import register_check

SOURCE = "gated_ffn_flow.cu"
KERNEL = "gated_ffn_flow_kernel"

# Mirrors of the kernel's named constants (csrc/gated_ffn_flow.cu; the shared ones in flow.py).
MAX_BATCH = 8
CTRL_FIXED_WORDS = 32  # ticket, gate/up tiles done, CTAs finished (one 128-B line); then the segment counts
SEGMENT_UNITS = 256  # h columns per segment count (a down warp waits only for the segments its chunk reads)
SEGMENT_STRIDE = 32  # int32 words per segment count: a 128-byte line each
BATCH_BUCKETS = (1, 2, 4, 8)
# Rows per warp: 2 keeps every batch bucket spill-free (NVRTC 13.5: 120-128 registers); 4 spills at
# buckets 4 and 8 (8 and 64 bytes), so it is offered for buckets 1-2 only. Four rows keep 16 vectors per
# lane in flight when a row has few (H = 896: 3.5 per lane): H100 bf16 B=1, 2026-12-07, rpw 2 -> 4 with the
# cut below: Qwen2.5-0.5B 19.7 -> 16.9 us, Llama-3.2-1B ~44.0 -> 41.9, Llama-2-7B ~100.0 -> 99.5.
RPW_MAX_BUCKET = {2: 8, 4: 2}
# Tile cut (same run, rows per warp 2): gate/up tiles of whole rows per warp (wpr 1; Qwen2.5-0.5B 19.7 us vs
# 24.6 at wpr 2: the k-split leaves a lane ~2 vectors of a 896-column row); down tiles of 2 / 4 / 8 rows:
# Llama-2-7B 100.0 / 101.1 / 102.6 us, Llama-3-8B 124.9 / 126.5 / 128.6, Llama-3.2-1B 44.8 / 44.0 / 48.2,
# Qwen2.5-0.5B 24.6 / 23.4 / 25.2. Four rows is the smallest tile of the 4-rows-per-warp build (8 warps on one
# row group), and that build with it was the fastest of the run on every model.
GATE_UP_WPR = 1
DOWN_TILE_ROWS = 4
MAX_SMEM_PER_CTA = 227 * 1024
MAX_SMEM_PER_SM = 228 * 1024  # sm_90: what the CTAs of one SM share (each also reserves 1 KiB)
ACTIVATIONS = {"silu": 0, "gelu_tanh": 1, "gelu": 2}  # ffn_math.cuh Activation
NORM_KINDS = {"weight": 0, "unit_offset": 1}  # ffn_math.cuh NormKind


def ctrl_words(intermediate: int) -> int:
    """The kernel's control block: the fixed words and one count per SEGMENT_UNITS columns of h."""
    return CTRL_FIXED_WORDS + SEGMENT_STRIDE * -(-intermediate // SEGMENT_UNITS)


def batch_bucket(batch: int) -> int:
    """The compiled batch rows for `batch` (1..8): the next of BATCH_BUCKETS."""
    for bucket in BATCH_BUCKETS:
        if batch <= bucket:
            return bucket
    raise ValueError(f"batch {batch} > {MAX_BATCH}")


def template_args(dtype: torch.dtype, rpw: int, batch: int, h_shared: bool = False) -> tuple:
    """(T, RPW, BB[, HS]): without h in shared memory the three-argument name of the measured builds."""
    args = (CTYPES[dtype], rpw, batch_bucket(batch))
    return (*args, "true") if h_shared else args


def default_rpw(batch: int) -> int:
    """Four rows per warp where that build is spill-free (buckets 1-2), else two."""
    return 4 if batch_bucket(batch) <= RPW_MAX_BUCKET[4] else 2


def gate_up_wpr(intermediate: int, rpw: int) -> int | None:
    """GATE_UP_WPR where it cuts the intermediate size, else the next that does; None if none."""
    found = [w for w in cuts(2 * intermediate, rpw, rows_per_unit=2) if w >= GATE_UP_WPR]
    return found[0] if found else None


def down_wpr(hidden: int, rpw: int) -> int | None:
    """Down tiles of DOWN_TILE_ROWS rows where they cut the hidden size, else the nearest cut; None if none."""
    return nearest_cut(hidden, rpw, DOWN_TILE_ROWS)


def tile_counts(hidden: int, intermediate: int, rpw: int, gu_wpr: int, down_wpr: int) -> dict[str, int]:
    """The queue of one launch for a cut: gate/up tiles and their units, down tiles and their rows."""
    units, down_rows = tile_rows(rpw, gu_wpr) // 2, tile_rows(rpw, down_wpr)
    return {
        "gate_up_tiles": intermediate // units,
        "gate_up_units_per_tile": units,
        "down_tiles": hidden // down_rows,
        "down_rows_per_tile": down_rows,
    }


def smem_bytes(hidden: int, batch: int, elem: int = 2, h_shared: bool = False, intermediate: int = 0) -> int:
    """Dynamic shared memory: the normalised rows n [bucket][H], or with h_shared the larger of n and h
    [bucket][I] (h is copied into the same region once the CTA's gate/up tiles are done)."""
    return batch_bucket(batch) * (max(hidden, intermediate) if h_shared else hidden) * elem


# h in shared memory (the HS build) by default from batch 2 where a CTA runs more than this many down tiles on
# average (hidden / down rows per tile over the resident CTAs), so the one copy of h is reused. H100 bf16 B=2,
# 2026-12-07, HS vs plain (us): Llama-2-7B 105.0 vs 109.9 and Llama-3-8B 133.4 vs 136.6 (3.9 down tiles per CTA),
# Llama-3.2-1B 47.1 vs 45.7 (1.9), Qwen2.5-0.5B 20.8 vs 20.1 (0.85).
H_SHARED_MIN_DOWN_TILES_PER_CTA = 2


def default_h_shared(hidden: int, intermediate: int, batch: int, rpw: int, down_cut: int, num_sms: int,
                     elem: int = 2) -> bool:
    """Whether the HS build runs by default: batch >= 2, down tiles per resident CTA above the threshold, and
    h [bucket][I] fits two CTAs per SM."""
    if batch < 2:
        return False
    down_tiles = hidden // tile_rows(rpw, down_cut)
    fits = smem_bytes(hidden, batch, elem, True, intermediate) * ASSUMED_CTAS_PER_SM <= MAX_SMEM_PER_SM
    return fits and down_tiles > H_SHARED_MIN_DOWN_TILES_PER_CTA * ASSUMED_CTAS_PER_SM * num_sms


@functools.cache  # asked on every launch: the answer is per shape
def flow_unsupported_reason(*, hidden: int, intermediate: int, batch: int, rpw: int | None = None) -> str | None:
    """None if the claimed-tile kernel computes this block (dtype/activation/norm are checked by ffn.py)."""
    if not 1 <= batch <= MAX_BATCH:
        return f"batch {batch} outside 1..{MAX_BATCH} (the cluster kernel takes 9..16)"
    rpw = rpw or default_rpw(batch)
    if batch_bucket(batch) > RPW_MAX_BUCKET.get(rpw, 0):
        return f"{rpw} rows per warp with batch bucket {batch_bucket(batch)} (spills)"
    if hidden % ELEMS_PER_VEC or intermediate % ELEMS_PER_VEC:
        return f"hidden {hidden} / intermediate {intermediate} not multiples of {ELEMS_PER_VEC}"
    if gate_up_wpr(intermediate, rpw) is None:
        units = tile_rows(rpw, WPR_CHOICES[-1]) // 2, tile_rows(rpw, WPR_CHOICES[0]) // 2
        return f"intermediate {intermediate} not cut by gate/up tiles of {units[0]}..{units[1]} units"
    if down_wpr(hidden, rpw) is None:
        return f"hidden {hidden} not cut by down tiles of {tile_rows(rpw, 8)}..{tile_rows(rpw, 1)} rows"
    if smem_bytes(hidden, batch) > MAX_SMEM_PER_CTA:
        return f"normalised rows need {smem_bytes(hidden, batch)} B of shared memory"
    return None


def flow_config(*, hidden: int, intermediate: int, batch: int, dtype: torch.dtype, num_sms: int) -> dict:
    """The tile cut for the report: every number derived from the shape (the grid from num_sms)."""
    rpw = default_rpw(batch)
    counts = tile_counts(hidden, intermediate, rpw, gate_up_wpr(intermediate, rpw), down_wpr(hidden, rpw))
    elem = torch.tensor([], dtype=dtype).element_size()
    h_shared = default_h_shared(hidden, intermediate, batch, rpw, down_wpr(hidden, rpw), num_sms, elem)
    return {
        "kernel": "claimed tiles",
        "ctas": min(ASSUMED_CTAS_PER_SM * num_sms, counts["gate_up_tiles"] + counts["down_tiles"]),
        "threads": THREADS,
        "rows_per_warp": rpw,
        "batch_rows": batch_bucket(batch),
        **counts,
        "h_shared": h_shared,
        "smem_bytes": smem_bytes(hidden, batch, elem, h_shared, intermediate),
        "h_scratch_bytes": MAX_BATCH * intermediate * elem,
        "weight_bytes": 3 * intermediate * hidden * elem,
    }


@dataclass(frozen=True)
class FlowTuning:
    """Knobs the benchmark may vary; None fields take the derived defaults."""

    rpw: int | None = None  # None: default_rpw(batch)
    gu_wpr: int | None = None
    down_wpr: int | None = None
    ctas_per_sm: int | None = None  # None: what the occupancy API allows
    timeline: bool = False  # the -DCF_FLOW_TIMELINE build: launch() then needs `stamps`
    h_shared: bool | None = None  # the HS build (h copied into shared memory once per CTA); None: default_h_shared
    streamed: bool = False  # the -DCF_FFN_STREAMED build: down warps wait per h segment (opt-in, NOTES round 10)
    lean_sync: bool = False  # -DCF_FLOW_LEAN_SYNC: release/acquire hand-offs (attention's default since round 31)


@dataclass
class FlowPlan:
    kernel: object  # launch.LoadedKernel
    grid: int
    smem: int
    rpw: int
    gu_wpr: int
    down_wpr: int
    h_rows: torch.Tensor
    ctrl: torch.Tensor
    tiles: int  # gate/up + down tiles of one launch
    h_shared: bool = False  # the HS build runs

    def stamp_elems(self) -> int:
        """int64 elements of a timeline launch's stamps: STAMP_WORDS per tile, then per CTA."""
        return (self.tiles + self.grid) * STAMP_WORDS

    def info(self, hidden: int, intermediate: int) -> dict:
        return {
            "kernel_kind": "flow",
            "grid": (self.grid, 1, 1),
            "cluster": (1, 1, 1),
            "block": (THREADS, 1, 1),
            "smem": self.smem,
            "rows_per_warp": self.rpw,
            "h_shared": self.h_shared,
            **tile_counts(hidden, intermediate, self.rpw, self.gu_wpr, self.down_wpr),
            "registers": self.kernel.compiled.registers,
            "local_bytes": self.kernel.compiled.local_bytes,
            "template": self.kernel.compiled.name_expression,
        }


_plans = PlanCache()
_scratch: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _get_scratch(intermediate: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    key = (intermediate, device)
    buffers = _scratch.get(key)
    if buffers is None:  # h as raw 16-bit words (fp16 and bf16 share it)
        h_rows = torch.empty(MAX_BATCH * intermediate, dtype=torch.int16, device=device)
        ctrl = torch.zeros(ctrl_words(intermediate), dtype=torch.int32, device=device)
        buffers = _scratch[key] = (h_rows, ctrl)
    return buffers


def plan(
    hidden: int, intermediate: int, dtype: torch.dtype, batch: int, device: torch.device,
    tuning: FlowTuning = FlowTuning(),
) -> FlowPlan:
    """The launch of this shape on `device` (built once: compile, load, occupancy, tile cut, scratch)."""
    bucket = batch_bucket(batch)
    return _plans.get(
        (hidden, intermediate, dtype, bucket, device, tuning),
        lambda: _build_plan(hidden, intermediate, dtype, batch, device, tuning),
    )


def _build_plan(
    hidden: int, intermediate: int, dtype: torch.dtype, batch: int, device: torch.device, tuning: FlowTuning
) -> FlowPlan:
    from .build import compile_kernel

    rpw = tuning.rpw or default_rpw(batch)
    defines = {"CF_FLOW_TIMELINE": 1} if tuning.timeline else {}
    if tuning.streamed:
        defines["CF_FFN_STREAMED"] = 1
    if tuning.lean_sync:
        defines["CF_FLOW_LEAN_SYNC"] = 1
    gu_cut = tuning.gu_wpr or gate_up_wpr(intermediate, rpw)
    down_cut = tuning.down_wpr or down_wpr(hidden, rpw)
    if gu_cut is None or down_cut is None:
        raise ValueError(f"gated_ffn_flow: no tile cut for hidden {hidden} / intermediate {intermediate}")
    elem = torch.tensor([], dtype=dtype).element_size()
    h_shared = tuning.h_shared
    if h_shared is None:
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        h_shared = default_h_shared(hidden, intermediate, batch, rpw, down_cut, sms, elem)
    compiled = compile_kernel(SOURCE, KERNEL, template_args=template_args(dtype, rpw, batch, h_shared),
                              defines=defines)
    kernel = load_kernel(compiled, device)
    smem = smem_bytes(hidden, batch, elem, h_shared, intermediate)
    if smem > MAX_SMEM_PER_CTA:
        raise ValueError(f"gated_ffn_flow: {smem} B of shared memory per CTA (h_shared at batch {batch}, I {intermediate})")
    slots = resident_slots(kernel, device, smem, tuning.ctas_per_sm)
    counts = tile_counts(hidden, intermediate, rpw, gu_cut, down_cut)
    units, down_rows = counts["gate_up_units_per_tile"], counts["down_rows_per_tile"]
    if intermediate % units or hidden % down_rows:
        raise ValueError(f"gated_ffn_flow: tiles of {units} units / {down_rows} rows do not cut {intermediate} / {hidden}")
    tiles = counts["gate_up_tiles"] + counts["down_tiles"]
    h_rows, ctrl = _get_scratch(intermediate, device)
    return FlowPlan(kernel, min(slots, tiles), smem, rpw, gu_cut, down_cut, h_rows, ctrl, tiles, h_shared)


def launch(
    x: torch.Tensor, norm_weight: torch.Tensor, eps: float, norm_code: int, w_gate: torch.Tensor, up_ptr: int,
    down_weight: torch.Tensor, activation_code: int, add_residual: bool, out: torch.Tensor,
    tuning: FlowTuning = FlowTuning(),
    stamps: torch.Tensor | None = None,
) -> None:
    """One launch; the caller (ffn.gated_ffn) has checked every tensor and the shape. With tuning.timeline,
    `stamps` (int64 on x's device, at least plan(...).stamp_elems() elements) receives the timeline."""
    batch, _, hidden = x.shape
    intermediate = down_weight.shape[1]
    p = plan(hidden, intermediate, x.dtype, batch, x.device, tuning)
    stamps_ptr = 0
    if tuning.timeline:
        need = p.stamp_elems()
        if stamps is None or stamps.dtype != torch.int64 or stamps.device != x.device or stamps.numel() < need:
            raise ValueError(f"the flow timeline needs `stamps`: int64, {need} elements on {x.device}")
        stamps_ptr = stamps.data_ptr()
    args = [
        x, norm_weight, w_gate, ctypes.c_void_p(up_ptr), down_weight, out, p.h_rows, p.ctrl,
        ctypes.c_int32(hidden), ctypes.c_int32(intermediate), ctypes.c_int32(batch), ctypes.c_float(eps),
        ctypes.c_int32(norm_code), ctypes.c_int32(activation_code), ctypes.c_int32(1 if add_residual else 0),
        ctypes.c_int32(p.gu_wpr), ctypes.c_int32(p.down_wpr), ctypes.c_void_p(stamps_ptr),
    ]
    p.kernel.launch((p.grid, 1, 1), (THREADS, 1, 1), args, shared_bytes=p.smem)


for _dtype in CTYPES:
    for _rpw, _max_bucket in RPW_MAX_BUCKET.items():
        for _bucket in BATCH_BUCKETS:
            if _bucket <= _max_bucket:
                register_check(
                    SOURCE, KERNEL, (CTYPES[_dtype], _rpw, _bucket),
                    label=f"gated FFN claimed tiles {_dtype} rpw {_rpw} batch <= {_bucket}",
                )
for _dtype in CTYPES:
    for _rpw, _batch in ((2, 2), (2, 4), (4, 2)):
        register_check(SOURCE, KERNEL, template_args(_dtype, _rpw, _batch, True),
                       label=f"gated FFN claimed tiles {_dtype} rpw {_rpw} batch <= {_batch}, h in shared memory")
register_check(SOURCE, KERNEL, ("__nv_bfloat16", 4, 1), defines={"CF_FLOW_TIMELINE": 1},
               label="gated FFN claimed tiles bf16 rpw 4 batch 1, timeline")
for _args in (("__nv_bfloat16", 4, 1), ("__half", 4, 2), ("__nv_bfloat16", 2, 4, "true")):
    register_check(SOURCE, KERNEL, _args, defines={"CF_FLOW_LEAN_SYNC": 1},
                   label=f"gated FFN claimed tiles {' '.join(map(str, _args))}, lean hand-offs")
register_check(SOURCE, KERNEL, ("__nv_bfloat16", 4, 1), defines={"CF_FLOW_LEAN_SYNC": 1, "CF_FFN_STREAMED": 1},
               label="gated FFN claimed tiles bf16 rpw 4 batch 1, lean hand-offs, streamed")
