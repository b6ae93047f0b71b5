"""Loading cubins into torch's CUDA context and launching them (with clusters) on torch's stream.

The per-launch path does no host synchronisation and no device allocation, so launches can be
captured in CUDA graphs; what can be prepared once (module, function attributes, launch configs)
is prepared once and reused.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Sequence

import torch

from .build import CompiledKernel
from .tma import TensorMap

_MAX_PORTABLE_CLUSTER = 8  # CTAs per cluster guaranteed on every sm_90 part; more needs opt-in
_MAX_CACHED_CONFIGS = 256  # launch configs kept per kernel (grid/block/smem/cluster/stream combos)


class LaunchError(RuntimeError):
    """A CUDA driver call of the load or launch path failed; the message names the call and kernel."""


def _driver():
    from cuda.bindings import driver

    return driver


def _check(result: tuple, what: str) -> tuple:
    err = result[0]
    driver = _driver()
    if err != driver.CUresult.CUDA_SUCCESS:
        _, name = driver.cuGetErrorName(err)
        _, text = driver.cuGetErrorString(err)
        raise LaunchError(f"{what}: {name.decode() if name else err} ({text.decode() if text else ''})")
    return result[1:]


def _device_index(device: int | str | torch.device | None) -> int:
    if device is None:
        return torch.cuda.current_device()
    if isinstance(device, int):
        return device
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"kernels run on CUDA devices, got {device}")
    return device.index if device.index is not None else torch.cuda.current_device()


_primary: dict[int, object] = {}
_primary_lock = threading.Lock()


def primary_context(device_index: int):
    """The device's primary context (the one torch uses), retained and initialised once."""
    ctx = _primary.get(device_index)
    if ctx is not None:
        return ctx
    with _primary_lock:
        if device_index not in _primary:
            torch.cuda.init()
            with torch.cuda.device(device_index):
                torch.cuda.current_stream().query()  # makes torch create the primary context first
            driver = _driver()
            _check(driver.cuInit(0), "cuInit")
            (dev,) = _check(driver.cuDeviceGet(device_index), "cuDeviceGet")
            (ctx,) = _check(driver.cuDevicePrimaryCtxRetain(dev), "cuDevicePrimaryCtxRetain")
            _primary[device_index] = ctx
        return _primary[device_index]


@contextlib.contextmanager
def _current(ctx, ctx_int: int):
    """Makes `ctx` current for driver calls when it is not already (new threads, other devices)."""
    driver = _driver()
    err, current = driver.cuCtxGetCurrent()
    if err == driver.CUresult.CUDA_SUCCESS and int(current) == ctx_int:
        yield
        return
    _check(driver.cuCtxPushCurrent(ctx), "cuCtxPushCurrent")
    try:
        yield
    finally:
        _check(driver.cuCtxPopCurrent(), "cuCtxPopCurrent")


def _raw_stream(device_index: int) -> int:
    getter = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    if getter is not None:
        return getter(device_index)
    return torch.cuda.current_stream(device_index).cuda_stream


