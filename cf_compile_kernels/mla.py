"""Launcher of the fused MLA decode kernel (csrc/mla_decode.cu): DeepSeek-V2/V2-Lite/V3 with W_UK/W_UV absorbed.

Shape -> plan (one CTA per SM, attention chunks per (batch row, head group), batch bucket, shared memory)
-> compile (cached) -> launch on the current stream. Scratch (fp32 hand-off buffers and the grid-barrier
words) is allocated once per shape and device; a launch allocates nothing and never syncs, so it
captures in CUDA graphs. Semantics: cf_compile/ops/mla.py (the reference op).
"""

from __future__ import annotations

import ctypes
import functools
import math
import threading
from dataclasses import dataclass

import torch

from .build import CompiledKernel, compile_kernel
from .launch import check_tensor, load_kernel
from .registry import register_check

SOURCE = "mla_decode.cu"
KERNEL = "mla_decode"

SUPPORTED_DTYPES = {torch.float16: "__half", torch.bfloat16: "__nv_bfloat16"}
KV_LORA_RANK = 512  # mla::kLora: the latent the attention tiles hold (every DeepSeek MLA model)
ROPE_DIM = 64  # mla::kRope: one rotation pair per lane of a warp
HEAD_GROUP = 16  # mla::kHeadGroup: heads one CTA attends with at a time
SLICE_HEADS = 4  # mla::kSliceHeads: heads per attention item with CF_MLA_SPLIT
TILE = 64  # mla::kTile: cached positions per shared-memory tile
# CF_MLA_SPLIT chunks: no shorter than half a tile, so V2-Lite at batch 1 S=1024 has 4 slices x 32 chunks = 128
# items on 132 SMs (run 2's `chunk`: 16 items); its score step works in proportion to the live rows.
SPLIT_MIN_CHUNK = TILE // 2
COUNTER_WORDS = 32  # mla::kCounterWords: grid-barrier words (own 128-byte line), then spare per-slice words
VECTOR_ELEMS = 8  # 2-byte elements per 16-byte load
ROWS_PER_WARP = 4  # mla::kRowsPerWarp: W_UV rows of one warp stay inside one head
THREADS = 256
MAX_BATCH = 16
SMEM_LIMIT = 227 * 1024
ROPE_FORMS = {"complex": 0, "interleave": 1, "neox": 2}
_TABLE_KIND = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


@dataclass(frozen=True)
class Variant:
    """One named set of the kernel's -D knobs (csrc/mla_decode.cu "variants") plus the launcher's chunk policy.

    min_chunk: fewest cached positions per attention chunk (1 = run 1: chunks fill the SMs whatever the
    length). TILE makes every chunk at least one shared-memory tile, so at batch 1 S=1024 the merge folds 16
    partials per head, not 132; the tile's score step costs the same for 8 rows or 64.
    item_heads: heads per attention item, as the kernel's kItemHeads (HEAD_GROUP, or SLICE_HEADS with
    CF_MLA_SPLIT): fewer heads per item, more items to spread over the SMs."""

    defines: tuple = ()
    min_chunk: int = 1
    item_heads: int = HEAD_GROUP


