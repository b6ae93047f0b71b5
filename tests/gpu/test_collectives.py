"""cluster.cuh collectives on the GPU: results vs torch, bitwise determinism, CUDA-graph replay.

Run as a script (`python tests/gpu/test_collectives.py`) it executes one small pass of every
collective, for compute-sanitizer (racecheck / memcheck / synccheck)."""

from __future__ import annotations

import ctypes
import sys

import pytest
import torch

OP_SUM, OP_MAX, OP_GATHER = 0, 1, 2  # enum Collective in collectives_test.cu
OPS = {"sum": OP_SUM, "max": OP_MAX, "gather": OP_GATHER}
THREADS = 128
FLOAT_BYTES = 4
CLUSTERS = 6  # clusters per launch: several, so cross-cluster mix-ups would show
SIZES = [2, 3, 4, 5, 6, 7, 8, 16]  # every power of two to 16 plus non-powers of two
LENGTHS = [99, 1024]  # 99: scalar path (not a multiple of 4); 1024: 16-byte vector path


def aligned_floats(n: int) -> int:
    return (n + 3) // 4 * 4


def out_length(n: int, length: int, op: int) -> int:
    return n * length if op == OP_GATHER else length


def collective_smem(n: int, length: int, op: int) -> int:
    """Dynamic smem of collective_test_kernel: send, then recv."""
    return (aligned_floats(length) + out_length(n, length, op)) * FLOAT_BYTES


def merge_smem(n: int, rows: int, d: int) -> int:
    floats = (
        aligned_floats(rows * d + 2 * rows) + aligned_floats(rows * d) + aligned_floats(2 * rows) + rows * n
    )
    return floats * FLOAT_BYTES


def run_collective(
    make, n: int, length: int, op: int, x: torch.Tensor, *, global_memory: bool = False, iters: int = 1
) -> torch.Tensor:
    ctas = x.shape[0]
    out = torch.full((ctas, out_length(n, length, op)), float("nan"), device=x.device)  # poisoned
    exchange = torch.empty((ctas, length), device=x.device)
    k = make("collective_test_kernel", n, length, op, "true" if global_memory else "false")
    k.launch(
        (ctas, 1, 1),
        (THREADS, 1, 1),
        [x, out, exchange, ctypes.c_int32(iters)],
        shared_bytes=collective_smem(n, length, op),
        cluster=(n, 1, 1),
    )
    return out


def sequential_reference(x: torch.Tensor, n: int, op: int) -> torch.Tensor:
    """fp32, rank order 0..n-1, on the CPU: what every CTA must hold, bit for bit."""
    groups = x.cpu().view(-1, n, x.shape[1])
    if op == OP_GATHER:
        return groups.reshape(-1, 1, n * x.shape[1]).expand(-1, n, -1).reshape(-1, n * x.shape[1])
    acc = groups[:, 0].clone()
    for r in range(1, n):
        acc = torch.maximum(acc, groups[:, r]) if op == OP_MAX else acc + groups[:, r]
    return acc.repeat_interleave(n, dim=0)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("op", list(OPS.values()), ids=list(OPS))
def test_collective_matches_torch(test_kernel, n, length, op):
    x = torch.randn(CLUSTERS * n, length, device="cuda")
    out = run_collective(test_kernel, n, length, op, x)
    torch.cuda.synchronize()
    assert not out.isnan().any(), "some output element was not written"
    expected = sequential_reference(x, n, op)
    assert torch.equal(out.cpu(), expected)  # bitwise: fixed rank order, fp32
    if op == OP_SUM:  # and close to the exact sum
        exact = x.double().cpu().view(-1, n, length).sum(1).repeat_interleave(n, dim=0)
        assert (out.cpu().double() - exact).norm() / exact.norm() < 1e-6


@pytest.mark.parametrize("n", [4, 16])
def test_global_memory_exchange_matches(test_kernel, n):
    """The benchmark's baseline must compute the same thing."""
    x = torch.randn(CLUSTERS * n, 1024, device="cuda")
    for op in (OP_SUM, OP_GATHER):
        out = run_collective(test_kernel, n, 1024, op, x, global_memory=True)
        assert torch.equal(out.cpu(), sequential_reference(x, n, op))


def merge_reference(o, m, lsum, n, log2):
    """fp64 merge of (m, lsum, o) partials grouped by cluster; returns O (normalised), M, L per cluster."""
    o, m, lsum = o.double().cpu(), m.double().cpu(), lsum.double().cpu()
    rows, d = o.shape[1], o.shape[2]
    o = o.view(-1, n, rows, d)
    m = m.view(-1, n, rows)
    lsum = lsum.view(-1, n, rows)
    big = m.max(dim=1).values
    shifted = m - big[:, None]
    c = torch.exp2(shifted) if log2 else torch.exp(shifted)
    c = torch.where(torch.isinf(m), torch.zeros_like(c), c)
    total = (c * lsum).sum(1)
    acc = (c[..., None] * o).sum(1)
    return acc / total[..., None], big, total


