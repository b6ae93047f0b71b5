"""launch.py and tma.py on the GPU: TMA copies, argument checks, streams, threads, graphs, host cost."""

from __future__ import annotations

import ctypes
import threading
import time

import pytest
import torch

from cf_compile_kernels import kernels_available
from cf_compile_kernels.launch import LaunchError, check_tensor
from cf_compile_kernels.tma import cached_tensor_map, clear_tensor_map_cache, encode_tiled

THREADS = 128
CTYPE = {torch.float16: "__half", torch.bfloat16: "__nv_bfloat16", torch.float32: "float"}
SWIZZLE_ROW_BYTES = 128


def test_kernels_available_on_this_gpu():
    assert kernels_available() == (True, "")


def fill(test_kernel, out: torch.Tensor, **launch_kwargs) -> None:
    k = test_kernel("fill_ones_kernel")
    n = out.numel()
    k.launch(((n + THREADS - 1) // THREADS, 1, 1), (THREADS, 1, 1), [out, ctypes.c_int32(n)], **launch_kwargs)


def test_registers_match_compiler_report(test_kernel):
    k = test_kernel("fill_ones_kernel")
    assert k.attribute("NUM_REGS") == k.compiled.registers


def test_launch_on_current_and_explicit_stream(test_kernel):
    out = torch.zeros(1000, device="cuda")
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        fill(test_kernel, out)  # picks up the current (side) stream
    side.synchronize()
    assert out.eq(1).all()
    out2 = torch.zeros(1000, device="cuda")
    fill(test_kernel, out2, stream=side.cuda_stream)
    side.synchronize()
    assert out2.eq(1).all()


def test_launch_from_a_fresh_thread(test_kernel):
    out = torch.zeros(4096, device="cuda")
    errors: list[BaseException] = []

    def body():
        try:
            fill(test_kernel, out)
            torch.cuda.synchronize()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert not errors, errors
    assert out.eq(1).all()


def test_bad_arguments_raise_before_launch(test_kernel):
    k = test_kernel("fill_ones_kernel")
    out = torch.zeros(8, device="cuda")
    with pytest.raises(TypeError, match="ctypes scalar"):
        k.launch((1, 1, 1), (THREADS, 1, 1), [out, 8])  # a bare int has no width
    with pytest.raises(TypeError, match="CUDA tensors"):
        k.launch((1, 1, 1), (THREADS, 1, 1), [out.cpu(), ctypes.c_int32(8)])
    with pytest.raises(LaunchError, match="cuLaunchKernelEx"):
        k.launch((1, 1, 1), (4096, 1, 1), [out, ctypes.c_int32(8)])  # over 1024 threads


def test_check_tensor_messages():
    t = torch.zeros(4, 64, dtype=torch.float16, device="cuda")
    assert check_tensor("x", t, dtype=torch.float16, shape=(4, None)) is t
    with pytest.raises(TypeError, match="x: dtype torch.float16, expected torch.bfloat16"):
        check_tensor("x", t, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"x: shape \[4, 64\], expected \[4, 32\]"):
        check_tensor("x", t, shape=(4, 32))
    with pytest.raises(ValueError, match="not contiguous"):
        check_tensor("x", t.t())
    with pytest.raises(ValueError, match="16-byte aligned"):
        check_tensor("x", t.view(-1)[1:])
    with pytest.raises(ValueError, match="expected a CUDA tensor"):
        check_tensor("x", t.cpu())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("swizzle", ["none", "128B"])
def test_tma_copy_2d(test_kernel, dtype, swizzle):
    box_cols = SWIZZLE_ROW_BYTES // torch.finfo(dtype).bits * 8  # one 128-byte row
    box_rows = 32
    rows, cols = 100, 3 * box_cols + 8  # partial boxes on both edges (zero-filled, not copied)
    pitch = cols + 24  # a row pitch larger than the row: a strided view
    backing = torch.randn(rows, pitch, device="cuda").to(dtype)
    src = backing[:, :cols]
    dst = torch.full((rows, cols), float("nan"), device="cuda").to(dtype)
    tmap = encode_tiled(src, (box_rows, box_cols), swizzle=swizzle, l2_promotion="L2_128B")
    k = test_kernel(
        "tma_copy_2d_kernel", CTYPE[dtype], box_rows, box_cols, "true" if swizzle == "128B" else "false"
    )
    grid = ((cols + box_cols - 1) // box_cols, (rows + box_rows - 1) // box_rows, 1)
    k.launch(grid, (THREADS, 1, 1), [tmap, dst, ctypes.c_int32(rows), ctypes.c_int32(cols)])
    torch.cuda.synchronize()
    assert torch.equal(dst, src)


def test_tma_copy_3d(test_kernel):
    d0, d1, d2 = 5, 10, 72
    bz, by, bx = 2, 4, 32
    src = torch.randn(d0, d1, d2, device="cuda")
    dst = torch.full_like(src, float("nan"))
    tmap = encode_tiled(src, (bz, by, bx))
    k = test_kernel("tma_copy_3d_kernel", "float", bz, by, bx)
    grid = ((d2 + bx - 1) // bx, (d1 + by - 1) // by, (d0 + bz - 1) // bz)
    k.launch(grid, (THREADS, 1, 1), [tmap, dst, ctypes.c_int32(d0), ctypes.c_int32(d1), ctypes.c_int32(d2)])
    torch.cuda.synchronize()
    assert torch.equal(dst, src)


def test_tensor_map_cache_and_graph_replay(test_kernel):
    clear_tensor_map_cache()
    rows, cols, box_rows, box_cols = 64, 128, 32, 64
    weight = torch.randn(rows, cols, device="cuda").half()
    a = cached_tensor_map(weight, (box_rows, box_cols))
    assert cached_tensor_map(weight, (box_rows, box_cols)) is a
    assert cached_tensor_map(weight, (box_rows, box_cols // 2)) is not a
    assert a.raw_bytes() == encode_tiled(weight, (box_rows, box_cols)).raw_bytes()
    dst = torch.empty_like(weight)
    k = test_kernel("tma_copy_2d_kernel", "__half", box_rows, box_cols, "false")
    args = [a, dst, ctypes.c_int32(rows), ctypes.c_int32(cols)]
    grid = (cols // box_cols, rows // box_rows, 1)
    k.launch(grid, (THREADS, 1, 1), args)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        k.launch(grid, (THREADS, 1, 1), args)
    weight.copy_(torch.randn_like(weight))  # same pointer: the map stays valid
    dst.zero_()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(dst, weight)


def test_tensor_map_rejects_bad_layouts():
    t = torch.randn(16, 36, device="cuda")  # 144-byte rows: fine
    with pytest.raises(ValueError, match="multiple of 16 bytes"):
        encode_tiled(torch.randn(16, 37, device="cuda")[:, :36], (8, 32))  # 148-byte row pitch
    with pytest.raises(ValueError, match="swizzle 64B"):
        encode_tiled(t, (8, 32), swizzle="64B")  # 128-byte box rows do not fit a 64-byte swizzle
    with pytest.raises(TypeError, match="float16, bfloat16, float32"):
        encode_tiled(t.double(), (8, 16))


def _median_us(fn, repeats: int = 5, inner: int = 1000) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - start) / inner * 1e6)
        torch.cuda.synchronize()
    return sorted(samples)[len(samples) // 2]


def test_per_launch_host_cost(test_kernel):
    """Host cost of the launch path, printed for the report; bounded loosely to catch regressions."""
    from cuda.bindings import driver

    from cf_compile_kernels.launch import _raw_stream

    out = torch.zeros(1 << 20, device="cuda")
    k = test_kernel("fill_ones_kernel")
    grid, block = (out.numel() // THREADS, 1, 1), (THREADS, 1, 1)
    two = [out, ctypes.c_int32(out.numel())]
    sixteen = two + [ctypes.c_int32(0)] * 14  # extra parameters are ignored by the kernel's layout
    for _ in range(100):
        k.launch(grid, block, two)
    torch.cuda.synchronize()
    costs = {
        "launch, 2 args": _median_us(lambda: k.launch(grid, block, two)),
        "launch, 2 args + 14 scalars": _median_us(lambda: k.launch(grid, block, sixteen)),
        "launch with cluster (2,1,1)": _median_us(lambda: k.launch(grid, block, two, cluster=(2, 1, 1))),
        "  of which current stream": _median_us(lambda: _raw_stream(0)),
        "  of which cuCtxGetCurrent": _median_us(driver.cuCtxGetCurrent),
    }
    print()
    for what, us in costs.items():
        print(f"host cost {what}: {us:.2f} us (median of 5 x 1000)")
    assert costs["launch, 2 args"] < 50
