#!/usr/bin/env bash
# Round 17 (<= ~6 min on an H100): is the batch-blind split choice (choose_split: one wave, most CTAs, fewest
# clusters per KV head) right at batch 4 and 16? Split overrides were only ever timed at batch 1 (round 6).
#   1. attention.py --splits (every C in 8/4/2 x P in 1..16 that is one wave), bf16 1024, batch 4 and 16, the
#      four models, ours only (the launcher's choice is the "default" row of each shape)
#   2. the per-CTA timeline of the default at Qwen2.5-0.5B B=16 (109 us for a 4 us floor: which phase holds it?)
# Predictions: Llama-2-7B (32 KV heads, [C4,P1]) has no one-wave alternative but (2,2) and ties or loses;
# Llama-3-8B B=16 [C8,P2] -> (8,1) or (4,2) loses in phase 4 more than the 13 us split merge it saves (half the
# CTAs stream K/V); Qwen2.5-0.5B B=16 [C8,P8]: (8,4) or (4,8) within +-5 us -- if one wins by > 5 us at both
# batches, choose_split should weigh the merge (P x B x G x D partials) against the CTAs.
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
FINAL=${OUT:-/tmp/cf-final}; W=/tmp/cf-out/round17; mkdir -p "$W" "$FINAL"
t0=$SECONDS
stamp() { echo "[$1 at $((SECONDS - t0)) s]"; }
SPLITS="8,1 8,2 8,4 8,8 8,16 4,1 4,2 4,4 4,8 4,16 2,2 2,4 2,8 2,16"
timeout 330 python3 benchmarks/attention.py --no-inductor --no-prefetch --dtypes bf16 --batches 4 16 --seqs 1024 \
  --splits $SPLITS --json "$W/splits.json" > "$W/splits.log" 2>&1
echo "splits rc $?"; grep -E "ours" "$W/splits.log" | sed -e 's/ (L2 prefetch -) inductor - / /' | cut -c1-110
stamp splits
timeout 90 python3 benchmarks/attention.py --no-inductor --no-prefetch --timeline --dtypes bf16 --batches 16 \
  --seqs 1024 --models qwen2.5-0.5b --json "$W/timeline_qwen_b16.json" > "$W/timeline.log" 2>&1
echo "timeline rc $?"; sed -n '/^timeline/,$p' "$W/timeline.log" | head -16
stamp timeline
tar czf "$FINAL/round17.tgz" -C "$W" .