@pytest.mark.parametrize("n", [2, 3, 4, 6, 8, 16])
@pytest.mark.parametrize("d", [128, 30])  # 128: vector path; 30: scalar path
@pytest.mark.parametrize("log2", [False, True])
def test_merge_softmax(test_kernel, n, d, log2):
    rows = 4
    ctas = CLUSTERS * n
    m = torch.randn(ctas, rows, device="cuda") * 8
    m[1::n, 0] = float("-inf")  # a CTA that saw no logits for row 0
    lsum = torch.rand(ctas, rows, device="cuda") * 10 + 0.1
    lsum[1::n, 0] = 0.0
    o = torch.randn(ctas, rows, d, device="cuda")
    o[1::n, 0] = 0.0
    o_out = torch.full_like(o, float("nan"))
    ml_out = torch.full((ctas, 2 * rows), float("nan"), device="cuda")
    k = test_kernel("merge_softmax_test_kernel", n, rows, d, "true" if log2 else "false")
    k.launch(
        (ctas, 1, 1),
        (THREADS, 1, 1),
        [o, m, lsum, o_out, ml_out, ctypes.c_int32(1)],
        shared_bytes=merge_smem(n, rows, d),
        cluster=(n, 1, 1),
    )
    torch.cuda.synchronize()
    ref_o, ref_m, ref_l = merge_reference(o, m, lsum, n, log2)
    got_o = o_out.cpu().double().view(-1, n, rows, d)
    got_ml = ml_out.cpu().double().view(-1, n, 2 * rows)
    assert not o_out.isnan().any() and not ml_out.isnan().any()
    for r in range(n):  # every CTA holds the same bits
        assert torch.equal(got_o[:, r], got_o[:, 0]) and torch.equal(got_ml[:, r], got_ml[:, 0])
    assert torch.equal(got_ml[:, 0, :rows], ref_m)
    assert ((got_ml[:, 0, rows:] - ref_l).abs() / ref_l).max() < 1e-5
    assert (got_o[:, 0] - ref_o).norm() / ref_o.norm() < 1e-5


@pytest.mark.parametrize("n", [2, 3, 8, 16])
def test_bitwise_identical_over_1000_runs(test_kernel, n):
    op = OP_SUM
    length = 1024
    x = torch.randn(CLUSTERS * n, length, device="cuda") * 1e3  # wide range: order would matter
    first = run_collective(test_kernel, n, length, op, x)
    mismatches = torch.zeros((), dtype=torch.int64, device="cuda")
    for _ in range(999):
        mismatches += (run_collective(test_kernel, n, length, op, x) != first).sum()
    assert mismatches.item() == 0
    groups = first.view(-1, n, length)
    assert torch.equal(groups, groups[:, :1].expand_as(groups))  # all CTAs of a cluster agree


@pytest.mark.parametrize("n", [4, 16])
def test_cuda_graph_capture_and_replay(test_kernel, n):
    op = OP_SUM
    length = 1024
    x = torch.randn(CLUSTERS * n, length, device="cuda")
    out = torch.empty(CLUSTERS * n, length, device="cuda")
    exchange = torch.empty_like(x)
    k = test_kernel("collective_test_kernel", n, length, op, "false")
    # three collective calls per launch: the buffers are reused across barrier phases
    args = [x, out, exchange, ctypes.c_int32(3)]
    smem = collective_smem(n, length, op)
    k.launch((x.shape[0], 1, 1), (THREADS, 1, 1), args, shared_bytes=smem, cluster=(n, 1, 1))  # warm
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        k.launch((x.shape[0], 1, 1), (THREADS, 1, 1), args, shared_bytes=smem, cluster=(n, 1, 1))
    for _ in range(3):
        x.copy_(torch.randn_like(x))
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out.cpu(), sequential_reference(x, n, op))


def _sanitizer_pass() -> None:
    """One launch of each collective at a few sizes, checked; for compute-sanitizer runs."""
    from cf_compile_kernels.build import compile_kernel
    from cf_compile_kernels.launch import load_kernel

    def make(name, *targs):
        return load_kernel(compile_kernel("collectives_test.cu", name, template_args=targs), 0)

    for n in (2, 3, 8, 16):
        for length in (99, 1024):
            for op in OPS.values():
                x = torch.randn(2 * n, length, device="cuda")
                out = run_collective(make, n, length, op, x, iters=2)  # two calls: barrier phases flip
                assert torch.equal(out.cpu(), sequential_reference(x, n, op))
        rows, d = 4, 128
        m, lsum, o = (
            torch.randn(2 * n, rows, device="cuda"),
            torch.rand(2 * n, rows, device="cuda") + 0.1,
            torch.randn(2 * n, rows, d, device="cuda"),
        )
        o_out, ml_out = torch.empty_like(o), torch.empty(2 * n, 2 * rows, device="cuda")
        make("merge_softmax_test_kernel", n, rows, d, "false").launch(
            (2 * n, 1, 1),
            (THREADS, 1, 1),
            [o, m, lsum, o_out, ml_out, ctypes.c_int32(1)],
            shared_bytes=merge_smem(n, rows, d),
            cluster=(n, 1, 1),
        )
        ref_o, _, _ = merge_reference(o, m, lsum, n, False)
        assert (o_out.cpu().double().view(-1, n, rows, d)[:, 0] - ref_o).norm() / ref_o.norm() < 1e-5
    torch.cuda.synchronize()
    print("sanitizer pass: all collectives correct")


if __name__ == "__main__":
    _sanitizer_pass()
    sys.exit(0)
