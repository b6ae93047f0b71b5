#!/usr/bin/env bash
# Round 27b (2026-12-07): the streamed FFN hand-off with lane-0 polling and one 128-B line per segment count
# (27 measured it slower than one wait: Llama-2-7B 112.8 vs 100.2 us; 2,112 warps polling two lines), A/B in one
# run, B=1 bf16, no Inductor; the GPU tests of both flow kernels and the backend (MHA batch 1 now runs flow).
# Predicted: streamed <= one wait - 3 us at Llama-3-8B; falsified if streamed is slower anywhere.
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
FINAL=${OUT:-/tmp/cf-final}; mkdir -p "$FINAL"
t0=$SECONDS
timeout 60 python3 benchmarks/ffn.py --no-inductor --dtypes bf16 --batches 1 \
  --variants kernel=flow,onewait=1 kernel=flow kernel=flow,onewait=1 --rows-out "$FINAL/rows_ffn.json" > "$FINAL/ffn.log" 2>&1
echo "ffn rc $?"; grep -E "^variant|Error" "$FINAL/ffn.log" | cut -c1-200
grep -o '"ours_us": [0-9.]*' "$FINAL/ffn.log"
echo "[ffn at $((SECONDS - t0)) s]"
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_kernels_ffn_flow.py tests/gpu/test_kernels_attention_flow.py \
  tests/gpu/test_backend_gpu.py > "$FINAL/tests.log" 2>&1
echo "tests rc $?: $(tail -1 "$FINAL/tests.log")"; grep -E "^(FAILED|ERROR)" "$FINAL/tests.log" | head -12
echo "[tests at $((SECONDS - t0)) s]"
