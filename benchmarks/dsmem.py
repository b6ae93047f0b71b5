"""DSMEM vs global memory: cluster all-reduce and all-gather latency and bandwidth (cluster.cuh).

For each cluster size N and message size (bytes per CTA) it times the collective_test_kernel of
csrc/collectives_test.cu looping the collective `iters` times inside one launch, so the per-call
time is (T(iters_hi) - T(iters_lo)) / (iters_hi - iters_lo): launch and load/store overheads cancel.
  latency:   one cluster alone on the GPU (ours_us: DSMEM, global_us: the same exchange through
             global memory/L2 with the same cluster barriers);
  bandwidth: num_SMs // N clusters at once; GB/s = bytes every CTA reads (N messages) / time.
Each variant is checked against a CPU reference on fresh random data before it is timed.

    PYTHONPATH=. python benchmarks/dsmem.py [--quick] [--no-record]
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results  # noqa: E402

from cf_compile_kernels.build import compile_kernel  # noqa: E402
from cf_compile_kernels.launch import load_kernel  # noqa: E402

OP_SUM, OP_GATHER = 0, 2  # enum Collective in collectives_test.cu
THREADS = 256
FLOAT_BYTES = 4
MAX_SMEM = 227 * 1024  # opt-in dynamic shared memory per CTA on sm_90
ITERS_LO, ITERS_HI = 20, 220
REPEATS = 15


def smem_bytes(n: int, length: int, op: int) -> int:
    out_len = n * length if op == OP_GATHER else length
    return ((length + 3) // 4 * 4 + out_len) * FLOAT_BYTES


def reference(x: torch.Tensor, n: int, op: int) -> torch.Tensor:
    groups = x.cpu().view(-1, n, x.shape[1])
    if op == OP_GATHER:
        return groups.reshape(-1, 1, n * x.shape[1]).expand(-1, n, -1).reshape(-1, n * x.shape[1])
    acc = groups[:, 0].clone()
    for r in range(1, n):
        acc = acc + groups[:, r]
    return acc.repeat_interleave(n, dim=0)


def time_variant(n: int, length: int, op: int, use_global: bool, clusters: int) -> float:
    """Microseconds per collective call, after checking the result."""
    kernel = load_kernel(
        compile_kernel(
            "collectives_test.cu",
            "collective_test_kernel",
            template_args=(n, length, op, str(use_global).lower()),
        )
    )
    ctas = clusters * n
    out_len = n * length if op == OP_GATHER else length
    x = torch.randn(ctas, length, device="cuda")
    out = torch.full((ctas, out_len), float("nan"), device="cuda")
    exchange = torch.empty(ctas, length, device="cuda")
    smem = smem_bytes(n, length, op)

    def launch(iters: int) -> None:
        kernel.launch(
            (ctas, 1, 1),
            (THREADS, 1, 1),
            [x, out, exchange, ctypes.c_int32(iters)],
            shared_bytes=smem,
            cluster=(n, 1, 1),
        )

    launch(1)
    torch.cuda.synchronize()
    if not torch.equal(out.cpu(), reference(x, n, op)):
        raise AssertionError(f"wrong result: n={n} len={length} op={op} global={use_global}")

    def median_ms(iters: int) -> float:
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        samples = []
        for _ in range(REPEATS):
            start.record()
            launch(iters)
            stop.record()
            stop.synchronize()
            samples.append(start.elapsed_time(stop))
        return statistics.median(samples)

    launch(ITERS_HI)  # warm
    lo, hi = median_ms(ITERS_LO), median_ms(ITERS_HI)
    return (hi - lo) * 1e3 / (ITERS_HI - ITERS_LO)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes")
    parser.add_argument("--no-record", action="store_true", help="print only, do not append to results files")
    args = parser.parse_args()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    sizes = [2, 4, 8, 16]
    messages = [256, 4096, 65536] if args.quick else [256, 1024, 4096, 16384, 65536]
    rows = []
    for op, op_name in ((OP_SUM, "all-reduce"), (OP_GATHER, "all-gather")):
        for n in sizes:
            for msg in messages:
                length = msg // FLOAT_BYTES
                if smem_bytes(n, length, op) > MAX_SMEM:
                    continue  # gathered result does not fit in one CTA's shared memory
                full = sms // n
                lat_d = time_variant(n, length, op, False, 1)
                lat_g = time_variant(n, length, op, True, 1)
                full_d = time_variant(n, length, op, False, full)
                full_g = time_variant(n, length, op, True, full)
                read_bytes = full * n * n * msg  # every CTA reads N messages
                row = results.make_row(
                    "dsmem",
                    {
                        "op": op_name,
                        "cluster": n,
                        "msg_bytes": msg,
                        "threads": THREADS,
                        "full_clusters": full,
                    },
                    ours_us=lat_d,
                    global_us=lat_g,
                    ours_full_us=full_d,
                    global_full_us=full_g,
                    ours_GBps=read_bytes / full_d / 1e3,
                    global_GBps=read_bytes / full_g / 1e3,
                )
                rows.append(row)
                print(
                    f"{op_name:10s} N={n:2d} msg={msg:6d}B  latency dsmem {lat_d:7.3f} us  global {lat_g:7.3f} us  "
                    f"| full GPU dsmem {full_d:7.3f} us ({row['ours_GBps']:6.0f} GB/s)  global {full_g:7.3f} us "
                    f"({row['global_GBps']:6.0f} GB/s)",
                    flush=True,
                )
    if not args.no_record:
        results.append(
            rows,
            title="DSMEM vs global-memory cluster collectives (benchmarks/dsmem.py)",
            method=__doc__.split("\n\n")[1],
            columns=[
                "config.op",
                "config.cluster",
                "config.msg_bytes",
                "ours_us",
                "global_us",
                "ours_full_us",
                "global_full_us",
                "ours_GBps",
                "global_GBps",
            ],
        )


if __name__ == "__main__":
    main()
