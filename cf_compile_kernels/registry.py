"""Representative instantiations of every kernel, for `python -m cf_compile_kernels check`.

Launcher modules (ffn.py, attention.py, ...) call register_check(...) at import time for the
shapes/dtypes they ship; the check imports every module of the package, then compiles each entry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class CheckEntry:
    """One kernel specialisation the doctor compiles."""

    source: str  # file name under csrc/
    kernel: str
    template_args: tuple[str | int, ...] = ()
    defines: tuple[tuple[str, str | int], ...] = field(default=())
    label: str = ""  # short description for the report, e.g. "llama-2-7b fp16"


_entries: dict[CheckEntry, None] = {}  # insertion-ordered set


def register_check(
    source: str,
    kernel: str,
    template_args: Sequence[str | int] = (),
    defines: Mapping[str, str | int] | None = None,
    *,
    label: str = "",
) -> CheckEntry:
    """Declare that kernel<template_args> from csrc/<source> (with -D defines) must compile.

    Idempotent: registering the same entry twice keeps one."""
    entry = CheckEntry(
        source=source,
        kernel=kernel,
        template_args=tuple(template_args),
        defines=tuple(sorted((defines or {}).items())),
        label=label,
    )
    _entries[entry] = None
    return entry


def registered() -> list[CheckEntry]:
    """Entries in registration order."""
    return list(_entries)


def register_runtime_checks() -> None:
    """The runtime's own test kernels (csrc/collectives_test.cu), at the sizes the GPU tests use."""
    source = "collectives_test.cu"
    for n in (2, 3, 16):
        for length, op in ((99, 0), (1024, 0), (1024, 1), (1024, 2)):
            register_check(
                source, "collective_test_kernel", (n, length, op, "false"), label="collective test"
            )
    register_check(source, "collective_test_kernel", (8, 1024, 0, "true"), label="global-memory baseline")
    register_check(source, "merge_softmax_test_kernel", (6, 4, 128, "false"), label="softmax merge test")
    register_check(source, "merge_softmax_test_kernel", (16, 4, 30, "true"), label="softmax merge test")
    register_check(source, "tma_copy_2d_kernel", ("__nv_bfloat16", 32, 64, "true"), label="TMA 2-D copy test")
    register_check(source, "tma_copy_3d_kernel", ("float", 2, 4, 32), label="TMA 3-D copy test")
    register_check(source, "fill_ones_kernel", label="launch probe")
