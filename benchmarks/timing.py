"""GPU timing shared by the benchmarks: CUDA-graph replay time and the copy-bandwidth ceiling.

Graph replays keep launch gaps out of per-block numbers; the floor of every benchmark divides the
bytes a block must move by ``copy_bandwidth()`` measured in the same run.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

import torch

COPY_BYTES = 1 << 30       # read + written by the bandwidth probe: 20x the H100's L2
WARMUP_REPLAYS = 5


def graph_time_us(calls: Sequence[Callable[[], object]], replays: int = 50) -> float:
    """Median microseconds per call of a CUDA graph holding ``calls`` in sequence.

    The calls run once on a side stream first (compile, autotune, allocate outside the capture)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for call in calls:
            call()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    for _ in range(WARMUP_REPLAYS):
        graph.replay()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / len(calls))
    return statistics.median(times)


def copy_bandwidth() -> tuple[float, dict[str, float]]:
    """Device-to-device copy bandwidth in bytes/s (read + written): the better of a memcpy-style
    ``copy_`` (measured 2.4 TB/s on the H100 inside a graph) and an elementwise copy kernel (2.97)."""
    src = torch.empty(COPY_BYTES // 4, dtype=torch.float16, device="cuda").normal_()
    dst = torch.empty_like(src)
    measured = {
        "memcpy": COPY_BYTES / (graph_time_us([lambda: dst.copy_(src)], replays=20) * 1e-6),
        "kernel": COPY_BYTES / (graph_time_us([lambda: torch.neg(src, out=dst)], replays=20) * 1e-6),
    }
    return max(measured.values()), measured