_ALL_KNOBS = (("CF_MLA_BARRIER", 1), ("CF_MLA_MERGE", 1))
# A ladder: each variant adds one change to the previous, so the timings attribute the gain of each.
VARIANTS = {
    "base": Variant(),
    "bar": Variant((("CF_MLA_BARRIER", 1),)),
    "merge": Variant(_ALL_KNOBS),
    "chunk": Variant(_ALL_KNOBS, TILE),
    # From `chunk`: 4-head items on every SM + one-round-trip merge. (Removed in round 4: `fast`, deeper GEMV
    # loads, 2-4 us behind `chunk`; `lastmerge`, the merge by each slice's last CTA, 0.5-2.5 us behind `split`.)
    "split": Variant((*_ALL_KNOBS, ("CF_MLA_SPLIT", 1)), SPLIT_MIN_CHUNK, SLICE_HEADS),
    # Round 4: + the projection, q_b, W_UV and o_proj GEMVs on the tensor cores at batch buckets >= 4 (below,
    # the same code as `split`).
    "split_mma": Variant((*_ALL_KNOBS, ("CF_MLA_SPLIT", 1), ("CF_MLA_MMA", 1)), SPLIT_MIN_CHUNK, SLICE_HEADS),
    # + the same GEMVs at batch buckets 1-2 too: not for the tensor cores (7/8 padding) but for their layout, all
    # 8 warps of every CTA on a tile with 16 loads per lane in flight (run 3: W_UV and o_proj on CTAs 0-63 only).
    "split_mma_all": Variant((*_ALL_KNOBS, ("CF_MLA_SPLIT", 1), ("CF_MLA_MMA", 2)), SPLIT_MIN_CHUNK, SLICE_HEADS),
}
# "chunk" measured fastest where it matters (H100, 2026-11-23, DeepSeek-V2-Lite bf16; 78/78 GPU tests):
# B=1 1024 cached 70.5 -> 49.5 us, 4096 74.5 -> 65.5; B=4 1024 75.4 -> 64.5; B=16 1024 175 vs 176 (even).
# Round 3 (same day, 79/79 GPU tests): "split" beats "chunk" on every row: B=1 1024 49.5 -> 38.0 us, 4096
# 66.4 -> 51.2; B=4 62.9 -> 61.7; B=16 178.3 -> 172.8 (benchmarks/NOTES-mla.md, run 3).
# split_mma (tensor-core GEMVs from batch bucket 4) measured B=4 59.4 -> 50.5 us, B=16 172.8 -> 105.5 (round 4,
# same day) but FAILED the cache-slot test (fp16 B=4: the kv_a rows written to the cache differed from the fp64
# reference by more than an ulp: h = RMSNorm(x) rounded to fp16 for the MMA, and cancellation in the 1024-term
# kv_a sums leaves that rounding on small latents). Round 5 fix: the kv_a rows (c_kv + k_pe) stay on the
# CUDA-core GEMV with fp32 h in split's per-row order (the slot is bitwise split's); the q / q_b / W_UV / o_proj
# GEMVs stay on the tensor cores. Measured (H100, same day; 69/69 GPU tests incl. the cache slot):
# B=1 36.0 -> 35.8 us (same code below bucket 4), B=4 57.8 -> 54.8, B=16 177.1 -> 144.0: the default.
DEFAULT_VARIANT = "split_mma"
# Per-CTA phase timeline (-DCF_MLA_PHASES=1): one %globaltimer stamp per phase, kernel enum Phase.
PHASES = ("start", "stats", "proj", "proj_sync", "q_b", "q_b_sync", "absorb", "absorb_sync", "attn", "attn_sync",
          "merge", "merge_sync", "w_uv", "w_uv_sync", "end")


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def batch_bucket(batch: int) -> int:
    """Batch size the kernel is instantiated for (1, 2, 4, 8, 16)."""
    return _next_pow2(batch)


def _align4(n: int) -> int:
    return (n + 3) & ~3


def smem_bytes() -> int:
    """Dynamic shared memory of one CTA; mirrors mla::plan_smem (the kernel traps if smaller)."""
    lat = KV_LORA_RANK + ROPE_DIM
    stats = 16 * 4 * 2 + 16 * 2 * 4  # rstd, rstd_q, ranges
    q = HEAD_GROUP * lat * 4
    scores_probs = 2 * HEAD_GROUP * TILE * 4
    softmax_state = 3 * HEAD_GROUP * 4
    tiles = 2 * TILE * (lat + VECTOR_ELEMS) * 2
    return stats + q + scores_probs + softmax_state + tiles


def scratch_floats(*, batch: int, num_heads: int, nope: int, v_dim: int, q_lora: int, chunks: int,
                   item_heads: int = HEAD_GROUP) -> int:
    """fp32 scratch of one launch; mirrors mla::scratch_layout (partials of `item_heads` heads per item)."""
    lat, qh = KV_LORA_RANK + ROPE_DIM, nope + ROPE_DIM
    r1 = (q_lora if q_lora else num_heads * qh) + lat
    items = batch * math.ceil(num_heads / item_heads) * chunks
    return (_align4(batch * r1) + (_align4(batch * num_heads * qh) if q_lora else 0)
            + _align4(batch * num_heads * lat) + items * item_heads * KV_LORA_RANK + _align4(items * item_heads * 2)
            + batch * num_heads * KV_LORA_RANK + batch * num_heads * v_dim)


