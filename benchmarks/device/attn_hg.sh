#!/usr/bin/env bash
# Heads per pass (HG) vs instruction fetch (<= ~200 s): ncu found ~35% of Qwen2.5-0.5B's warp stall samples in
# "no instruction" (phase 4 alone executes ~2300 distinct SASS instructions at HG=8, once per CTA). HG=4/2/1 runs
# phase 4 in 2/4/8 passes over the same, smaller code (the K/V chunk re-read from L1/L2). fp16 B=1 1024 cached,
# Qwen2.5-0.5B (G=7) and Llama-3-8B (G=4), with phase cuts; the err column checks each against its reference.
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
for hg in 8 4 2 1; do   # compile the four instantiations side by side first (disk cache)
  python3 -c "
import torch, cf_compile_kernels.attention as A
for dt in (torch.float16,):
    A.compiled_kernel(dt, 1, $hg)" &
done; wait
for hg in 8 4 2 1; do
  echo "== max heads per pass $hg"
  python3 - <<PY 2>&1 | grep -E "ours|cut|^model|llama|qwen" | head -12
import sys, runpy
import cf_compile_kernels.attention as A
A.MAX_HEADS_PER_PASS = $hg
sys.argv = ["attention.py", "--no-inductor", "--no-prefetch", "--phases", "--models", "qwen2.5-0.5b", "llama-3-8b",
            "--batches", "1", "--seqs", "1024", "--dtypes", "fp16"]
runpy.run_path("benchmarks/attention.py", run_name="__main__")
PY
done
