"""Compile every attention build (2 dtypes x batch buckets x heads per pass) of this checkout's kernel source and
of each earlier source named on the command line, in parallel, into the disk cache, so the GPU tests and
benchmarks that follow never compile one at a time. Prints the spill bytes per source (the device's NVRTC).

    python3 benchmarks/device/build_attention.py [EARLIER_SOURCE ...]
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

import torch

from cf_compile_kernels import attention
from cf_compile_kernels.build import compile_kernel

BUCKETS = (1, 2, 4, 8, 16)
HEADS_PER_PASS = (1, 2, 4, 8)
KEYS = [(dt, bb, hg) for dt in attention.SUPPORTED_DTYPES for bb in BUCKETS for hg in HEADS_PER_PASS]
THREADS = 16


def build(job: tuple[tuple[torch.dtype, int, int], str]):
    (dtype, bucket, hg), source = job
    return compile_kernel(source, attention.KERNEL, template_args=(attention.SUPPORTED_DTYPES[dtype], bucket, hg))


def main() -> None:
    sources = [attention.SOURCE, *sys.argv[1:]]
    with ThreadPoolExecutor(THREADS) as pool:
        built = list(pool.map(build, [(key, source) for source in sources for key in KEYS]))
    for i, source in enumerate(sources):
        kernels = built[i * len(KEYS):(i + 1) * len(KEYS)]
        print(f"{source}: {len(kernels)} builds, {sum(k.spill_bytes for k in kernels)} B spilled")


if __name__ == "__main__":
    main()
