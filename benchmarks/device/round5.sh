#!/usr/bin/env bash
# The next session's first device call (branch round5 = main + r5-attn + r5-split; <= ~5 min on an H100):
#   1. MLA split_mma with the cache-slot fix (GPU tests for split / split_mma / split_mma_all, then timings)
#   2. attention v5 (deep K/V loads, NVRTC-13.0-safe) vs v4_mma: quick GPU tests incl. bitwise v5 == v4_mma, timings
#   3. attention work-split overrides (C, P) at small shapes: GPU tests, timings beside the default
#   4. the default's tensor-core path after mma.cuh's shared tile loop (attn_mma.sh: batch 3-16 sweep, timings)
# Everything in one archive ($OUT/round5.tgz): the device tool returns at most 8 files.
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
FINAL=${OUT:-/tmp/cf-final}; export OUT=/tmp/cf-out; mkdir -p "$OUT" "$FINAL"
t0=$SECONDS
stamp() { echo "[$1 at $((SECONDS - t0)) s]"; }
nvidia-smi --query-gpu=name --format=csv,noheader; python3 -c "from cuda.bindings import nvrtc; print('NVRTC', nvrtc.nvrtcVersion()[1:])"
bash benchmarks/device/mla_r4.sh 2>&1 | tail -12; stamp "mla split_mma"
bash benchmarks/device/attn_v5.sh 2>&1 | tail -12; stamp "attention v5"
bash benchmarks/device/attn_splits.sh 2>&1 | tail -14; stamp "attention splits"
bash benchmarks/device/attn_mma.sh 2>&1 | tail -10; stamp "attention mma path"
tar czf "$FINAL/round5.tgz" -C "$OUT" .
