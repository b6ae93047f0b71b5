"""Every environment knob of the kernel runtime, in one place, read at call time.

Reading on each call (not at import) lets tests and tools point one process at another cache.

| variable | default | effect |
|---|---|---|
| CF_CACHE_DIR | $XDG_CACHE_HOME/cf_compile_kernels (~/.cache/...) | where compiled cubins are kept |
| CF_DISABLE_DISK_CACHE | 0 | 1: never read or write the disk cache (the in-process memo stays) |
| CF_ARCH | the device's (sm_XYa), else sm_90a | target architecture for NVRTC |
| CF_NVRTC_EXTRA_OPTIONS | "" | extra NVRTC options, split on whitespace (e.g. "-lineinfo") |
| CF_INCLUDE_DIRS | "" | extra header directories, os.pathsep-separated, searched after the wheels' |
| CF_VERBOSE | 0 | 1: log every compile and cache hit at INFO |
| CF_FFN_KERNEL | "" (ffn.DEFAULT_KERNEL) | "cluster" or "flow": the gated-FFN kernel where both take the shape |
| CF_ATTN_KERNEL | "" (attention.default_kernel) | "cluster" or "flow": the attention kernel where both take the shape |
| CF_ATTN_FLOW_MAX_CHUNKS | "" (attention_flow.MAX_CHUNKS) | benchmarks: attention tiles per KV group at most |
| CF_ATTN_FLOW_QKV_WPR | "" (from the shape) | benchmarks: warps per row group of the claimed-tile q/k/v tiles |
| CF_ATTN_FLOW_TOKEN_LANES | "" (on for GQA) | benchmarks: 1 / 0 forces the claimed-tile attention's token-parallel lanes |
| CF_ATTN_FLOW_O_SPLIT | "" (on for GQA) | benchmarks: 1 / 0 forces the claimed-tile attention's o_proj per head segment |
| CF_ATTN_FLOW_LEAN_SYNC | 1 | benchmarks: 0 builds the claimed-tile attention with fenced hand-offs (before round 31) |
| CF_ATTN_FLOW_DENSE_MASK | 1 | benchmarks: 0 keeps the per-token mask loads on dense rows (before round 31) |
| CF_ATTN_FLOW_MERGE_STAGE | 0 | benchmarks: 1 stages a group's partials in shared memory before its merge |
| CF_ATTN_FLOW_KV_PREFETCH | 0 | benchmarks: 1 asks L2 for an attention tile's K/V chunk before its q/k/v wait |
| CF_ATTN_FLOW_WALK_PIPELINE | 0 | benchmarks: 1 loads the next step's K before the current step's scores (lanes) |
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_ARCH = "sm_90a"


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def cache_dir() -> Path:
    """Directory of the on-disk cubin cache (created by the writer, not here)."""
    explicit = os.environ.get("CF_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cf_compile_kernels"


def disk_cache_enabled() -> bool:
    return not _flag("CF_DISABLE_DISK_CACHE")


def arch_override() -> str | None:
    value = os.environ.get("CF_ARCH", "").strip()
    return value or None


def extra_nvrtc_options() -> tuple[str, ...]:
    return tuple(os.environ.get("CF_NVRTC_EXTRA_OPTIONS", "").split())


def extra_include_dirs() -> tuple[str, ...]:
    raw = os.environ.get("CF_INCLUDE_DIRS", "")
    return tuple(p for p in raw.split(os.pathsep) if p)


def verbose() -> bool:
    return _flag("CF_VERBOSE")


def ffn_kernel() -> str | None:
    value = os.environ.get("CF_FFN_KERNEL", "").strip()
    return value or None


def attention_kernel() -> str | None:
    value = os.environ.get("CF_ATTN_KERNEL", "").strip()
    return value or None


def _int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value else None


def attention_flow_max_chunks() -> int | None:
    return _int("CF_ATTN_FLOW_MAX_CHUNKS")


def attention_flow_qkv_wpr() -> int | None:
    return _int("CF_ATTN_FLOW_QKV_WPR")


def _tristate(name: str) -> bool | None:
    """Unset or empty: None (the launcher decides); else _flag's reading."""
    return _flag(name) if os.environ.get(name, "").strip() else None


def attention_flow_token_lanes() -> bool | None:
    return _tristate("CF_ATTN_FLOW_TOKEN_LANES")


def attention_flow_o_split() -> bool | None:
    return _tristate("CF_ATTN_FLOW_O_SPLIT")


def attention_flow_lean_sync() -> bool:
    return _tristate("CF_ATTN_FLOW_LEAN_SYNC") is not False


def attention_flow_dense_mask() -> bool:
    return _tristate("CF_ATTN_FLOW_DENSE_MASK") is not False


def attention_flow_merge_stage() -> bool:
    return _flag("CF_ATTN_FLOW_MERGE_STAGE")


def attention_flow_kv_prefetch() -> bool:
    return _flag("CF_ATTN_FLOW_KV_PREFETCH")


def attention_flow_walk_pipeline() -> bool:
    return _flag("CF_ATTN_FLOW_WALK_PIPELINE")
