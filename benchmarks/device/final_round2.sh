#!/usr/bin/env bash
# One device call for round 2 of the kernels (2026-11-23): attention, FFN and MLA variants side by side,
# then the backend's GPU tests touched this round (lean graph, accuracy-judged kernels). ~400 s on an H100.
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/cf-out}; mkdir -p "$OUT"
t0=$SECONDS
bash benchmarks/device/attn2.sh 2>&1 | tail -30; echo "[attention at $((SECONDS - t0)) s]"
bash benchmarks/device/ffn2.sh 2>&1 | tail -30; echo "[ffn at $((SECONDS - t0)) s]"
bash benchmarks/device/mla2.sh 2>&1 | tail -30; echo "[mla at $((SECONDS - t0)) s]"
timeout 75 python3 -m pytest -q -p no:cacheprovider -rfE tests/gpu/test_backend_gpu.py \
  -k "lean_graph or (match_eager and (qwen2.5 or llama3-8b))" 2>&1 | tee "$OUT/backend.log" | tail -6
echo "[backend tests at $((SECONDS - t0)) s]"
