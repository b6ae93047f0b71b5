"""NVRTC build and cubin cache (CPU only): what compile_kernel promises, checked without a GPU."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from cf_compile_kernels import build, kernels_available
from cf_compile_kernels.build import KernelCompileError, compile_kernel

REPO = Path(__file__).resolve().parents[1]

KERNEL_SOURCE = textwrap.dedent(
    """
    #include "scale.cuh"
    template <int N, typename T>
    __global__ void scale_kernel(T* x) {
      __shared__ T tile[N];
      tile[threadIdx.x] = x[threadIdx.x];
      __syncthreads();
      x[threadIdx.x] = tile[N - 1 - threadIdx.x] * T(SCALE_FACTOR);
    }
    """
)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """A fresh CF_CACHE_DIR and an empty in-process memo for each test."""
    path = tmp_path / "cache"
    monkeypatch.setenv("CF_CACHE_DIR", str(path))
    monkeypatch.delenv("CF_DISABLE_DISK_CACHE", raising=False)
    build.clear_memo()
    yield path
    build.clear_memo()


@pytest.fixture
def source(tmp_path) -> Path:
    """An out-of-tree kernel source that includes a quoted header from its own folder."""
    (tmp_path / "scale.cuh").write_text("#pragma once\n#define SCALE_FACTOR 2\n")
    path = tmp_path / "scale.cu"
    path.write_text(KERNEL_SOURCE)
    return path


def compile_scale(source: Path, n: int = 64, **kwargs) -> build.CompiledKernel:
    return compile_kernel(str(source), "scale_kernel", template_args=(n, "float"), arch="sm_90a", **kwargs)


def cache_files(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.rglob("*.cfk"))


def test_compiles_to_sass_with_resources(cache_dir, source):
    k = compile_scale(source)
    assert k.cubin.startswith(b"\x7fELF")  # SASS in an ELF cubin, not PTX text
    assert k.name_expression == "scale_kernel<64, float>"
    assert k.lowered_name.startswith("_Z") and "scale_kernel" in k.lowered_name
    assert k.arch == "sm_90a" and "--gpu-architecture=sm_90a" in k.options
    assert "-std=c++17" in k.options
    assert not k.from_cache and k.compile_seconds > 0
    assert k.registers and k.registers > 0
    assert k.shared_bytes == 64 * 4  # the static tile
    assert k.local_bytes == 0 and k.spill_bytes == 0


def test_second_compile_comes_from_memo_then_disk(cache_dir, source):
    first = compile_scale(source)
    assert compile_scale(source) is first  # in-process memo
    build.clear_memo()
    again = compile_scale(source)
    assert again.from_cache and again.compile_seconds == 0.0
    assert again.cubin == first.cubin and again.lowered_name == first.lowered_name
    assert again.registers == first.registers and again.shared_bytes == first.shared_bytes
    assert len(cache_files(cache_dir)) == 1  # CF_CACHE_DIR honoured


@pytest.mark.parametrize(
    "change",
    ["define", "template_arg", "included_header", "source"],
)
def test_changes_miss_the_cache(cache_dir, source, change):
    compile_scale(source)
    build.clear_memo()
    if change == "define":
        k = compile_scale(source, defines={"EXTRA": 1})
        assert "-DEXTRA=1" in k.options
    elif change == "template_arg":
        k = compile_scale(source, n=32)
    elif change == "included_header":
        (source.parent / "scale.cuh").write_text("#pragma once\n#define SCALE_FACTOR 3\n")
        k = compile_scale(source)
    else:
        source.write_text(KERNEL_SOURCE + "\n// edited\n")
        k = compile_scale(source)
    assert not k.from_cache
    assert len(cache_files(cache_dir)) == 2


def test_arch_enters_key(cache_dir, source):
    a = compile_scale(source)
    b = compile_kernel(str(source), "scale_kernel", template_args=(64, "float"), arch="sm_100a")
    assert not b.from_cache and b.arch == "sm_100a" and b.cubin != a.cubin


def test_disabled_disk_cache_writes_nothing(cache_dir, source, monkeypatch):
    monkeypatch.setenv("CF_DISABLE_DISK_CACHE", "1")
    compile_scale(source)
    assert cache_files(cache_dir) == []


def test_corrupt_cache_file_is_recompiled(cache_dir, source):
    good = compile_scale(source)
    (path,) = cache_files(cache_dir)
    path.write_bytes(path.read_bytes()[:100])  # truncated, as by a crash without atomic rename
    build.clear_memo()
    k = compile_scale(source)
    assert not k.from_cache and k.cubin == good.cubin
    build.clear_memo()
    assert compile_scale(source).from_cache  # rewritten whole


def test_broken_source_error_holds_log_kernel_and_options(cache_dir, tmp_path):
    bad = tmp_path / "bad.cu"
    bad.write_text("template <int N> __global__ void broken(float* x) { x[0] = undeclared_name; }\n")
    with pytest.raises(KernelCompileError) as info:
        compile_kernel(str(bad), "broken", template_args=(4,), arch="sm_90a", defines={"FLAG": 7})
    message = str(info.value)
    assert "broken<4>" in message  # the kernel
    assert "--gpu-architecture=sm_90a" in message and "-DFLAG=7" in message  # the options
    assert 'identifier "undeclared_name" is undefined' in message  # NVRTC's log
    assert info.value.kernel == "broken<4>" and "-DFLAG=7" in info.value.options
    assert cache_files(cache_dir) == []


def test_missing_source_is_a_clear_error(cache_dir):
    with pytest.raises(FileNotFoundError, match="no_such_kernel.cu"):
        compile_kernel("no_such_kernel.cu", "k")


def test_name_expression_formats_template_arguments():
    assert build.name_expression("k") == "k"
    assert build.name_expression("k", (4, "__half", True, False)) == "k<4, __half, true, false>"


def test_ptxas_report_is_parsed_per_entry():
    log = textwrap.dedent(
        """\
        ptxas info    : Compiling entry function '_Z1aPf' for 'sm_90a'
        ptxas info    : Function properties for _Z1aPf
        ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
        ptxas info    : Used 10 registers, used 1 barriers, 256 bytes smem
        ptxas info    : Compiling entry function '_Z1bPf' for 'sm_90a'
        ptxas info    : Function properties for _Z1bPf
        ptxas         .     48 bytes stack frame, 40 bytes spill stores, 40 bytes spill loads
        ptxas info    : Used 255 registers, used 0 barriers
        """
    )
    assert build.parse_ptxas_log(log, "_Z1aPf") == {
        "registers": 10,
        "shared_bytes": 256,
        "local_bytes": 0,
        "spill_bytes": 0,
    }
    assert build.parse_ptxas_log(log, "_Z1bPf") == {
        "registers": 255,
        "shared_bytes": 0,
        "local_bytes": 48,
        "spill_bytes": 40,
    }


_WORKER = """
import sys
from cf_compile_kernels import build
k = build.compile_kernel(sys.argv[1], "scale_kernel", template_args=(64, "float"), arch="sm_90a")
print("cache" if k.from_cache else "compiled", len(k.cubin))
"""


def _worker(source: Path, cache_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "CF_CACHE_DIR": str(cache_dir), "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", _WORKER, str(source)], env=env, stdout=subprocess.PIPE, text=True
    )


def test_concurrent_processes_share_one_cache(cache_dir, source):
    procs = [_worker(source, cache_dir) for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    sizes = {int(out[1]) for out in outputs}
    assert len(sizes) == 1
    assert len(cache_files(cache_dir)) == 1
    assert not list(cache_dir.rglob("*.tmp"))  # no stray temporaries
    third = _worker(source, cache_dir)  # a warm start compiles nothing
    assert third.communicate(timeout=120)[0].split()[0] == "cache"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answer")
def test_kernels_available_explains_itself_without_gpu():
    ok, reason = kernels_available()
    assert ok is False
    assert reason and "\n" not in reason and "CUDA" in reason


def test_launch_arguments_are_checked_without_a_gpu():
    from cf_compile_kernels.launch import check_tensor, pack_args

    with pytest.raises(TypeError, match="ctypes scalar"):
        pack_args([3])
    with pytest.raises(TypeError, match="CUDA tensors"):
        pack_args([torch.zeros(4)])
    scalars = [ctypes.c_int32(-7), ctypes.c_float(1.5), None]
    arena = pack_args(scalars)  # owns the value slots the pointers point into
    params = arena.pointers
    assert ctypes.cast(params[0], ctypes.POINTER(ctypes.c_int32)).contents.value == -7
    assert ctypes.cast(params[1], ctypes.POINTER(ctypes.c_float)).contents.value == 1.5
    assert ctypes.cast(params[2], ctypes.POINTER(ctypes.c_void_p)).contents.value is None  # null pointer
    with pytest.raises(ValueError, match="x: on cpu, expected a CUDA tensor"):
        check_tensor("x", torch.zeros(4))
    with pytest.raises(TypeError, match="w: dtype torch.float32, expected torch.float16"):
        check_tensor("w", torch.zeros(4), dtype=torch.float16)
