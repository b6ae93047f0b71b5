"""Host side of csrc/flow.cuh, shared by the claimed-tile launchers (ffn_flow.py, attention_flow.py): the
kernel's named constants, the tile cuts (rows per warp x warps per row group), and the resident CTA count the
grid is sized to."""

from __future__ import annotations

import torch

# Mirrors of csrc/flow.cuh.
WARPS = 8  # kWarps
THREADS = WARPS * 32  # kThreads
ELEMS_PER_VEC = 8  # kElems: 16-byte vectors of fp16/bf16
VECS_IN_FLIGHT = 16  # kVecsInFlight: per lane per chunk, over the warp's rows
ASSUMED_CTAS_PER_SM = 2  # kMinBlocksPerSm: what the report assumes without a device
STAMP_WORDS = 3  # kStampWords: {claimed ns, done ns, SM} per tile, {start ns, end ns, wait ns} per CTA
PHASE_MARKS = 5  # kPhaseMarks: step times per tile a timeline build may record after the tile and CTA records
WPR_CHOICES = (1, 2, 4, 8)  # warps per row group: tile rows = rpw * WARPS / wpr
CTYPES = {torch.float16: "__half", torch.bfloat16: "__nv_bfloat16"}


def tile_rows(rpw: int, wpr: int) -> int:
    """Weight rows of one tile: rpw rows per warp, WARPS / wpr row groups."""
    return rpw * WARPS // wpr


def cuts(rows: int, rpw: int, rows_per_unit: int = 1) -> list[int]:
    """Warps per row group whose tiles cut `rows` into whole units (rows_per_unit rows each), largest tiles first."""
    return [w for w in WPR_CHOICES if tile_rows(rpw, w) % rows_per_unit == 0 and rows % tile_rows(rpw, w) == 0]


def nearest_cut(rows: int, rpw: int, target_rows: int) -> int | None:
    """The cut of `rows` whose tiles are nearest target_rows rows (larger tiles on a tie); None if none cuts."""
    found = cuts(rows, rpw)
    return min(found, key=lambda w: abs(tile_rows(rpw, w) - target_rows)) if found else None


def resident_slots(kernel, device: torch.device, smem: int, cap_per_sm: int | None = None) -> int:
    """CTAs of THREADS threads and `smem` bytes resident at once on `device` (the occupancy API's count per SM,
    capped at cap_per_sm, times the SMs): the grid of a claimed-tile launch."""
    with torch.cuda.device(device):
        per_sm = kernel.max_active_blocks(THREADS, smem) or 1
    if cap_per_sm is not None:
        per_sm = max(1, min(per_sm, cap_per_sm))
    return per_sm * torch.cuda.get_device_properties(device).multi_processor_count
