#!/usr/bin/env bash
# Device call A of round 3 (attention, ~5 min): qkv/v4 quick sweep, v4 timings, mma (the stream variants it
# also ran were removed after that run: benchmarks/NOTES-attention.md, "Round 3 (measured)").
# Everything lands in one archive ($OUT/round3_a.tgz): the device tool returns at most 8 files.
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
FINAL=${OUT:-/tmp/cf-final}; export OUT=/tmp/cf-out; mkdir -p "$OUT" "$FINAL"
t0=$SECONDS
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader
CF_ATTN_QUICK=1 timeout 90 python3 -m pytest -q -p no:cacheprovider -x -rfE tests/gpu/test_kernels_attention.py \
  -k "qkv or v4" 2>&1 | tee "$OUT/attn_qkv_tests.log" | tail -4; echo "[attention qkv/v4 at $((SECONDS - t0)) s]"
timeout 60 python3 benchmarks/attention.py --no-inductor --no-prefetch --phases --dtypes fp16 --batches 1 \
  --seqs 1024 --variants tail v4 --models llama-3-8b qwen2.5-0.5b llama-3.2-1b --json "$OUT/attn_v4.json" 2>&1 \
  | grep -v "^  cumulative" | tail -8; echo "[attention v4 at $((SECONDS - t0)) s]"
bash benchmarks/device/attn_mma.sh 2>&1 | tail -12; echo "[attention mma at $((SECONDS - t0)) s]"
tar czf "$FINAL/round3_a.tgz" -C "$OUT" .
