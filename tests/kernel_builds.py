"""Shared by the kernel build tests: compile a kernel's instantiations for sm_90a with NVRTC (no GPU), and
the SASS properties every fused kernel must have."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cf_compile_kernels.build import CompiledKernel, compile_kernel

ARCH = "sm_90a"
PARALLEL_COMPILES = 4


def compile_or_skip(source: Path, kernel: str, instantiations: Sequence[tuple],
                    defines: Mapping[str, str | int] | None = None) -> dict[tuple, CompiledKernel]:
    """Every instantiation compiled (in parallel; with `defines`, e.g. a timeline build); the calling test module
    is skipped where this machine has no NVRTC or headers (nothing to specify then), any other failure is an error."""
    def one(args: tuple) -> CompiledKernel:
        return compile_kernel(source, kernel, template_args=args, arch=ARCH, defines=defines)

    try:
        with ThreadPoolExecutor(max_workers=PARALLEL_COMPILES) as pool:
            return dict(zip(instantiations, pool.map(one, instantiations), strict=True))
    except Exception as exc:
        if "HeadersNotFound" in type(exc).__name__ or isinstance(exc, ImportError):
            pytest.skip(f"NVRTC unavailable: {exc}")
        raise


def assert_clean_sass(kernel: CompiledKernel) -> None:
    """A cubin with at most 255 registers, no spills, no stack, and only dynamic shared memory (sized by
    the launcher from the shape)."""
    assert kernel.cubin.startswith(b"\x7fELF")
    assert kernel.registers is not None and kernel.registers <= 255
    assert kernel.spill_bytes == 0, f"{kernel.name_expression}: {kernel.spill_bytes} bytes spilled"
    assert kernel.local_bytes == 0, f"{kernel.name_expression}: {kernel.local_bytes} bytes of stack"
    assert kernel.shared_bytes == 0
