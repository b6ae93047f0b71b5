"""NVRTC compilation of the csrc kernels to SASS (cubin), with an on-disk and an in-process cache.

Cubins, never PTX: PTX from a pip NVRTC newer than the GPU's driver fails to JIT, a cubin loads.
Every compile is specialised by template arguments and -D defines; the cache key covers the source
and the headers it includes, the options, the arch and the NVRTC version, so a warm start compiles
nothing. Cache files are written to a temporary file and renamed over, so concurrent processes never
see a partial file (the last writer of an identical result wins).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import struct
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import env, headers

log = logging.getLogger(__name__)

_CACHE_FORMAT = b"CFK1"  # bump when the file layout or the meaning of a key part changes
_HEADER = struct.Struct("<4sI")  # magic, length of the JSON metadata that follows
_ELF_MAGIC = b"\x7fELF"
_BASE_OPTIONS = ("-std=c++17", "--ptxas-options=-v")


class KernelCompileError(RuntimeError):
    """NVRTC rejected a kernel; the message holds the kernel, the options and NVRTC's log."""

    def __init__(self, message: str, *, kernel: str, options: Sequence[str], nvrtc_log: str):
        super().__init__(message)
        self.kernel = kernel
        self.options = tuple(options)
        self.nvrtc_log = nvrtc_log


@dataclass(frozen=True)
class CompiledKernel:
    """One specialised kernel as SASS, plus what the compiler reported about its resources."""

    name_expression: str
    lowered_name: str
    cubin: bytes
    arch: str
    options: tuple[str, ...]
    compile_seconds: float  # 0.0 when it came from the disk cache
    from_cache: bool
    registers: int | None
    shared_bytes: int | None  # static shared memory
    local_bytes: int | None  # stack frame (holds the spills)
    spill_bytes: int | None = None  # spill stores, from ptxas (not in the contract's list; additive)


# --------------------------------------------------------------------------- NVRTC plumbing


def _nvrtc():
    from cuda.bindings import nvrtc

    return nvrtc


def _check(result: tuple, what: str) -> tuple:
    err = result[0]
    nvrtc = _nvrtc()
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        _, msg = nvrtc.nvrtcGetErrorString(err)
        raise RuntimeError(f"{what} failed: {msg.decode(errors='replace')}")
    return result[1:]


@functools.cache
def nvrtc_version() -> tuple[int, int]:
    """(major, minor) of the NVRTC library that compiles (enters the cache key)."""
    major, minor = _check(_nvrtc().nvrtcVersion(), "nvrtcVersion")
    return int(major), int(minor)


def default_arch() -> str:
    """CF_ARCH, else the current CUDA device's arch-specific target (sm_XYa), else sm_90a.

    The `a` targets are needed for wgmma/setmaxnreg; they run only on that exact compute capability."""
    override = env.arch_override()
    if override:
        return override
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            return f"sm_{major}{minor}a" if major >= 9 else f"sm_{major}{minor}"
    except Exception:  # no usable CUDA runtime: compile for the project's target
        pass
    return env.DEFAULT_ARCH


def name_expression(kernel: str, template_args: Sequence[str | int] = ()) -> str:
    """kernel<arg0, arg1, ...> as NVRTC's nvrtcAddNameExpression wants it (bools as true/false)."""
    if not template_args:
        return kernel

    def fmt(arg: str | int | bool) -> str:
        if isinstance(arg, bool):
            return "true" if arg else "false"
        return str(arg)

    return f"{kernel}<{', '.join(fmt(a) for a in template_args)}>"


def build_options(
    arch: str, defines: Mapping[str, str | int], include_dirs: Sequence[str]
) -> tuple[str, ...]:
    """Every NVRTC option, in a stable order (the order enters the cache key)."""
    define_opts = tuple(f"-D{k}={v}" for k, v in sorted(defines.items()))
    return (
        f"--gpu-architecture={arch}",
        *_BASE_OPTIONS,
        *define_opts,
        *(f"-I{d}" for d in include_dirs),
        *env.extra_nvrtc_options(),
    )


_PTXAS_FUNC = re.compile(r"Function properties for (\S+)\s*\n(.*?)(?=Function properties for|\Z)", re.S)


