"""Launcher of the fused gated-FFN decode kernel (csrc/gated_ffn.cu): shapes -> config -> one launch.

The work split is derived here from the shape and the GPU (see the kernel's header comment): cluster
size N from the hidden size, one cluster per N SMs for as many clusters as can be resident at once (one
wave: the kernel streams weights and must not leave SMs idle or run a second, partial wave), batch
tiles of 8 for the MMA's N dimension, and the load path (staged cp.async ring when it fits in shared
memory, else direct loads into MMA fragments). Scratch buffers (fp32 partials, arrival counters) are allocated
once per (hidden, clusters, device) and reused: the kernel resets its counters, so launches replay in
CUDA graphs. Launches that share the scratch must be ordered on one stream, as decoder layers are.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass

import torch

from . import env, ffn_flow
from .launch import PlanCache, check_tensor
from .registry import register_check

SOURCE = "gated_ffn.cu"
KERNEL = "gated_ffn_kernel"

# Mirrors of the kernel's named constants (csrc/gated_ffn.cu); test_ffn_build.py checks the layout.
WARP_SIZE = 32
MMA_ROWS = 16  # weight rows per MMA tile
MMA_COLS = 8  # batch rows per MMA (N of m16n8k16)
UNIT_ROWS = MMA_ROWS // 2  # 8 gate + 8 up rows per tile
STEP_K = 32  # k columns per warp step: 4 lanes x 16-byte loads
MAX_BATCH = 2 * MMA_COLS
BANK_BYTES = 128
ROW_SKEW_DIRECT = BANK_BYTES // 2  # direct path: 64 B per row per access, two rows per wavefront
ROW_SKEW_STAGED = 16  # staged path: ldmatrix rows 16 B apart modulo 128
CHUNK_K = 2 * STEP_K  # staged path: 64 columns = one 128-byte line per row per ring slot
CHUNK_BYTES = MMA_ROWS * CHUNK_K * 2
SMEM_ALIGN = 16

# Tuning (measured, benchmarks/NOTES-ffn.md): 16 warps = 512 threads, one CTA per SM. Staged path
# (cp.async full-line copies into a per-warp ring + ldmatrix) when its ring fits in shared memory,
# preferring more slots; else the direct path (16-byte loads straight into MMA fragments, DEPTH deep).
WARPS = 16
DEPTH = 4
STAGED_CANDIDATES = ((16, 4), (16, 3))  # (warps, ring slots), in order of preference
# Gate/up cut inside a cluster (GateUpMode in the kernel): split-K (+ cluster-summed RMS statistics),
# split-K with each CTA's own statistics, or whole units per CTA (no DSMEM reduce). Default: measured best.
MODES = {"split": 0, "split_local_stats": 1, "whole": 2}
DEFAULT_MODE = MODES["split"]  # the mode every shape supports (the shape-derived choice: default_mode)
# Optional prologue/epilogue changes (kernel enum Flags, a bit set; each keeps the output bits): x and the
# norm weight loaded before the ring's first weight copies; last-arrival fix-ups deferred to the end of a
# warp's down tiles and summed together. Default: measured best (benchmarks/NOTES-ffn.md, run 5). Bit 4 was
# dyn_down (down tiles claimed from per-slice counters, stealing from late clusters): slower on every row
# measured (run 6), removed; the bit is left unused so that recorded results keep one meaning per value.
FLAGS = {"early_x": 1, "defer_fix_up": 2}
# Both on (H100, 2026-11-23, run 5: Llama-2-7B fp16 b16 151.5 -> 137.4 us, b1 121.0 -> 118.4 in split mode;
# bitwise the plain kernel's output, tests/gpu/test_kernels_ffn.py).
DEFAULT_FLAGS = FLAGS["early_x"] | FLAGS["defer_fix_up"]
# Per-phase timeline (-DCF_FFN_PHASES=1): {globaltimer ns, clock64} per CTA per phase, kernel enum Phase.
PHASES = ("start", "stats", "norm", "gate_up", "fold", "h", "gather", "down", "end")
STAMP_WORDS = 2
CLUSTER_PREFERENCE = (4, 2, 8, 1)  # 4: even SM use and short partials; the others when 4 does not divide
MAX_SMEM_PER_CTA = 227 * 1024  # opt-in dynamic shared memory of one sm_90 CTA
REFERENCE_SMS = 132  # H100 SXM: used where no device is at hand (unsupported_reason, check registry)

MAX_HIDDEN = 8192
MAX_INTERMEDIATE = 28672
ACTIVATIONS = {"silu": 0, "gelu_tanh": 1, "gelu": 2}
NORM_KINDS = {"weight": 0, "unit_offset": 1}
CTYPES = {torch.float16: "__half", torch.bfloat16: "__nv_bfloat16"}


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def padded_row_elems(length: int, skew: int) -> int:
    """Elements per smem row of `length` 16-bit values: whole 128-byte lines plus `skew` bytes, so the
    rows one fragment load touches fall on different banks."""
    return (_round_up(length * 2, BANK_BYTES) + skew) // 2


def smem_bytes(
    hidden: int,
    intermediate: int,
    cluster: int,
    clusters: int,
    batch_tiles: int,
    warps: int = WARPS,
    stages: int = 0,
    mode: int = DEFAULT_MODE,
) -> int:
    """Dynamic shared memory of one CTA; the same arithmetic as SmemLayout in gated_ffn.cu."""
    bp = batch_tiles * MMA_COLS
    whole = mode == MODES["whole"]
    skew = ROW_SKEW_STAGED if stages else ROW_SKEW_DIRECT
    k_item = CHUNK_K if stages else STEP_K
    cluster_units_max = -(-(intermediate // UNIT_ROWS) // clusters)
    k_range = hidden if whole else hidden // cluster
    units_max = -(-cluster_units_max // cluster) if whole else cluster_units_max
    n_stride = padded_row_elems(_round_up(k_range, k_item), skew)
    h_stride = padded_row_elems(_round_up(cluster_units_max * UNIT_ROWS, k_item), skew)
    region_a = bp * max(n_stride, h_stride) * 2
    part_offset = _round_up(region_a, SMEM_ALIGN)
    head_offset = part_offset + units_max * MMA_ROWS * bp * 4
    misc_offset = head_offset + warps * MMA_ROWS * bp * 4
    ring_offset = _round_up(misc_offset + (3 * MAX_BATCH + warps + warps * MAX_BATCH) * 4, BANK_BYTES)
    return ring_offset + warps * stages * CHUNK_BYTES


def choose_cluster_size(hidden: int) -> int | None:
    """Largest-preferred N whose CTAs get whole 32-column steps of the hidden range; None if none does."""
    if hidden % STEP_K:
        return None
    for n in CLUSTER_PREFERENCE:
        if (hidden // STEP_K) % n == 0:
            return n
    return None


def batch_tiles(batch: int) -> int:
    return 1 if batch <= MMA_COLS else 2


@functools.cache  # every launch asks: the answer (and the plan behind it) is per shape
def ffn_unsupported_reason(
    *,
    hidden: int,
    intermediate: int,
    batch: int,
    dtype: torch.dtype,
    activation: str,
    norm_kind: str,
    fused_gate_up: bool,
    has_bias: bool,
) -> str | None:
    """None if the fused kernel computes this block, else a one-line reason (the backend falls back)."""
    del fused_gate_up  # both layouts are supported: the up pointer is offset into the fused weight
    if dtype not in CTYPES:
        return f"dtype {dtype} (the kernel takes float16 or bfloat16)"
    if has_bias:
        return "gate/up/down biases are not fused"
    if activation not in ACTIVATIONS:
        return f"activation {activation!r} (supported: {', '.join(ACTIVATIONS)})"
    if norm_kind not in NORM_KINDS:
        return f"norm kind {norm_kind!r} (supported: {', '.join(NORM_KINDS)})"
    if not 1 <= batch <= MAX_BATCH:
        return f"batch {batch} outside 1..{MAX_BATCH}"
    if not 0 < hidden <= MAX_HIDDEN or not 0 < intermediate <= MAX_INTERMEDIATE:
        return f"hidden {hidden} / intermediate {intermediate} beyond {MAX_HIDDEN} / {MAX_INTERMEDIATE}"
    cluster = choose_cluster_size(hidden)
    if cluster is None:
        return f"hidden {hidden} is not a multiple of {STEP_K}"
    if intermediate % UNIT_ROWS:
        return f"intermediate {intermediate} is not a multiple of {UNIT_ROWS}"
    smem = smem_bytes(
        hidden, intermediate, cluster, REFERENCE_SMS // cluster, batch_tiles(batch)
    )  # direct path
    if smem > MAX_SMEM_PER_CTA:
        return f"needs {smem} B of shared memory per CTA (> {MAX_SMEM_PER_CTA})"
    return None


def ffn_config(
    *,
    hidden: int,
    intermediate: int,
    batch: int,
    dtype: torch.dtype,
    num_sms: int,
    max_active_clusters: int | None = None,
    kernel: str | None = None,
) -> dict:
    """The work split for the report (and for the launcher): every number derived from the shape and SMs.

    max_active_clusters: what the occupancy API says fits at once (default: every N SMs). kernel: "cluster"
    or "flow" (default: kernel_kind's choice for this batch)."""
    if kernel_kind(hidden, intermediate, batch, Tuning(kernel=kernel)) == "flow":
        return ffn_flow.flow_config(hidden=hidden, intermediate=intermediate, batch=batch, dtype=dtype,
                                    num_sms=num_sms)
    cluster = choose_cluster_size(hidden)
    if cluster is None:
        raise ValueError(f"hidden {hidden} is not a multiple of {STEP_K}")
    clusters = num_sms // cluster
    if max_active_clusters is not None:
        clusters = max(1, min(clusters, max_active_clusters))
    units = intermediate // UNIT_ROWS
    bt = batch_tiles(batch)
    warps, stages = choose_path(hidden, intermediate, cluster, clusters, bt)
    elem = torch.tensor([], dtype=dtype).element_size()
    return {
        "kernel": "cluster",
        "cluster_size": cluster,
        "clusters": clusters,
        "ctas": clusters * cluster,
        "warps": warps,
        "threads": warps * WARP_SIZE,
        "path": "staged" if stages else "direct",
        "ring_slots": stages,
        "depth": DEPTH,
        "batch_tiles": bt,
        "k_range": hidden // cluster,  # hidden columns of gate/up rows per CTA
        "units": units,
        "units_per_cluster": (units // clusters, -(-units // clusters)),  # (min, max)
        "down_tiles_per_cta": hidden // cluster // MMA_ROWS,
        "smem_bytes": smem_bytes(hidden, intermediate, cluster, clusters, bt, warps, stages),
        "partials_bytes": clusters * hidden * MAX_BATCH * 4,
        "weight_bytes": 3 * intermediate * hidden * elem,
    }


def template_args(
    dtype: torch.dtype,
    cluster: int,
    bt: int,
    warps: int = WARPS,
    depth: int = DEPTH,
    stages: int = 0,
    mode: int = DEFAULT_MODE,
    flags: int = DEFAULT_FLAGS,
) -> tuple[str | int, ...]:
    return (CTYPES[dtype], cluster, bt, warps, depth, stages, mode, flags)


def parse_flags(spec: str) -> int:
    """'early_x+defer_fix_up' (names of FLAGS joined by '+'), or an int bit set -> the FLAGS bit set."""
    if spec.isdigit():
        return int(spec)
    value = 0
    for name in filter(None, spec.split("+")):
        if name not in FLAGS:
            raise ValueError(f"unknown gated-FFN flag {name!r} (known: {', '.join(FLAGS)})")
        value |= FLAGS[name]
    return value


# default_mode decides whole vs split for this fraction of the SM-count cluster estimate: with fewer
# co-resident clusters each CTA holds more units, and whole mode must still fit then.
MODE_CLUSTER_MARGIN = 0.75


def default_mode(hidden: int, intermediate: int, cluster: int, clusters: int, bt: int) -> int:
    """Whole gate/up units per CTA for batch tile 1 (B <= 8), split-K for tile 2, measured on the H100
    (2026-11-23, run 5, with DEFAULT_FLAGS): b1 Llama-2-7B 116.6 vs 118.4 us, Qwen2.5-0.5B 20.9 vs 24.1
    (no DSMEM reduce of partials, statistics off the critical path); b16 Llama-2-7B 145.3 vs 137.4 (whole's
    ring no longer fits, so it streams on the direct path). Whole only where its direct path fits."""
    whole = MODES["whole"]
    if bt == 1 and smem_bytes(hidden, intermediate, cluster, clusters, bt, WARPS, 0, whole) <= MAX_SMEM_PER_CTA:
        return whole
    return MODES["split"]


def choose_path(
    hidden: int, intermediate: int, cluster: int, clusters: int, bt: int, mode: int = DEFAULT_MODE
) -> tuple[int, int]:
    """(warps, ring slots) of the first staged candidate that fits in shared memory, else the direct path
    (WARPS, 0)."""
    for warps, stages in STAGED_CANDIDATES:
        if smem_bytes(hidden, intermediate, cluster, clusters, bt, warps, stages, mode) <= MAX_SMEM_PER_CTA:
            return warps, stages
    return WARPS, 0


# Representative instantiations for `python -m cf_compile_kernels check` (Llama-class hidden sizes give
# N = 4; batch tiles 1 and 2 cover batch 1..16; both load paths; every gate/up mode; the timeline build).
for _dtype in CTYPES:
    for _bt, _label in ((1, "batch 1-8"), (2, "batch 9-16")):
        for _warps, _stages in (STAGED_CANDIDATES[0], (WARPS, 0)):
            for _mode_name, _mode in MODES.items():
                register_check(
                    SOURCE,
                    KERNEL,
                    template_args(_dtype, 4, _bt, _warps, DEPTH, _stages, _mode),
                    label=f"gated FFN {_dtype} {_label} {'staged' if _stages else 'direct'} {_mode_name}",
                )
register_check(
    SOURCE,
    KERNEL,
    template_args(torch.float16, 4, 1, STAGED_CANDIDATES[0][0], DEPTH, STAGED_CANDIDATES[0][1]),
    defines={"CF_FFN_PHASES": 1},
    label="gated FFN fp16 batch 1-8 staged split, phase timeline",
)
# Every flag set with every mode (both batch tiles, both paths): fp16 only, the flags do not touch T. (The
# default flags are in the loop above.)
_ALL_FLAGS = sum(FLAGS.values())
for _bt in (1, 2):
    for _warps, _stages in (STAGED_CANDIDATES[0], (WARPS, 0)):
        for _mode_name, _mode in MODES.items():
            register_check(
                SOURCE,
                KERNEL,
                template_args(torch.float16, 4, _bt, _warps, DEPTH, _stages, _mode, _ALL_FLAGS),
                label=f"gated FFN fp16 bt{_bt} {'staged' if _stages else 'direct'} {_mode_name} every flag",
            )


# --------------------------------------------------------------------------- run time


@dataclass
class _Plan:
    """Everything a launch needs that depends only on (shape, dtype, batch tile, device)."""

    kernel: object  # launch.LoadedKernel
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    cluster: tuple[int, int, int]
    smem: int
    partials: torch.Tensor
    counters: torch.Tensor
    clusters: int


_plans = PlanCache()
_scratch: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _get_scratch(hidden: int, clusters: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    key = (hidden, clusters, device)
    buffers = _scratch.get(key)
    if buffers is None:
        partials = torch.empty(clusters * hidden * MAX_BATCH, dtype=torch.float32, device=device)
        counters = torch.zeros(hidden // MMA_ROWS, dtype=torch.int32, device=device)
        buffers = _scratch[key] = (partials, counters)
    return buffers


@dataclass(frozen=True)
class Tuning:
    """Kernel knobs the benchmark may vary; None fields take the derived defaults."""

    cluster: int | None = None
    warps: int | None = None  # None: from choose_path
    depth: int = DEPTH
    stages: int | None = None  # None: from choose_path; 0: direct path
    l2_hint: int = 0  # 0, 128 or 256: L2 sector promotion on the weight loads (-DCF_FFN_L2_HINT)
    mode: int | None = None  # MODES: how gate/up is cut inside the cluster; None: default_mode(shape)
    phases: bool = False  # build with the per-phase timeline (gated_ffn then needs `stamps`)
    flags: int | None = None  # FLAGS bit set: early x loads, deferred fix-ups; None: DEFAULT_FLAGS
    kernel: str | None = None  # KERNEL_KINDS: "cluster" (this module's kernel) or "flow"; None: default_kernel
    rpw: int | None = None  # flow kernel: weight rows per warp; None: ffn_flow.default_rpw(batch)
    gu_wpr: int | None = None  # flow kernel: warps per row group of the gate/up tiles; None: from the shape
    down_wpr: int | None = None  # flow kernel: the same for the down tiles
    ctas_per_sm: int | None = None  # flow kernel: cap on resident CTAs per SM; None: the occupancy API's
    h_shared: bool | None = None  # flow kernel: h in shared memory for the down tiles; None: the shape's default
    streamed: bool = False  # flow kernel: down warps wait per h segment, not once for all of h (opt-in)
    lean_sync: bool = False  # flow kernel: release/acquire hand-offs, no per-thread fences (opt-in until measured)

    def flow(self) -> ffn_flow.FlowTuning:
        """The claimed-tile kernel's knobs (phases: its timeline build); one object per tuning (every launch asks)."""
        return _flow_tuning(self)


@functools.cache
def _flow_tuning(tuning: Tuning) -> ffn_flow.FlowTuning:
    return ffn_flow.FlowTuning(tuning.rpw, tuning.gu_wpr, tuning.down_wpr, tuning.ctas_per_sm, tuning.phases,
                               None if tuning.h_shared is None else bool(tuning.h_shared), bool(tuning.streamed),
                               bool(tuning.lean_sync))


def _plan(
    hidden: int,
    intermediate: int,
    dtype: torch.dtype,
    bt: int,
    device: torch.device,
    tuning: Tuning = Tuning(),
) -> _Plan:
    return _plans.get(
        (hidden, intermediate, dtype, bt, device, tuning),
        lambda: _build_plan(hidden, intermediate, dtype, bt, device, tuning),
    )


def _build_plan(
    hidden: int, intermediate: int, dtype: torch.dtype, bt: int, device: torch.device, tuning: Tuning
) -> _Plan:
    from .build import compile_kernel
    from .launch import load_kernel

    num_sms = torch.cuda.get_device_properties(device).multi_processor_count
    cluster = tuning.cluster or choose_cluster_size(hidden)
    if cluster is None or (hidden // STEP_K) % cluster:
        raise ValueError(f"gated_ffn: cluster size {cluster} does not divide hidden {hidden} / {STEP_K}")
    defines = {"CF_FFN_L2_HINT": tuning.l2_hint} if tuning.l2_hint else {}
    if tuning.phases:
        defines["CF_FFN_PHASES"] = 1
    flags = DEFAULT_FLAGS if tuning.flags is None else tuning.flags
    mode = tuning.mode
    if mode is None:   # sized for fewer clusters than the estimate: the occupancy query may lower it
        margin_clusters = max(1, int(num_sms // cluster * MODE_CLUSTER_MARGIN))
        mode = default_mode(hidden, intermediate, cluster, margin_clusters, bt)
    # The active-cluster count (occupancy API) needs a loaded kernel, and the shared memory needs the
    # cluster count: estimate with every SM, then settle on the actual count.
    clusters = max(1, num_sms // cluster)
    auto_path = choose_path(hidden, intermediate, cluster, clusters, bt, mode)
    warps = tuning.warps or auto_path[0]
    stages = auto_path[1] if tuning.stages is None else tuning.stages
    for _ in range(2):
        compiled = compile_kernel(
            SOURCE,
            KERNEL,
            defines=defines,
            template_args=template_args(
                dtype, cluster, bt, warps, tuning.depth, stages, mode, flags
            ),
        )
        kernel = load_kernel(compiled, device)
        threads = warps * WARP_SIZE
        with torch.cuda.device(device):
            active = kernel.max_active_clusters(cluster, threads, MAX_SMEM_PER_CTA)
        if active is not None:
            clusters = max(1, min(clusters, active))
        smem = smem_bytes(hidden, intermediate, cluster, clusters, bt, warps, stages, mode)
        if smem <= MAX_SMEM_PER_CTA or tuning.stages is not None or stages == 0:
            break
        warps, stages = choose_path(
            hidden, intermediate, cluster, clusters, bt, mode
        )  # fewer clusters: re-pick
    if smem > MAX_SMEM_PER_CTA:
        raise ValueError(f"gated_ffn: {smem} B of shared memory per CTA with {clusters} clusters")
    partials, counters = _get_scratch(hidden, clusters, device)
    return _Plan(
        kernel=kernel,
        grid=(clusters * cluster, 1, 1),
        block=(threads, 1, 1),
        cluster=(cluster, 1, 1),
        smem=smem,
        partials=partials,
        counters=counters,
        clusters=clusters,
    )


# The two kernels of the block: the cluster kernel above (batch 1..16) and the claimed-tile kernel of
# csrc/gated_ffn_flow.cu (batch 1..8; ffn_flow.py). The claimed tiles run by default up to
# FLOW_DEFAULT_MAX_BATCH: H100 bf16, 2026-12-07 (benchmarks/NOTES-ffn.md round 9), B=1 flow vs cluster vs
# Inductor (us): Llama-2-7B 99.5 / 110.9 / 101.0, Llama-3-8B 125.0 / 143.9 / 119.6, Llama-3.2-1B 41.9 / 48.2 /
# 47.4, Qwen2.5-0.5B 16.9 / 20.9 / 23.5; at B=4 it lost (Llama-2-7B 141.1 vs 117.8: every k-vector of h is
# read from L1/L2 once per batch row and tile, where the cluster kernel holds h in shared memory). Batch 2 since
# session 13 (NOTES-ffn.md round 10; H100 bf16, 2026-12-07, two runs): flow (with h in shared memory where
# ffn_flow.default_h_shared says) vs cluster, us: Llama-2-7B 105.0 / 114.0, Llama-3-8B 133.4 / 147.9, Llama-3.2-1B
# 45.7 / 49.3, Qwen2.5-0.5B 20.1 / 21.6 (first run: 107.0 / 119, 133.4 / 150, 46.0 / 51.2, 19.9 / 21.6). Batch 4:
# the cluster kernel stays ahead except at Llama-2-7B (124.2 vs 125, a tie).
KERNEL_KINDS = ("cluster", "flow")
DEFAULT_KERNEL = "flow"
FLOW_DEFAULT_MAX_BATCH = 2


def kernel_kind(hidden: int, intermediate: int, batch: int, tuning: Tuning = Tuning()) -> str:
    """Which kernel runs this launch: tuning.kernel or CF_FFN_KERNEL if given (ValueError if it cannot), else
    DEFAULT_KERNEL up to FLOW_DEFAULT_MAX_BATCH where it supports the shape, else the cluster kernel."""
    kind = tuning.kernel or env.ffn_kernel()
    if kind is None:
        kind = DEFAULT_KERNEL if batch <= FLOW_DEFAULT_MAX_BATCH else "cluster"
    if kind not in KERNEL_KINDS:
        raise ValueError(f"gated_ffn: kernel {kind!r} (known: {', '.join(KERNEL_KINDS)})")
    if kind == "flow":
        reason = ffn_flow.flow_unsupported_reason(
            hidden=hidden, intermediate=intermediate, batch=batch, rpw=tuning.rpw
        )
        if reason is None:
            return "flow"
        if tuning.kernel == "flow":
            raise ValueError(f"gated_ffn: the claimed-tile kernel does not take this shape: {reason}")
    return "cluster"


def plan_info(
    hidden: int,
    intermediate: int,
    dtype: torch.dtype,
    batch: int,
    device: torch.device | None = None,
    tuning: Tuning = Tuning(),
) -> dict:
    """The launch actually used on `device` (clusters after the occupancy query), for benchmarks/reports."""
    device = torch.device(device or torch.device("cuda", torch.cuda.current_device()))
    if kernel_kind(hidden, intermediate, batch, tuning) == "flow":
        flow_plan = ffn_flow.plan(hidden, intermediate, dtype, batch, device, tuning.flow())
        return flow_plan.info(hidden, intermediate)
    plan = _plan(hidden, intermediate, dtype, batch_tiles(batch), device, tuning)
    compiled = plan.kernel.compiled
    return {
        "grid": plan.grid,
        "cluster": plan.cluster,
        "block": plan.block,
        "smem": plan.smem,
        "clusters": plan.clusters,
        "registers": compiled.registers,
        "local_bytes": compiled.local_bytes,
        "template": compiled.name_expression,
    }


def stamp_elems(ctas: int) -> int:
    """int64 elements of the phase timeline of a launch of `ctas` CTAs: [ctas][phase][ns, clock]."""
    return ctas * len(PHASES) * STAMP_WORDS


@functools.cache
def _activation_code(name: str) -> int:
    return ACTIVATIONS[name]


def gated_ffn(
    x: torch.Tensor,
    norm_weight: torch.Tensor,
    eps: float,
    norm_kind: str,
    gate_up_weights: list[torch.Tensor],
    down_weight: torch.Tensor,
    activation: str,
    add_residual: bool,
    out: torch.Tensor,
    *,
    tuning: Tuning = Tuning(),
    stamps: torch.Tensor | None = None,
) -> None:
    """out = (x if add_residual else 0) + (act(n W_g^T) * (n W_u^T)) W_d^T with n = rmsnorm(x); one launch.

    x, out: [B, 1, H] (B <= 16), gate_up_weights: [W_gate, W_up] ([I, H] each) or [W_gate_up] ([2I, H]),
    down_weight: [H, I]; one dtype (fp16/bf16), one CUDA device, contiguous, 16-byte aligned. `out` is
    written entirely and must not overlap x. Raises ValueError/TypeError for anything else. `tuning`
    (benchmarks only) overrides the derived kernel knobs; with tuning.phases, `stamps` (int64 on x's
    device, at least stamp_elems(grid) elements) receives the per-CTA phase timeline."""
    if x.dim() != 3 or x.shape[1] != 1:
        raise ValueError(f"x: shape {list(x.shape)}, expected [B, 1, hidden]")
    batch, _, hidden = x.shape
    intermediate = down_weight.shape[-1] if down_weight.dim() == 2 else -1
    reason = ffn_unsupported_reason(
        hidden=hidden,
        intermediate=intermediate,
        batch=batch,
        dtype=x.dtype,
        activation=activation,
        norm_kind=norm_kind,
        fused_gate_up=len(gate_up_weights) == 1,
        has_bias=False,
    )
    if reason is not None:
        raise ValueError(f"gated_ffn: unsupported: {reason}")
    if len(gate_up_weights) == 2:
        w_gate, w_up = gate_up_weights
        gate_shape = (intermediate, hidden)
        if tuple(w_up.shape) != gate_shape:
            raise ValueError(f"W_up: shape {list(w_up.shape)}, expected {list(gate_shape)}")
    elif len(gate_up_weights) == 1:
        (w_gate,) = gate_up_weights
        w_up = None
        gate_shape = (2 * intermediate, hidden)
    else:
        raise ValueError(f"gate_up_weights: {len(gate_up_weights)} tensors, expected 1 or 2")
    tensors = {"x": x, "out": out, "norm_weight": norm_weight, "W_gate": w_gate, "W_down": down_weight}
    if w_up is not None:
        tensors["W_up"] = w_up
    shapes = {
        "x": (batch, 1, hidden),
        "out": (batch, 1, hidden),
        "norm_weight": (hidden,),
        "W_gate": gate_shape,
        "W_down": (hidden, intermediate),
        "W_up": (intermediate, hidden),
    }
    for name, t in tensors.items():
        check_tensor(name, t, dtype=x.dtype, shape=shapes[name], device=x.device, align=SMEM_ALIGN)
    span = batch * hidden * x.element_size()
    if abs(out.data_ptr() - x.data_ptr()) < span:
        raise ValueError("out overlaps x: the residual is read while other CTAs write out")

    up_ptr = (
        w_up.data_ptr() if w_up is not None else w_gate.data_ptr() + intermediate * hidden * x.element_size()
    )
    if kernel_kind(hidden, intermediate, batch, tuning) == "flow":
        ffn_flow.launch(x, norm_weight, eps, NORM_KINDS[norm_kind], w_gate, up_ptr, down_weight,
                        _activation_code(activation), add_residual, out, tuning.flow(), stamps)
        return
    plan = _plan(hidden, intermediate, x.dtype, batch_tiles(batch), x.device, tuning)
    stamps_ptr = 0
    if tuning.phases:
        need = stamp_elems(plan.grid[0])
        if (
            stamps is None
            or stamps.dtype != torch.int64
            or stamps.device != x.device
            or stamps.numel() < need
        ):
            raise ValueError(f"tuning.phases needs `stamps`: int64, {need} elements on {x.device}")
        stamps_ptr = stamps.data_ptr()
    args = [
        x,
        norm_weight,
        w_gate,
        ctypes.c_void_p(up_ptr),
        down_weight,
        out,
        plan.partials,
        plan.counters,
        ctypes.c_int32(hidden),
        ctypes.c_int32(intermediate),
        ctypes.c_int32(batch),
        ctypes.c_float(eps),
        ctypes.c_int32(NORM_KINDS[norm_kind]),
        ctypes.c_int32(_activation_code(activation)),
        ctypes.c_int32(1 if add_residual else 0),
        ctypes.c_void_p(stamps_ptr),
    ]
    plan.kernel.launch(plan.grid, plan.block, args, shared_bytes=plan.smem, cluster=plan.cluster)


def gated_ffn_reference(
    x: torch.Tensor,
    norm_weight: torch.Tensor,
    eps: float,
    norm_kind: str,
    gate_up_weights: list[torch.Tensor],
    down_weight: torch.Tensor,
    activation: str,
    add_residual: bool,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """The contract's formula in `dtype` (fp64 by default) with no intermediate rounding: the reference
    the kernel is held to."""
    xs = x.to(dtype)
    w = norm_weight.to(dtype) + (1.0 if norm_kind == "unit_offset" else 0.0)
    n = w * (xs * torch.rsqrt(xs.pow(2).mean(-1, keepdim=True) + eps))
    if len(gate_up_weights) == 1:
        gate, up = (n @ gate_up_weights[0].to(dtype).T).chunk(2, dim=-1)
    else:
        gate, up = n @ gate_up_weights[0].to(dtype).T, n @ gate_up_weights[1].to(dtype).T
    if activation == "silu":
        act = torch.nn.functional.silu(gate)
    else:
        act = torch.nn.functional.gelu(gate, approximate="tanh" if activation == "gelu_tanh" else "none")
    down = (act * up) @ down_weight.to(dtype).T
    return xs + down if add_residual else down