@dataclass(frozen=True)
class MlaConfig:
    """The work split of one shape on one device (see the kernel's header comment)."""

    ctas: int  # one per SM: a one-wave grid whose phases meet at grid barriers
    chunks: int  # attention chunks per (batch row, head group): split-K over the cached positions
    batch_bucket: int
    smem_bytes: int
    scratch_floats: int
    head_groups: int = 1  # per batch row, of the variant's item_heads heads
    barrier_words: int = COUNTER_WORDS  # grid-barrier words, then one merge counter per (batch row, head group)

    def as_dict(self) -> dict:
        return {"ctas": self.ctas, "cluster": 1, "attention_chunks": self.chunks,
                "head_groups": self.head_groups, "batch_bucket": self.batch_bucket, "threads": THREADS,
                "smem_bytes": self.smem_bytes, "scratch_bytes": 4 * self.scratch_floats}


@functools.cache
def _plan(*, num_heads: int, nope: int, v_dim: int, q_lora: int, batch: int, num_sms: int, max_len: int = 0,
          min_chunk: int = 1, item_heads: int = HEAD_GROUP) -> MlaConfig:
    """Chunks so that batch rows x head groups (of item_heads) x chunks covers the SMs once (one attention
    item per CTA), but (min_chunk > 1, with the cache length known) no chunk shorter than min_chunk positions."""
    groups = math.ceil(num_heads / item_heads)
    chunks = max(1, num_sms // (batch * groups))
    if min_chunk > 1 and max_len:
        chunks = max(1, min(chunks, math.ceil(max_len / min_chunk)))
    floats = scratch_floats(batch=batch, num_heads=num_heads, nope=nope, v_dim=v_dim, q_lora=q_lora, chunks=chunks,
                            item_heads=item_heads)
    return MlaConfig(num_sms, chunks, batch_bucket(batch), smem_bytes(), floats, groups,
                     COUNTER_WORDS + batch * groups)


@functools.cache  # every launch asks: the answer (and the plan behind it) is per shape
def mla_unsupported_reason(
    *,
    hidden: int,
    num_heads: int,
    q_lora_rank: int,
    kv_lora_rank: int,
    qk_nope_head_dim: int,
    qk_rope_head_dim: int,
    v_head_dim: int,
    batch: int,
    dtype: torch.dtype,
    max_cache_len: int,
    rope_form: str,
    norm_kind: str = "weight",
    has_bias: bool = False,
    mask_dtype: torch.dtype | None = torch.bool,
) -> str | None:
    """None when the kernel covers this shape, else a one-line reason (the backend then falls back)."""
    if dtype not in SUPPORTED_DTYPES:
        return f"dtype {dtype}: only float16 and bfloat16"
    if kv_lora_rank != KV_LORA_RANK or qk_rope_head_dim != ROPE_DIM:
        return f"kv_lora_rank {kv_lora_rank} / rope dim {qk_rope_head_dim}: the kernel is built for 512 / 64"
    if qk_nope_head_dim % VECTOR_ELEMS or qk_nope_head_dim <= 0:
        return f"qk_nope_head_dim {qk_nope_head_dim}: a positive multiple of {VECTOR_ELEMS}"
    if v_head_dim % VECTOR_ELEMS or v_head_dim % ROWS_PER_WARP or v_head_dim <= 0:
        return f"v_head_dim {v_head_dim}: a positive multiple of {VECTOR_ELEMS}"
    if hidden % VECTOR_ELEMS or q_lora_rank % VECTOR_ELEMS:
        return f"hidden {hidden} / q_lora_rank {q_lora_rank}: multiples of {VECTOR_ELEMS}"
    if not 1 <= batch <= MAX_BATCH:
        return f"batch {batch}: supported 1..{MAX_BATCH}"
    if num_heads < 1 or max_cache_len < 1:
        return f"{num_heads} heads, max_cache_len {max_cache_len}"
    if rope_form not in ROPE_FORMS:
        return f"rope form {rope_form!r}: supported {tuple(ROPE_FORMS)}"
    if norm_kind not in ("weight", "unit_offset"):
        return f"norm kind {norm_kind!r}"
    if has_bias:
        return "projection biases: not in the MLA kernel"
    if mask_dtype is not None and mask_dtype != torch.bool:
        return f"attention mask of dtype {mask_dtype}: only bool masks"
    if smem_bytes() > SMEM_LIMIT:
        return f"shared memory: {smem_bytes()} bytes > {SMEM_LIMIT}"
    return None


def mla_config(*, num_heads: int, qk_nope_head_dim: int, v_head_dim: int, q_lora_rank: int, batch: int,
               num_sms: int, max_cache_len: int = 0, variant: str | None = None) -> dict:
    """The work split for the report."""
    v = VARIANTS[variant or DEFAULT_VARIANT]
    return _plan(num_heads=num_heads, nope=qk_nope_head_dim, v_dim=v_head_dim, q_lora=q_lora_rank, batch=batch,
                 num_sms=num_sms, max_len=max_cache_len, min_chunk=v.min_chunk, item_heads=v.item_heads).as_dict()


def variant_defines(variant: str | None = None, phases: bool = False) -> dict:
    """-D defines of a named variant (None: DEFAULT_VARIANT), plus the phase timeline when asked."""
    defines = dict(VARIANTS[variant or DEFAULT_VARIANT].defines)
    if phases:
        defines["CF_MLA_PHASES"] = 1
    return defines


def compiled_kernel(dtype: torch.dtype, bucket: int, arch: str | None = None, variant: str | None = None,
                    phases: bool = False) -> CompiledKernel:
    """mla_decode<T, BB> of a variant (optionally with its phase timeline) as a cubin (disk-cached)."""
    return compile_kernel(SOURCE, KERNEL, template_args=(SUPPORTED_DTYPES[dtype], bucket), arch=arch,
                          defines=variant_defines(variant, phases))


def stamp_elems(ctas: int) -> int:
    """int64 elements of one launch's phase timeline: [ctas][len(PHASES)] globaltimer ns."""
    return ctas * len(PHASES)


# ------------------------------------------------------------------ per-shape launch state

@dataclass(frozen=True)
class _Launch:
    """What every launch of one shape on one device reuses: split, loaded kernel, scratch, barrier words."""

    plan: MlaConfig
    kernel: object  # launch.LoadedKernel
    scratch: torch.Tensor
    barrier: torch.Tensor  # int32 [plan.barrier_words]: barrier words, then per-slice merge counters (all zero)


_launches: dict[tuple, _Launch] = {}
_lock = threading.Lock()


@functools.cache
def _num_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _launch_for(dtype: torch.dtype, num_heads: int, nope: int, v_dim: int, q_lora: int, batch: int,
                device: torch.device, max_len: int, variant: str, phases: bool) -> _Launch:
    """Memoised per shape, variant and device. Launches of one key share the barrier words, so they must be
    ordered (one stream, or a graph); each variant has its own (their barrier protocols differ)."""
    min_chunk, item_heads = VARIANTS[variant].min_chunk, VARIANTS[variant].item_heads
    key = (dtype, num_heads, nope, v_dim, q_lora, batch, device, max_len if min_chunk > 1 else 0, variant, phases)
    with _lock:
        found = _launches.get(key)
        if found is None:
            plan = _plan(num_heads=num_heads, nope=nope, v_dim=v_dim, q_lora=q_lora, batch=batch,
                         num_sms=_num_sms(device.index or 0), max_len=max_len, min_chunk=min_chunk,
                         item_heads=item_heads)
            kernel = load_kernel(compiled_kernel(dtype, plan.batch_bucket, variant=variant, phases=phases), device)
            scratch = torch.empty(plan.scratch_floats, dtype=torch.float32, device=device)
            barrier = torch.zeros(plan.barrier_words, dtype=torch.int32, device=device)
            found = _launches[key] = _Launch(plan, kernel, scratch, barrier)
        return found


def _rope_tables(rope_form: str, cos, sin, freqs_cis, batch: int) -> tuple:
    """(cos, sin, batch stride, element stride, table kind): element (b, i) at b*bstride + i*estride."""
    if rope_form == "complex":
        if freqs_cis is None or freqs_cis.dtype != torch.float32:
            raise TypeError("complex RoPE needs freqs_cis as the float32 real view [B, 1, 1, rope/2, 2]")
        table = freqs_cis.reshape(-1, ROPE_DIM).contiguous()
        cos_t, sin_t, estride = table, table.view(-1)[1:], 2
    else:
        width = ROPE_DIM // 2 if rope_form == "interleave" else ROPE_DIM
        if cos is None or sin is None or cos.dtype not in _TABLE_KIND or sin.dtype != cos.dtype:
            raise TypeError(f"{rope_form} RoPE needs cos/sin of one of float32, float16, bfloat16")
        cos_t, sin_t, estride = cos.reshape(-1, width).contiguous(), sin.reshape(-1, width).contiguous(), 1
        table = cos_t
    rows = table.shape[0]
    if rows not in (1, batch):
        raise ValueError(f"rope tables with {rows} rows for batch {batch}")
    bstride = table.shape[1] if rows == batch and batch > 1 else 0
    return cos_t, sin_t, bstride, estride, _TABLE_KIND[table.dtype]


def _mask_rows(attn_mask, max_len: int, batch: int) -> tuple:
    if attn_mask is None:
        return None, 0
    if attn_mask.shape[-1] != max_len or attn_mask.numel() // max_len not in (1, batch):
        raise ValueError(f"attn_mask shape {tuple(attn_mask.shape)}: expected [B, 1, 1, {max_len}]")
    rows = attn_mask.reshape(-1, max_len)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    return rows, (rows.stride(0) if rows.shape[0] == batch and batch > 1 else 0)


def mla_decode(
    x: torch.Tensor, norm_weight: torch.Tensor, norm_eps: float, norm_kind: str,
    q_weights: list[torch.Tensor], q_norm_weight: torch.Tensor | None, q_norm_eps: float,
    kv_a_weight: torch.Tensor, kv_norm_weight: torch.Tensor, kv_norm_eps: float, kv_b_weight: torch.Tensor,
    rope_form: str, cos: torch.Tensor | None, sin: torch.Tensor | None, freqs_cis: torch.Tensor | None,
    cache_position: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, attn_mask: torch.Tensor | None,
    scale: float | None, o_weight: torch.Tensor, add_residual: bool, num_heads: int, qk_nope_head_dim: int,
    v_head_dim: int, out: torch.Tensor, *, variant: str | None = None, stamps: torch.Tensor | None = None,
) -> None:
    """out = [x +] o_proj(MLA(x)) writing the latent / roped k_pe into the caches at cache_position.

    One launch, no host sync, no allocation after the first call of a shape (CUDA-graph safe).
    ``freqs_cis`` is the float32 real view of V2's complex table. Biases are not taken: the caller
    checks mla_unsupported_reason (has_bias) first. ``variant`` names a VARIANTS entry (None: DEFAULT_VARIANT);
    ``stamps`` (benchmarks only; int64, stamp_elems(SM count) elements) selects the phase-timeline build."""
    batch, _, hidden = x.shape
    max_len = k_cache.shape[2]
    nope, v_dim, dtype, dev = qk_nope_head_dim, v_head_dim, x.dtype, x.device
    q_lora = q_weights[0].shape[0] if len(q_weights) == 2 else 0
    reason = mla_unsupported_reason(
        hidden=hidden, num_heads=num_heads, q_lora_rank=q_lora, kv_lora_rank=k_cache.shape[-1],
        qk_nope_head_dim=nope, qk_rope_head_dim=v_cache.shape[-1], v_head_dim=v_dim, batch=batch, dtype=dtype,
        max_cache_len=max_len, rope_form=rope_form, norm_kind=norm_kind,
        mask_dtype=None if attn_mask is None else attn_mask.dtype)
    if reason:
        raise ValueError(f"mla_decode: {reason}")
    qh = nope + ROPE_DIM
    check_tensor("x", x, dtype=dtype, shape=(batch, 1, hidden), device=dev)
    check_tensor("out", out, dtype=dtype, shape=(batch, 1, hidden), device=dev)
    check_tensor("norm_weight", norm_weight, dtype=dtype, shape=(hidden,), device=dev)
    if q_lora:
        check_tensor("q_a_weight", q_weights[0], dtype=dtype, shape=(q_lora, hidden), device=dev)
        check_tensor("q_b_weight", q_weights[1], dtype=dtype, shape=(num_heads * qh, q_lora), device=dev)
        check_tensor("q_norm_weight", q_norm_weight, dtype=dtype, shape=(q_lora,), device=dev)
    else:
        check_tensor("q_weight", q_weights[0], dtype=dtype, shape=(num_heads * qh, hidden), device=dev)
    lat = KV_LORA_RANK + ROPE_DIM
    check_tensor("kv_a_weight", kv_a_weight, dtype=dtype, shape=(lat, hidden), device=dev)
    check_tensor("kv_norm_weight", kv_norm_weight, dtype=dtype, shape=(KV_LORA_RANK,), device=dev, align=2)
    check_tensor("kv_b_weight", kv_b_weight, dtype=dtype, shape=(num_heads * (nope + v_dim), KV_LORA_RANK),
                 device=dev)
    check_tensor("o_weight", o_weight, dtype=dtype, shape=(hidden, num_heads * v_dim), device=dev)
    check_tensor("k_cache", k_cache, dtype=dtype, shape=(batch, 1, max_len, KV_LORA_RANK), device=dev)
    check_tensor("v_cache", v_cache, dtype=dtype, shape=(batch, 1, max_len, ROPE_DIM), device=dev)
    check_tensor("cache_position", cache_position.reshape(-1), dtype=torch.int64, shape=(1,), device=dev, align=8)
    cos_t, sin_t, bstride, estride, kind = _rope_tables(rope_form, cos, sin, freqs_cis, batch)
    mask, mask_stride = _mask_rows(attn_mask, max_len, batch)
    if scale is None:
        scale = qh ** -0.5
    variant = variant or DEFAULT_VARIANT
    if variant not in VARIANTS:
        raise ValueError(f"mla_decode: variant {variant!r} not in {tuple(VARIANTS)}")
    launch = _launch_for(dtype, num_heads, nope, v_dim, q_lora, batch, dev, max_len, variant, stamps is not None)
    plan = launch.plan
    if stamps is not None and (stamps.dtype != torch.int64 or stamps.numel() < stamp_elems(plan.ctas)):
        raise ValueError(f"mla_decode: stamps must be int64 with {stamp_elems(plan.ctas)} elements")
    i32, f32, i64 = ctypes.c_int32, ctypes.c_float, ctypes.c_int64
    args = [
        x, norm_weight, q_weights[0], q_weights[1] if q_lora else None, q_norm_weight if q_lora else None,
        kv_a_weight, kv_norm_weight, kv_b_weight, o_weight, cos_t, sin_t, cache_position, k_cache, v_cache, mask,
        out, launch.scratch, launch.barrier,
        f32(norm_eps), f32(q_norm_eps), f32(kv_norm_eps), f32(scale * math.log2(math.e)),
        i32(batch), i32(hidden), i32(num_heads), i32(nope), i32(v_dim), i32(q_lora), i32(max_len),
        i64(mask_stride), i64(bstride), i32(estride), i32(kind), i32(ROPE_FORMS[rope_form]),
        i32(norm_kind == "unit_offset"), i32(bool(add_residual)), i32(plan.chunks), stamps,
    ]
    launch.kernel.launch((plan.ctas, 1, 1), (THREADS, 1, 1), args, shared_bytes=plan.smem_bytes)


# Representative instantiations for `python -m cf_compile_kernels check`: every batch bucket, both dtypes.
for _dtype in SUPPORTED_DTYPES.values():
    for _bucket in (1, 2, 4, 8, 16):
        register_check(SOURCE, KERNEL, (_dtype, _bucket), label=f"mla {_dtype} B<={_bucket}")
# The variants' knobs at the bucket extremes (the register-heaviest paths: deep GEMV at 1, attention at 16).
for _bucket in (1, 16):
    for _variant in ("split", "split_mma", "split_mma_all"):
        register_check(SOURCE, KERNEL, ("__nv_bfloat16", _bucket), defines=variant_defines(_variant, phases=True),
                       label=f"mla bf16 B<={_bucket} variant {_variant}, phase timeline")
