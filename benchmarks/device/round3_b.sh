#!/usr/bin/env bash
# Device call B of round 3 (~5 min): FFN dyn_down, MLA split/lastmerge, then the backend GPU tests.
# Everything lands in one archive ($OUT/round3_b.tgz): the device tool returns at most 8 files.
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
FINAL=${OUT:-/tmp/cf-final}; export OUT=/tmp/cf-out; mkdir -p "$OUT" "$FINAL"
t0=$SECONDS
# (FFN: ffn_dyn.sh ran here -- run 6; removed with the dyn_down flag, benchmarks/NOTES-ffn.md)
bash benchmarks/device/mla_chunks.sh 2>&1 | tail -14; echo "[mla at $((SECONDS - t0)) s]"
timeout 150 python3 -m pytest -q -p no:cacheprovider -rfE tests/gpu/test_backend_gpu.py 2>&1 \
  | tee "$OUT/backend_tests.log" | tail -6; echo "[backend tests at $((SECONDS - t0)) s]"
tar czf "$FINAL/round3_b.tgz" -C "$OUT" .
