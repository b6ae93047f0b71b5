"""Run-time compiled Hopper cluster kernels (NVRTC -> cubin cache -> cluster launch).

Public runtime API (docs/kernel-contract.md): build.compile_kernel, launch.load_kernel /
LoadedKernel.launch, launch.check_tensor, tma.encode_tiled / cached_tensor_map, kernels_available.
"""

from __future__ import annotations

import functools

import torch

_MIN_CAPABILITY = (9, 0)  # thread-block clusters, DSMEM and TMA need Hopper


def kernels_available(device: torch.device | None = None) -> tuple[bool, str]:
    """(True, "") on a CUDA device with compute capability >= 9.0 where the driver and NVRTC load;
    otherwise (False, one-line reason) -- never raises."""
    try:
        if not torch.cuda.is_available():
            return False, "no CUDA device (torch.cuda.is_available() is False)"
        if device is None:
            index = torch.cuda.current_device()
        else:
            device = torch.device(device)
            if device.type != "cuda":
                return False, f"{device} is not a CUDA device"
            index = device.index if device.index is not None else torch.cuda.current_device()
        return _available_on(index)
    except Exception as exc:  # the promise is a reason, never an exception
        return False, f"{type(exc).__name__}: {exc}".splitlines()[0]


@functools.cache
def _available_on(index: int) -> tuple[bool, str]:
    try:
        capability = torch.cuda.get_device_capability(index)
        if capability < _MIN_CAPABILITY:
            return (
                False,
                f"cuda:{index} has compute capability {capability[0]}.{capability[1]}, kernels need >= 9.0",
            )
        from cuda.bindings import driver

        (err,) = driver.cuInit(0)
        if err != driver.CUresult.CUDA_SUCCESS:
            return False, f"CUDA driver did not initialise: {err}"
        from . import build, headers

        build.nvrtc_version()
        headers.include_dirs()
        return True, ""
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}".splitlines()[0]
