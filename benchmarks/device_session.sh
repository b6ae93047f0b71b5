#!/usr/bin/env bash
# One call on the GPU machine (device time is scarce: batch it): every GPU test, then the end-to-end
# decode benchmark. Logs and rows land under $OUT; bring e2e.json back and append it here with
#   python3 benchmarks/e2e.py --append e2e.json
# Budget seen 2026-11-23 on an H100: tests/gpu ~5 min; e2e ~5 min per small model (5 compiles each).
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/cf-out}
mkdir -p "$OUT"
python3 -m pytest -q -p no:cacheprovider -rfE tests/gpu ${GPU_TEST_ARGS:-} 2>&1 | tee "$OUT/gpu-tests.log" | tail -15
# shellcheck disable=SC2086
python3 benchmarks/e2e.py --models ${E2E_MODELS:-qwen2.5-0.5b llama3.2-1b} ${E2E_ARGS:-} \
    --rows-out "$OUT/e2e.json" 2>&1 | tee "$OUT/e2e.log" | tail -12
