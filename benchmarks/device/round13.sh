#!/usr/bin/env bash
# Round 13 (<= ~7 min on an H100): the two measurements the next steps in NOTES-attention wait for.
#   1. host_profile.py, Qwen2.5-0.5B: host time per compiled step with and without Dynamo's guard evaluation,
#      cProfile's top entries, reduce-overhead beside it (predictions in its docstring)
#   2. attention.py --timeline at batch 16 (bf16, 1024 cached): Llama-2-7B (283 vs Inductor 167 us) and
#      Llama-3-8B (218 us, floor ~50): which phase holds the time before a per-warp K/V ring is built
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
FINAL=${OUT:-/tmp/cf-final}; W=/tmp/cf-out/round13; mkdir -p "$W" "$FINAL"
t0=$SECONDS
timeout 300 python3 benchmarks/host_profile.py --model qwen2.5-0.5b --json "$W/host.json" > "$W/host.log" 2>&1
echo "host_profile rc $?"; grep '^{' "$W/host.log"
echo "[host at $((SECONDS - t0)) s]"
timeout 150 python3 benchmarks/attention.py --no-inductor --no-prefetch --timeline --dtypes bf16 --batches 16 \
  --seqs 1024 --models llama-2-7b llama-3-8b --json "$W/timeline_b16.json" > "$W/timeline.log" 2>&1
echo "timeline rc $?"; grep -E "ours|^timeline|^  [a-z_]+ +[0-9]" "$W/timeline.log" | head -40
echo "[timeline at $((SECONDS - t0)) s]"
tar czf "$FINAL/round13.tgz" -C "$W" .