class LoadedKernel:
    """A compiled kernel loaded on one device; launch() is the cheap, graph-capturable path."""

    def __init__(self, compiled: CompiledKernel, device_index: int) -> None:
        driver = _driver()
        self.compiled = compiled
        self.device_index = device_index
        self._ctx = primary_context(device_index)
        self._ctx_int = int(self._ctx)
        with _current(self._ctx, self._ctx_int):
            (self._module,) = _check(
                driver.cuModuleLoadData(compiled.cubin), f"cuModuleLoadData({compiled.name_expression})"
            )
            (self._function,) = _check(
                driver.cuModuleGetFunction(self._module, compiled.lowered_name.encode()),
                f"cuModuleGetFunction({compiled.lowered_name})",
            )
        self._dynamic_smem_limit = 0
        self._non_portable = False
        self._configs: dict[tuple, object] = {}
        self._lock = threading.Lock()
        self._success = driver.CUresult.CUDA_SUCCESS
        self._launch_ex = driver.cuLaunchKernelEx
        self._get_current = driver.cuCtxGetCurrent
        self._arenas = threading.local()

    # ---------------------------------------------------------------- attributes, raised once

    def attribute(self, attr_name: str) -> int:
        """A CU_FUNC_ATTRIBUTE_* of the loaded function (e.g. "NUM_REGS", "MAX_THREADS_PER_BLOCK")."""
        driver = _driver()
        attr = getattr(driver.CUfunction_attribute, f"CU_FUNC_ATTRIBUTE_{attr_name}")
        with _current(self._ctx, self._ctx_int):
            (value,) = _check(
                driver.cuFuncGetAttribute(attr, self._function), f"cuFuncGetAttribute({attr_name})"
            )
        return int(value)

    def _set_attribute(self, attr_name: str, value: int) -> None:
        driver = _driver()
        attr = getattr(driver.CUfunction_attribute, f"CU_FUNC_ATTRIBUTE_{attr_name}")
        with _current(self._ctx, self._ctx_int):
            _check(
                driver.cuFuncSetAttribute(self._function, attr, value),
                f"cuFuncSetAttribute({attr_name}={value}) for {self.compiled.name_expression}",
            )

    def _ensure_attributes(self, shared_bytes: int, cluster_size: int) -> None:
        with self._lock:
            if shared_bytes > self._dynamic_smem_limit:
                self._set_attribute("MAX_DYNAMIC_SHARED_SIZE_BYTES", shared_bytes)
                self._dynamic_smem_limit = shared_bytes
            if cluster_size > _MAX_PORTABLE_CLUSTER and not self._non_portable:
                self._set_attribute("NON_PORTABLE_CLUSTER_SIZE_ALLOWED", 1)
                self._non_portable = True

    def max_active_clusters(self, cluster_size: int, threads: int, shared_bytes: int) -> int | None:
        """Clusters of ``cluster_size`` CTAs (``threads`` each, ``shared_bytes`` of dynamic shared memory)
        the device runs at once (cuOccupancyMaxActiveClusters: GPC boundaries, not only the SM count,
        limit it), or None where the driver cannot say. A split that must be one wave (kernels whose
        CTAs wait for each other) is sized with it."""
        driver = _driver()
        try:
            self._ensure_attributes(shared_bytes, cluster_size)
            config = self._config((cluster_size, 1, 1), (threads, 1, 1), shared_bytes, (cluster_size, 1, 1), 0)
            err, count = driver.cuOccupancyMaxActiveClusters(self._function, config)
        except Exception:  # an older driver or binding without the call: the caller estimates
            return None
        return int(count) if err == driver.CUresult.CUDA_SUCCESS and count > 0 else None

    def max_active_blocks(self, threads: int, shared_bytes: int) -> int | None:
        """CTAs of ``threads`` threads and ``shared_bytes`` of dynamic shared memory one SM runs at once
        (cuOccupancyMaxActiveBlocksPerMultiprocessor), or None where the driver cannot say."""
        driver = _driver()
        try:
            self._ensure_attributes(shared_bytes, 1)
            with _current(self._ctx, self._ctx_int):
                err, count = driver.cuOccupancyMaxActiveBlocksPerMultiprocessor(
                    self._function, threads, shared_bytes
                )
        except Exception:  # an older binding without the call: the caller estimates
            return None
        return int(count) if err == driver.CUresult.CUDA_SUCCESS and count > 0 else None

    # ---------------------------------------------------------------- launch

    def _config(self, grid, block, shared_bytes, cluster, stream: int):
        key = (grid, block, shared_bytes, cluster, stream)
        config = self._configs.get(key)
        if config is not None:
            return config
        driver = _driver()
        config = driver.CUlaunchConfig()
        config.gridDimX, config.gridDimY, config.gridDimZ = grid
        config.blockDimX, config.blockDimY, config.blockDimZ = block
        config.sharedMemBytes = shared_bytes
        config.hStream = driver.CUstream(stream)
        if cluster is not None:
            attr = driver.CUlaunchAttribute()
            attr.id = driver.CUlaunchAttributeID.CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION
            attr.value.clusterDim.x, attr.value.clusterDim.y, attr.value.clusterDim.z = cluster
            config.attrs = [attr]
            config.numAttrs = 1
        else:
            config.numAttrs = 0
        if len(self._configs) >= _MAX_CACHED_CONFIGS:
            self._configs.clear()
        self._configs[key] = config
        return config

    def launch(
        self,
        grid: tuple[int, int, int],
        block: tuple[int, int, int],
        args: Sequence[object],
        *,
        shared_bytes: int = 0,
        cluster: tuple[int, int, int] | None = None,
        stream: int | None = None,
    ) -> None:
        """Launch on torch.cuda.current_stream(device) unless `stream` (a raw CUstream int) is given.

        args: torch.Tensor (its data pointer), ctypes scalars, tma.TensorMap (by value, for a
        __grid_constant__ const CUtensorMap parameter) or None (a null pointer). Raises
        MAX_DYNAMIC_SHARED_SIZE_BYTES / NON_PORTABLE_CLUSTER_SIZE_ALLOWED on first need. No sync, no
        device allocation. Raises TypeError for an unsupported argument, LaunchError if the driver refuses."""
        grid = tuple(grid)
        block = tuple(block)
        if cluster is not None:
            cluster = tuple(cluster)
            cluster_size = cluster[0] * cluster[1] * cluster[2]
        else:
            cluster_size = 1
        if shared_bytes > self._dynamic_smem_limit or (
            cluster_size > _MAX_PORTABLE_CLUSTER and not self._non_portable
        ):
            self._ensure_attributes(shared_bytes, cluster_size)
        if stream is None:
            stream = _raw_stream(self.device_index)
        config = self._config(grid, block, shared_bytes, cluster, stream)
        arenas = self._arenas.__dict__  # per thread: launches from several threads never share one
        arena = arenas.get(len(args))
        if arena is None:
            arena = arenas[len(args)] = ParamArena(len(args))
        params = arena.fill(args)
        err, current = self._get_current()
        if int(current) == self._ctx_int:  # the usual case: torch made our context current
            (err,) = self._launch_ex(config, self._function, params, 0)
        else:
            with _current(self._ctx, self._ctx_int):
                (err,) = self._launch_ex(config, self._function, params, 0)
        if err != self._success:
            _check(
                (err,),
                f"cuLaunchKernelEx({self.compiled.name_expression}, grid={grid}, block={block}, "
                f"cluster={cluster}, shared={shared_bytes})",
            )