def parse_ptxas_log(text: str, lowered_name: str) -> dict[str, int | None]:
    """registers, static shared bytes, stack frame and spill stores of one entry from `ptxas -v`."""
    out: dict[str, int | None] = {
        "registers": None,
        "shared_bytes": None,
        "local_bytes": None,
        "spill_bytes": None,
    }
    for match in _PTXAS_FUNC.finditer(text):
        if match.group(1) != lowered_name:
            continue
        body = match.group(2)
        patterns = {
            "local_bytes": r"(\d+) bytes stack frame",
            "spill_bytes": r"(\d+) bytes spill stores",
            "registers": r"Used (\d+) registers",
            "shared_bytes": r"(\d+) bytes smem",
        }
        for key, pattern in patterns.items():
            found = re.search(pattern, body)
            if found:
                out[key] = int(found.group(1))
        if out["shared_bytes"] is None and out["registers"] is not None:
            out["shared_bytes"] = 0  # ptxas omits "smem" when a kernel uses none
    return out


def _run_nvrtc(source: Path, expr: str, options: tuple[str, ...]) -> tuple[bytes, str, str]:
    """Compile one name expression; returns (cubin, lowered name, log) or raises KernelCompileError."""
    nvrtc = _nvrtc()
    (prog,) = _check(
        nvrtc.nvrtcCreateProgram(source.read_bytes(), source.name.encode(), 0, [], []), "nvrtcCreateProgram"
    )
    try:
        _check(nvrtc.nvrtcAddNameExpression(prog, expr.encode()), "nvrtcAddNameExpression")
        encoded = [o.encode() for o in options]
        (result,) = nvrtc.nvrtcCompileProgram(prog, len(encoded), encoded)
        (log_size,) = _check(nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
        log_buf = b" " * log_size
        _check(nvrtc.nvrtcGetProgramLog(prog, log_buf), "nvrtcGetProgramLog")
        log_text = log_buf.rstrip(b"\0 ").decode(errors="replace")
        if result != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            _, err_name = nvrtc.nvrtcGetErrorString(result)
            raise KernelCompileError(
                f"NVRTC could not compile kernel {expr} from {source} ({err_name.decode()})\n"
                f"options: {' '.join(options)}\n--- NVRTC log ---\n{log_text}",
                kernel=expr,
                options=options,
                nvrtc_log=log_text,
            )
        (lowered,) = _check(nvrtc.nvrtcGetLoweredName(prog, expr.encode()), "nvrtcGetLoweredName")
        (size,) = _check(nvrtc.nvrtcGetCUBINSize(prog), "nvrtcGetCUBINSize")
        cubin = b" " * size
        _check(nvrtc.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
        return cubin, lowered.decode(), log_text
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


# --------------------------------------------------------------------------- disk cache


def cache_key(digest: str, expr: str, options: Sequence[str], arch: str) -> str:
    """SHA-256 over everything that changes the binary."""
    parts = [
        _CACHE_FORMAT.decode(),
        digest,
        expr,
        arch,
        "nvrtc={}.{}".format(*nvrtc_version()),
        headers.toolkit_fingerprint(),
        *options,
    ]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def _cache_path(key: str, expr: str, arch: str) -> Path:
    stem = re.sub(r"[^A-Za-z0-9_]+", "_", expr.split("<", 1)[0])[:48]
    return env.cache_dir() / arch / f"{stem}-{key[:40]}.cfk"


def _read_cache(path: Path, key: str) -> CompiledKernel | None:
    try:
        blob = path.read_bytes()
    except OSError:
        return None
    try:
        magic, meta_len = _HEADER.unpack_from(blob)
        meta = json.loads(blob[_HEADER.size : _HEADER.size + meta_len])
        cubin = blob[_HEADER.size + meta_len :]
        if magic != _CACHE_FORMAT or meta.get("key") != key or not cubin.startswith(_ELF_MAGIC):
            return None
        if len(cubin) != meta["cubin_size"]:
            return None
        return CompiledKernel(
            name_expression=meta["name_expression"],
            lowered_name=meta["lowered_name"],
            cubin=cubin,
            arch=meta["arch"],
            options=tuple(meta["options"]),
            compile_seconds=0.0,
            from_cache=True,
            registers=meta["registers"],
            shared_bytes=meta["shared_bytes"],
            local_bytes=meta["local_bytes"],
            spill_bytes=meta.get("spill_bytes"),
        )
    except (struct.error, ValueError, KeyError, TypeError):
        log.warning("ignoring corrupt kernel cache file %s", path)
        return None


def _write_cache(path: Path, key: str, kernel: CompiledKernel) -> None:
    meta = {
        "key": key,
        "name_expression": kernel.name_expression,
        "lowered_name": kernel.lowered_name,
        "arch": kernel.arch,
        "options": list(kernel.options),
        "registers": kernel.registers,
        "shared_bytes": kernel.shared_bytes,
        "local_bytes": kernel.local_bytes,
        "spill_bytes": kernel.spill_bytes,
        "cubin_size": len(kernel.cubin),
        "compile_seconds": kernel.compile_seconds,
    }
    meta_bytes = json.dumps(meta, sort_keys=True).encode()
    blob = _HEADER.pack(_CACHE_FORMAT, len(meta_bytes)) + meta_bytes + kernel.cubin
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:  # a read-only or full cache must not break compilation
        log.warning("could not write kernel cache file %s: %s", path, exc)


# --------------------------------------------------------------------------- public API

_memo: dict[str, CompiledKernel] = {}
_memo_lock = threading.Lock()
_key_locks: dict[str, threading.Lock] = {}


def _lock_for(key: str) -> threading.Lock:
    with _memo_lock:
        return _key_locks.setdefault(key, threading.Lock())


def compile_kernel(
    source: str,
    kernel: str,
    *,
    template_args: Sequence[str | int] = (),
    defines: Mapping[str, str | int] | None = None,
    arch: str | None = None,
) -> CompiledKernel:
    """Compile kernel<template_args...> from csrc/<source> to a cubin for `arch`, cached.

    source: a file name under cf_compile_kernels/csrc/ (or an absolute path). Looks in the in-process
    memo, then the disk cache (CF_CACHE_DIR), then runs NVRTC. Raises KernelCompileError with the
    kernel, the options and NVRTC's log; FileNotFoundError for a missing source;
    headers.HeadersNotFoundError when no CUDA headers are installed."""
    arch = arch or default_arch()
    path = headers.resolve_source(source)
    include_dirs = headers.include_dirs()
    if path.parent != headers.CSRC_DIR:  # out-of-tree source: its own folder is searched first
        include_dirs = (str(path.parent), *include_dirs)
    options = build_options(arch, defines or {}, include_dirs)
    expr = name_expression(kernel, template_args)
    key = cache_key(headers.source_digest(path, include_dirs), expr, options, arch)

    memo = _memo.get(key)
    if memo is not None:
        return memo
    with _lock_for(key):  # one compile per key per process, even with threads
        memo = _memo.get(key)
        if memo is not None:
            return memo
        cache_file = _cache_path(key, expr, arch)
        compiled = _read_cache(cache_file, key) if env.disk_cache_enabled() else None
        if compiled is None:
            start = time.perf_counter()
            cubin, lowered, log_text = _run_nvrtc(path, expr, options)
            seconds = time.perf_counter() - start
            stats = parse_ptxas_log(log_text, lowered)
            compiled = CompiledKernel(
                name_expression=expr,
                lowered_name=lowered,
                cubin=cubin,
                arch=arch,
                options=options,
                compile_seconds=seconds,
                from_cache=False,
                registers=stats["registers"],
                shared_bytes=stats["shared_bytes"],
                local_bytes=stats["local_bytes"],
                spill_bytes=stats["spill_bytes"],
            )
            if env.disk_cache_enabled():
                _write_cache(cache_file, key, compiled)
            if env.verbose():
                log.info("compiled %s for %s in %.2f s", expr, arch, seconds)
        elif env.verbose():
            log.info("kernel cache hit: %s (%s)", expr, cache_file)
        _memo[key] = compiled
        return compiled


def clear_memo() -> None:
    """Forget the in-process memo (tests use it to exercise the disk cache)."""
    with _memo_lock:
        _memo.clear()
