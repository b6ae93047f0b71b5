#!/usr/bin/env bash
# The first device call of the next session (branch round3): every variant written after the 2026-11-23
# device budget ran out, validated and timed side by side. ~9 min on an H100 (split it in two calls if needed). Decide defaults from it:
#   attention  qkv/v4 bitwise equal to v3/tail (the gather_global barrier fix), stream_kv/stream vs tail,
#              mma (tensor-core q/k/v and o_proj at batch >= 4) vs tail
#   FFN        dyn_down vs the run-5 default (last CTA end minus median end)
#   MLA        split/lastmerge vs chunk
# then run the backend GPU tests and one e2e model with the new defaults (a second call).
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/cf-out}; mkdir -p "$OUT"
t0=$SECONDS
CF_ATTN_QUICK=1 timeout 90 python3 -m pytest -q -p no:cacheprovider -x -rfE tests/gpu/test_kernels_attention.py \
  -k "qkv or v4" 2>&1 | tail -4; echo "[attention qkv/v4 at $((SECONDS - t0)) s]"
bash benchmarks/device/attn_stream.sh 2>&1 | tail -12; echo "[attention stream at $((SECONDS - t0)) s]"
timeout 60 python3 benchmarks/attention.py --no-inductor --no-prefetch --phases --dtypes fp16 --batches 1 \
  --seqs 1024 --variants tail v4 --models llama-3-8b qwen2.5-0.5b llama-3.2-1b --json "$OUT/attn_v4.json" 2>&1 \
  | grep -v "^  cumulative" | tail -8; echo "[attention v4 at $((SECONDS - t0)) s]"
# (FFN: ffn_dyn.sh ran here -- run 6; removed with the dyn_down flag, benchmarks/NOTES-ffn.md)
bash benchmarks/device/mla_chunks.sh 2>&1 | tail -14; echo "[mla at $((SECONDS - t0)) s]"
bash benchmarks/device/attn_mma.sh 2>&1 | tail -12; echo "[attention mma at $((SECONDS - t0)) s]"
