"""TMA tensor maps (cuTensorMapEncodeTiled) built from torch tensors, passed to kernels by value.

A kernel declares `const __grid_constant__ CUtensorMap map` and reads tiles with
cp.async.bulk.tensor (see csrc/pipeline.cuh). Maps of static weights are cached, keyed by
everything the encoding depends on, so steady-state launches encode nothing.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch

TENSOR_MAP_BYTES = 128  # sizeof(CUtensorMap): 16 x uint64, declared 64-byte aligned
_MAX_RANK = 5
_GLOBAL_STRIDE_ALIGN = 16  # bytes; every stride but the innermost must be a multiple
_MAX_BOX = 256  # elements per box dimension
_SWIZZLE_SPAN = {"none": None, "32B": 32, "64B": 64, "128B": 128}  # inner box bytes must fit


class _TensorMapStorage(ctypes.Structure):
    _fields_ = [("words", ctypes.c_uint64 * (TENSOR_MAP_BYTES // 8))]
    _pack_ = 8


@dataclass(frozen=True, eq=False)
class TensorMap:
    """An encoded CUtensorMap; `storage` is the 128-byte value a launch passes by value."""

    storage: _TensorMapStorage
    key: tuple
    base: torch.Tensor | None  # keeps the tensor alive while a cached map points into it

    @property
    def address(self) -> int:
        return ctypes.addressof(self.storage)

    def raw_bytes(self) -> bytes:
        return ctypes.string_at(self.address, TENSOR_MAP_BYTES)


def _driver():
    from cuda.bindings import driver

    return driver


def _data_type(dtype: torch.dtype):
    d = _driver().CUtensorMapDataType
    table = {
        torch.float16: d.CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
        torch.bfloat16: d.CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
        torch.float32: d.CU_TENSOR_MAP_DATA_TYPE_FLOAT32,
    }
    if dtype not in table:
        raise TypeError(f"tensor maps support float16, bfloat16, float32; got {dtype}")
    return table[dtype]


def _enum(enum_type, prefix: str, value: str):
    name = f"{prefix}{value.upper()}"
    if not hasattr(enum_type, name):
        raise ValueError(f"unknown option {value!r} ({prefix}*)")
    return getattr(enum_type, name)


def _validate(t: torch.Tensor, box: Sequence[int], swizzle: str) -> None:
    if not t.is_cuda:
        raise ValueError(f"tensor maps need a CUDA tensor, got one on {t.device}")
    if not 1 <= t.dim() <= _MAX_RANK:
        raise ValueError(f"tensor maps support rank 1..{_MAX_RANK}, got {t.dim()}")
    if len(box) != t.dim():
        raise ValueError(f"box {tuple(box)} must have one entry per tensor dim ({t.dim()})")
    if t.stride(-1) != 1:
        raise ValueError(f"innermost dim must be contiguous, strides {t.stride()}")
    if t.data_ptr() % _GLOBAL_STRIDE_ALIGN:
        raise ValueError(f"tensor data pointer {t.data_ptr():#x} must be 16-byte aligned")
    for dim in range(t.dim() - 1):
        if (t.stride(dim) * t.element_size()) % _GLOBAL_STRIDE_ALIGN:
            raise ValueError(f"stride of dim {dim} ({t.stride(dim)} elements) is not a multiple of 16 bytes")
    for b in box:
        if not 1 <= b <= _MAX_BOX:
            raise ValueError(f"box entries must be in 1..{_MAX_BOX}, got {tuple(box)}")
    inner_bytes = box[-1] * t.element_size()
    if inner_bytes % _GLOBAL_STRIDE_ALIGN:
        raise ValueError(f"inner box extent {box[-1]} x {t.element_size()} B must be a multiple of 16 bytes")
    if swizzle not in _SWIZZLE_SPAN:
        raise ValueError(f"swizzle must be one of {list(_SWIZZLE_SPAN)}, got {swizzle!r}")
    span = _SWIZZLE_SPAN[swizzle]
    if span is not None and inner_bytes > span:
        raise ValueError(
            f"swizzle {swizzle} needs the inner box row ({inner_bytes} B) to be at most {span} B"
        )


def encode_tiled(
    t: torch.Tensor,
    box: Sequence[int],
    *,
    swizzle: str = "none",
    l2_promotion: str = "none",
    oob_fill_nan: bool = False,
) -> TensorMap:
    """Encode a tiled tensor map of `t` (outermost dim first, as in torch) with boxes of `box`.

    swizzle: "none" | "32B" | "64B" | "128B"; l2_promotion: "none" | "L2_64B" | "L2_128B" | "L2_256B";
    out-of-bounds elements read as zero (or NaN with oob_fill_nan). Raises ValueError/TypeError for
    what the encoder would reject, and RuntimeError with the driver's message otherwise."""
    _validate(t, box, swizzle)
    driver = _driver()
    rank = t.dim()
    size = t.element_size()
    # The driver numbers dims innermost first; torch outermost first.
    global_dim = [driver.cuuint64_t(int(n)) for n in reversed(t.shape)]
    global_strides = [driver.cuuint64_t(int(t.stride(d)) * size) for d in range(rank - 2, -1, -1)]
    box_dim = [driver.cuuint32_t(int(b)) for b in reversed(box)]
    element_strides = [driver.cuuint32_t(1)] * rank
    swz = _enum(driver.CUtensorMapSwizzle, "CU_TENSOR_MAP_SWIZZLE_", swizzle)
    l2 = _enum(driver.CUtensorMapL2promotion, "CU_TENSOR_MAP_L2_PROMOTION_", l2_promotion)
    fill = driver.CUtensorMapFloatOOBfill
    oob = (
        fill.CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA
        if oob_fill_nan
        else fill.CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE
    )
    err, encoded = driver.cuTensorMapEncodeTiled(
        _data_type(t.dtype),
        rank,
        t.data_ptr(),
        global_dim,
        global_strides,
        box_dim,
        element_strides,
        driver.CUtensorMapInterleave.CU_TENSOR_MAP_INTERLEAVE_NONE,
        swz,
        l2,
        oob,
    )
    if err != driver.CUresult.CUDA_SUCCESS:
        _, name = driver.cuGetErrorName(err)
        raise RuntimeError(
            f"cuTensorMapEncodeTiled failed ({name.decode() if name else err}) for shape {tuple(t.shape)}, "
            f"strides {t.stride()}, dtype {t.dtype}, box {tuple(box)}, swizzle {swizzle}"
        )
    storage = _TensorMapStorage()
    ctypes.memmove(ctypes.addressof(storage), encoded.getPtr(), TENSOR_MAP_BYTES)
    return TensorMap(storage=storage, key=_key(t, box, swizzle, l2_promotion, oob_fill_nan), base=None)


