#!/usr/bin/env bash
# ONE command on the GPU machine for the MLA kernel (issue #6): its GPU tests, then the benchmark.
# Kernels compile cold there (10 instantiations, ~1-8 s each, in parallel); budget <= 360 s on an H100:
# tests ~90 s, benchmark ~60 s of ours + at most --inductor-budget (150 s) of Inductor compiles.
# Logs and rows land under $OUT (mla_rows.json; append it here with benchmarks/results.py or --record).
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/cf-out}
mkdir -p "$OUT"
timeout 170 python3 -m pytest -q -p no:cacheprovider -rfE --maxfail=5 tests/gpu/test_kernels_mla.py ${GPU_TEST_ARGS:-} 2>&1 \
    | tee "$OUT/mla-gpu-tests.log" | tail -15
# shellcheck disable=SC2086
timeout 180 python3 benchmarks/mla.py --inductor-budget ${INDUCTOR_BUDGET:-110} --json "$OUT/mla_rows.json" \
    ${MLA_BENCH_ARGS:-} 2>&1 | tee "$OUT/mla-bench.log" | tail -16
