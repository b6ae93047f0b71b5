#!/usr/bin/env bash
# Round 27c (2026-12-07): the issue tables' rows not re-timed since the defaults changed. FFN batch 4 and 16, bf16
# and fp16, beside Inductor (batch 4-16 run the cluster kernel); attention Llama-2-7B batch 1 (now the claimed-tile
# kernel by default) beside Inductor, bf16 and fp16, 1024 and 4096 cached.
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
FINAL=${OUT:-/tmp/cf-final}; mkdir -p "$FINAL"
t0=$SECONDS
timeout 75 python3 benchmarks/attention.py --no-prefetch --models llama-2-7b --dtypes bf16 fp16 --batches 1 \
  --seqs 1024 4096 --json "$FINAL/rows_attn_l2.json" > "$FINAL/attn.log" 2>&1
echo "attention rc $?"; grep -E " ours |Error" "$FINAL/attn.log" | cut -c1-170
echo "[attention at $((SECONDS - t0)) s]"
timeout 190 python3 benchmarks/ffn.py --dtypes bf16 fp16 --batches 4 16 --rows-out "$FINAL/rows_ffn_b4_16.json" \
  > "$FINAL/ffn.log" 2>&1
echo "ffn rc $?"; grep -E "^\| |Error" "$FINAL/ffn.log" | cut -c1-120
echo "[ffn at $((SECONDS - t0)) s]"
