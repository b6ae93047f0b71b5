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
