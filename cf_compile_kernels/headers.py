"""Where the CUDA headers come from, and which files a kernel source depends on.

NVRTC ships no headers; they come from the pip wheels (nvidia/cu13/include and its cccl/ folder,
found by cuda.pathfinder), so no system toolkit is needed. /usr/local/cuda/include is only a fallback.
"""

from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path

from . import env

CSRC_DIR = Path(__file__).resolve().parent / "csrc"
_SYSTEM_CUDA = Path("/usr/local/cuda/include")
_QUOTED_INCLUDE = re.compile(rb'^\s*#\s*include\s*"([^"]+)"', re.MULTILINE)


class HeadersNotFoundError(RuntimeError):
    """No directory holding cuda_fp16.h was found (install cuda-toolkit[cudart,cccl])."""


def _pathfinder_dir(libname: str) -> Path | None:
    try:
        from cuda.pathfinder import locate_nvidia_header_directory
    except ImportError:  # older cuda-pathfinder
        return None
    try:
        located = locate_nvidia_header_directory(libname)
    except Exception:  # pathfinder raises on unknown names / broken installs: treat as absent
        return None
    if located is None:
        return None
    path = getattr(located, "abs_path", located)
    return Path(path) if path else None


@functools.cache
def _toolkit_include_dirs() -> tuple[str, ...]:
    dirs: list[Path] = []
    for lib in ("cudart", "cccl"):
        found = _pathfinder_dir(lib)
        if found is not None:
            dirs.append(found)
    if _SYSTEM_CUDA.is_dir():
        dirs += [_SYSTEM_CUDA, _SYSTEM_CUDA / "cccl"]
    unique: list[str] = []
    for d in dirs:
        s = str(d)
        if d.is_dir() and s not in unique:
            unique.append(s)
    return tuple(unique)


def include_dirs() -> tuple[str, ...]:
    """Header directories for NVRTC: our csrc, the wheels' CUDA + CCCL, then CF_INCLUDE_DIRS.

    Raises HeadersNotFoundError if none of them holds cuda_fp16.h."""
    dirs = (str(CSRC_DIR), *_toolkit_include_dirs(), *env.extra_include_dirs())
    if not any((Path(d) / "cuda_fp16.h").is_file() for d in dirs):
        raise HeadersNotFoundError(
            "no CUDA headers found (looked with cuda.pathfinder for 'cudart'/'cccl' and in "
            f"{_SYSTEM_CUDA}); install cuda-toolkit[cudart,cccl] or set CF_INCLUDE_DIRS"
        )
    return dirs


def _resolve_quoted(name: str, including_dir: Path, search: tuple[str, ...]) -> Path | None:
    for base in (including_dir, *map(Path, search)):
        candidate = base / name
        if candidate.is_file():
            return candidate
    return None


def source_digest(path: Path, search: tuple[str, ...] = (str(CSRC_DIR),)) -> str:
    """SHA-256 over a source and every "quoted" header it includes, recursively.

    Toolkit headers (<...>) are covered by the include directories and NVRTC version in the
    cache key, not hashed file by file (that would cost more than the compile it saves)."""
    digest = hashlib.sha256()
    seen: set[Path] = set()
    pending = [path.resolve()]
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        text = current.read_bytes()
        digest.update(str(current.name).encode() + b"\0" + hashlib.sha256(text).digest())
        for match in _QUOTED_INCLUDE.finditer(text):
            found = _resolve_quoted(match.group(1).decode(), current.parent, search)
            if found is not None:
                pending.append(found.resolve())
    return digest.hexdigest()


def resolve_source(source: str | Path) -> Path:
    """A kernel source: a file name under csrc/, or an explicit path (tests, out-of-tree kernels)."""
    path = Path(source)
    if not path.is_absolute():
        path = CSRC_DIR / path
    if not path.is_file():
        raise FileNotFoundError(f"kernel source not found: {path}")
    return path


@functools.cache
def toolkit_fingerprint() -> str:
    """Identifies the wheel/toolkit headers in use (paths + size/mtime of version-bearing files).

    Enters the cache key so that another version of the headers misses the cache. Extra
    CF_INCLUDE_DIRS enter the key through the -I options instead."""
    parts: list[str] = []
    for d in _toolkit_include_dirs():
        parts.append(d)
        for rel in ("cuda_fp16.hpp", "cuda_bf16.hpp", "cuda/std/__cccl/version.h", "cuda.h"):
            f = Path(d) / rel
            if f.is_file():
                st = f.stat()
                parts.append(f"{rel}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()
