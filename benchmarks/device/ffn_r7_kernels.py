"""The kernel builds that benchmarks/device/ffn_r7.sh launches (its GPU tests, `-k` DEVICE_TESTS, and its
benchmark variants), as (template args, defines); `--compile` builds them in parallel so no test compiles on
its own.

DEVICE_TESTS is the pytest -k expression of those tests (ffn_r7.sh takes it from here: one list).
The launcher picks the ring from the cluster count the occupancy query returns on the device; here the
counts measured on the H100 (runs 1-5: 30 clusters of 4; one cluster per SM or SM pair otherwise) stand in.
A kernel missed here still compiles on demand: slower, never wrong."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "gpu"))

from cf_compile_kernels import ffn  # noqa: E402
from cf_compile_kernels.build import compile_kernel  # noqa: E402

H100_SMS = 132
H100_CLUSTERS = {4: 30, 2: H100_SMS // 2, 1: H100_SMS, 8: H100_SMS // 8}
BENCH_SHAPES = [(4096, 11008), (896, 4864)]  # Llama-2-7B, Qwen2.5-0.5B
BENCH_BATCHES = (1, 16)
PHASES = {"CF_FFN_PHASES": 1}


def build(hidden: int, inter: int, batch: int, dtype: torch.dtype, tuning: ffn.Tuning | None) -> tuple:
    """(template args, defines) of the launch gated_ffn would make for this shape on the H100."""
    tuning = tuning or ffn.Tuning()
    cluster = tuning.cluster or ffn.choose_cluster_size(hidden)
    clusters = H100_CLUSTERS.get(cluster, H100_SMS // cluster)
    bt = ffn.batch_tiles(batch)
    mode = tuning.mode
    if mode is None:
        mode = ffn.default_mode(hidden, inter, cluster, max(1, (H100_SMS // cluster) * 3 // 4), bt)
    warps, stages = ffn.choose_path(hidden, inter, cluster, clusters, bt, mode)
    stages = stages if tuning.stages is None else tuning.stages
    flags = ffn.DEFAULT_FLAGS if tuning.flags is None else tuning.flags
    args = ffn.template_args(dtype, cluster, bt, tuning.warps or warps, tuning.depth, stages, mode, flags)
    return args, tuple(sorted((PHASES if tuning.phases else {}).items()))


# The GPU tests ffn_r7.sh runs (pytest -k): every prefetch_down test but the random sweep of the variants other
# than whole-prefetch (the default's mode at B <= 8) -- each left out saves a few NVRTC builds and seconds; the
# full file covers them.
DEVICE_TESTS = "(random_config and whole-prefetch and not direct) or (prefetch and not random_config)"


def test_builds() -> list[tuple]:
    """Every launch of the DEVICE_TESTS GPU tests (tests/gpu/test_kernels_ffn.py), plain comparisons included,
    in the order pytest runs them."""
    import test_kernels_ffn as t

    fp16, bf16 = torch.float16, torch.bfloat16
    out = []
    for i in range(t.RANDOM_CONFIGS):
        cfg = t.random_config(i)
        out.append(build(cfg["hidden"], cfg["inter"], cfg["batch"], cfg["dtype"], t.VARIANTS["whole-prefetch"]))
    for batch in (1, 16):
        for v in ("prefetch", "whole-prefetch"):
            tuning = t.VARIANTS[v]
            out.append(build(4096, 11008, batch, bf16, tuning))
            out.append(build(4096, 11008, batch, bf16, dataclasses.replace(tuning, flags=t.EARLY_DEFER)))
    for hidden, inter, batch in t.FLAG_SHAPES:
        for mode in ("split", "whole"):
            for flags in (0, t.PREFETCH, t.EARLY_DEFER | t.PREFETCH):
                out.append(build(hidden, inter, batch, fp16, ffn.Tuning(mode=ffn.MODES[mode], flags=flags)))
    for hidden, inter, batch in t.FLAG_SHAPES:
        for v in ("prefetch-direct", "whole-prefetch-direct"):
            tuning = t.VARIANTS[v]
            out.append(build(hidden, inter, batch, fp16, tuning))
            out.append(build(hidden, inter, batch, fp16, dataclasses.replace(tuning, flags=0)))
    for hidden, inter, batch in [(4096, 11008, 1), (896, 4864, 16)]:
        for mode in ffn.MODES.values():
            out.append(build(hidden, inter, batch, fp16, ffn.Tuning(mode=mode, flags=0)))
            out.append(build(hidden, inter, batch, fp16, ffn.Tuning(mode=mode, flags=t.EARLY_DEFER | t.PREFETCH,
                                                                    phases=True)))
    for v in ("whole-prefetch", "prefetch-direct"):
        out.append(build(2048, 8192, 4, fp16, t.VARIANTS[v]))
    return out


def bench_builds(variants: list[str]) -> set[tuple]:
    """The benchmark's rows (fp16, BENCH_SHAPES x BENCH_BATCHES): default and each variant, plain and timed."""
    from benchmarks.ffn import parse_variant

    out = set()
    for hidden, inter in BENCH_SHAPES:
        for batch in BENCH_BATCHES:
            for spec in ["default", *variants]:
                tuning = parse_variant(spec)
                for phases in (False, True):
                    timed = dataclasses.replace(tuning, phases=phases)
                    out.add(build(hidden, inter, batch, torch.float16, timed))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variants", nargs="*", default=[])
    parser.add_argument("--compile", action="store_true", help="build them (else: only count them)")
    parser.add_argument("--jobs", type=int, default=min(16, os.cpu_count() or 1))
    parser.add_argument("--print-k", action="store_true", help="print the pytest -k expression of the tests")
    args = parser.parse_args()
    # benchmark builds first: if the step is cut short, the timed rows are ready
    jobs = sorted(bench_builds(args.variants), key=str)
    for job in test_builds():  # first use order, without repeats
        if job not in jobs:
            jobs.append(job)
    if args.print_k:
        print(DEVICE_TESTS)
        return
    print(f"{len(jobs)} kernel builds", flush=True)
    if not args.compile:
        return
    started = time.time()

    def one(job):
        template_args, defines = job
        return compile_kernel(ffn.SOURCE, ffn.KERNEL, template_args=template_args, defines=dict(defines))

    # pool.map starts the jobs in list order: cut short, the benchmark's and the first tests' builds are done
    with ThreadPoolExecutor(args.jobs) as pool:
        done = list(pool.map(one, jobs))
    spills = [k.name_expression for k in done if k.spill_bytes or k.local_bytes]
    fresh = sum(not k.from_cache for k in done)
    print(
        f"{len(done)} kernels ({fresh} compiled) in {time.time() - started:.1f} s; spilling: {spills or 'none'}"
    )


if __name__ == "__main__":
    main()