class PlanCache:
    """Launch plans by key, each built once (under a lock; a hit takes no lock): launchers keep what depends
    only on the shape, dtype and device (the loaded kernel, grid, scratch) here, off the per-call path."""

    def __init__(self) -> None:
        self._plans: dict[tuple, object] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple, build):
        plan = self._plans.get(key)
        if plan is None:
            with self._lock:
                plan = self._plans.get(key)
                if plan is None:
                    plan = self._plans[key] = build()
        return plan


class ParamArena:
    """The void*[] array cuLaunchKernelEx reads parameter values from, reused across launches.

    Tensors' pointers are written into a value slot of the arena; ctypes scalars and tensor maps are
    pointed to in place (the caller's `args` keep them alive during the call). The driver copies
    the values during cuLaunchKernelEx, so one arena per thread can be refilled for every launch."""

    __slots__ = ("size", "pointers", "values", "address", "_values_base")

    def __init__(self, size: int) -> None:
        self.size = size
        self.pointers = (ctypes.c_void_p * max(size, 1))()
        self.values = (ctypes.c_uint64 * max(size, 1))()
        self.address = ctypes.addressof(self.pointers)
        self._values_base = ctypes.addressof(self.values)

    def fill(self, args: Sequence[object]) -> int:
        """Point the arena at `args`; returns the address to pass as kernelParams.

        Raises TypeError for an argument that is not a CUDA tensor, ctypes scalar, TensorMap or None."""
        pointers, values, base = self.pointers, self.values, self._values_base
        for i, arg in enumerate(args):
            if isinstance(arg, torch.Tensor):
                if not arg.is_cuda:
                    raise TypeError(f"argument {i}: tensor on {arg.device}, kernels need CUDA tensors")
                values[i] = arg.data_ptr()
                pointers[i] = base + 8 * i
            elif isinstance(arg, ctypes._SimpleCData):
                pointers[i] = ctypes.addressof(arg)
            elif isinstance(arg, TensorMap):
                pointers[i] = ctypes.addressof(arg.storage)
            elif arg is None:
                values[i] = 0
                pointers[i] = base + 8 * i
            else:
                raise TypeError(
                    f"argument {i}: {type(arg).__name__} is not a kernel argument; pass a CUDA tensor, a ctypes "
                    "scalar (c_int32, c_int64, c_float, c_void_p) or a tma.TensorMap"
                )
        return self.address


def pack_args(args: Sequence[object]) -> ParamArena:
    """A fresh arena filled with `args` (tests and one-off launches; launch() reuses per-thread arenas)."""
    arena = ParamArena(len(args))
    arena.fill(args)
    return arena


_loaded: dict[tuple[CompiledKernel, int], LoadedKernel] = {}
_loaded_lock = threading.Lock()


def load_kernel(compiled: CompiledKernel, device: int | str | torch.device | None = None) -> LoadedKernel:
    """Load `compiled` once per device into torch's primary context (memoised)."""
    index = _device_index(device)
    key = (compiled, index)
    kernel = _loaded.get(key)
    if kernel is not None:
        return kernel
    with _loaded_lock:
        kernel = _loaded.get(key)
        if kernel is None:
            kernel = LoadedKernel(compiled, index)
            _loaded[key] = kernel
        return kernel


def check_tensor(
    name: str,
    t: object,
    *,
    dtype: torch.dtype | Sequence[torch.dtype] | None = None,
    shape: Sequence[int | None] | None = None,
    device: torch.device | None = None,
    align: int = 16,
    contiguous: bool = True,
) -> torch.Tensor:
    """Raise a clear error before launch if `t` is not what a kernel expects; returns `t`.

    shape entries of None match any size. align is in bytes, checked on the data pointer."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if dtype is not None:
        allowed = (dtype,) if isinstance(dtype, torch.dtype) else tuple(dtype)
        if t.dtype not in allowed:
            raise TypeError(f"{name}: dtype {t.dtype}, expected {' or '.join(map(str, allowed))}")
    if not t.is_cuda:
        raise ValueError(f"{name}: on {t.device}, expected a CUDA tensor")
    if device is not None:
        want = torch.device(device)  # "cuda" without an index accepts any CUDA device
        if want.type != t.device.type or (want.index is not None and want.index != t.device.index):
            raise ValueError(f"{name}: on {t.device}, expected {want}")
    if shape is not None:
        ok = t.dim() == len(shape) and all(s is None or s == d for s, d in zip(shape, t.shape, strict=False))
        if not ok:
            want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
            raise ValueError(f"{name}: shape {list(t.shape)}, expected {want}")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{name}: not contiguous (strides {t.stride()})")
    if align and t.data_ptr() % align:
        raise ValueError(f"{name}: data pointer {t.data_ptr():#x} is not {align}-byte aligned")
    return t
