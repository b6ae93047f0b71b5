#!/usr/bin/env bash
# Device call: validate attention v3 (tests, phases, speed) and the backend GPU tests. ~9 min on an H100.
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/cf-out}; mkdir -p "$OUT"
nvidia-smi -L; python3 -c 'import torch, transformers; print(torch.__version__, transformers.__version__)'
t0=$SECONDS
timeout 120 python3 -m cf_compile_kernels check --arch sm_90a --jobs 16 2>&1 | tail -3
echo "[check done at $((SECONDS-t0)) s]"
timeout 170 python3 -m pytest -q -p no:cacheprovider -x -rfE tests/gpu/test_kernels_attention.py 2>&1 | tee "$OUT/attn-tests.log" | tail -8
echo "[attention tests done at $((SECONDS-t0)) s]"
timeout 110 python3 benchmarks/attention.py --no-inductor --phases --batches 1 16 --dtypes fp16 --json "$OUT/attn-phases.json" 2>&1 | tail -40
echo "[phases done at $((SECONDS-t0)) s]"
timeout 140 python3 -m pytest -q -p no:cacheprovider -rfE tests/gpu/test_backend_gpu.py 2>&1 | tee "$OUT/backend-tests.log" | tail -8
echo "[backend tests done at $((SECONDS-t0)) s]"