def _key(t: torch.Tensor, box, swizzle, l2_promotion, oob_fill_nan) -> tuple:
    return (
        t.data_ptr(),
        t.device.index,
        t.dtype,
        tuple(t.shape),
        t.stride(),
        tuple(box),
        swizzle,
        l2_promotion,
        oob_fill_nan,
    )


_cache: dict[tuple, TensorMap] = {}
_cache_lock = threading.Lock()


def cached_tensor_map(
    t: torch.Tensor,
    box: Sequence[int],
    *,
    swizzle: str = "none",
    l2_promotion: str = "none",
    oob_fill_nan: bool = False,
) -> TensorMap:
    """encode_tiled, memoised per (pointer, shape, strides, dtype, box, swizzle, ...): for static weights.

    The cached map keeps `t` alive so that its pointer cannot be reused by another tensor while the
    entry exists; call clear_tensor_map_cache() when weights are dropped."""
    key = _key(t, box, swizzle, l2_promotion, oob_fill_nan)
    found = _cache.get(key)
    if found is not None:
        return found
    encoded = encode_tiled(t, box, swizzle=swizzle, l2_promotion=l2_promotion, oob_fill_nan=oob_fill_nan)
    entry = TensorMap(storage=encoded.storage, key=key, base=t)
    with _cache_lock:
        return _cache.setdefault(key, entry)


def clear_tensor_map_cache() -> None:
    with _cache_lock:
        _cache.clear()
