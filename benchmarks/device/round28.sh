#!/usr/bin/env bash
# Round 28 (prepared 2026-12-07, not run): where the claimed-tile attention kernel's time goes, and the policy rows
# for its new default (batch-1 MHA). Part 1: flow GPU tests (attention, incl. the timeline build's bits; FFN).
# Part 2: the flow timeline (-DCF_FLOW_TIMELINE, summarise_kinds: per tile kind first claim / done, tile time,
# hand-off waits, end) at bf16 B=1, 1024 and 4096, all four models. Part 3: Llama-2-7B default rows (now the
# claimed-tile kernel) beside Inductor, bf16 and fp16, for cf_compile/measured.json (python
# benchmarks/policy_table.py after `results.append` of rows_l2_default.json). Part 4: FFN batch 2 (now the claimed
# tiles, h in shared memory at hidden 4096) beside Inductor: `python benchmarks/ffn.py --append` then policy_table.
# Knobs (between parts 2 and 3): flow at chunk caps 64 / 128 (the two-level merge, prepared 2026-12-07) and q/k/v
# tiles of 4 warps per row group; o_proj gated per KV group (CF_ATTN_O_GATED, alone and with cap 64). Predicted: cap 64 with two levels <= cap 16 at 1024 and ~33 us at Qwen
# 4096 (cap 16: 44.9); wpr 4 at Llama-2-7B 1024 ~63 (67.9). ~450 s.
# Gated o_proj: predicted -2..-4 us at Llama-2-7B (o_proj weights stream while the last groups attend), ~0 at
# the GQA shapes (few groups, each long). Reading to test: at Llama-2-7B 1024 (67.9 us vs floor 50.7) the q/k/v phase ends raggedly (32-row tiles of
# 256 KB, ~22 us each, 384 tiles on 264 slots) and attention tiles start only after every q/k/v tile is claimed:
# predicted qkv_done ~38 us, attention_done ~45, o_proj_done ~62. If o_proj tiles wait > 3 us (wait_median), the
# o_proj split-K by head group (per-warp waits on group counters, as the FFN's streamed build) is next; if the
# q/k/v phase's tail dominates, tapered tiles (smaller q/k/v tiles at the end of the queue).
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
FINAL=${OUT:-/tmp/cf-final}; mkdir -p "$FINAL"
t0=$SECONDS
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_kernels_attention_flow.py tests/gpu/test_kernels_ffn_flow.py \
  > "$FINAL/tests.log" 2>&1
echo "flow tests rc $?: $(tail -1 "$FINAL/tests.log")"; grep -E "^(FAILED|ERROR)" "$FINAL/tests.log" | head -12
echo "[tests at $((SECONDS - t0)) s]"
timeout 100 python3 benchmarks/attention.py --no-inductor --no-prefetch --timeline --variants flow --dtypes bf16 \
  --batches 1 --seqs 1024 4096 --json "$FINAL/rows_flow_timeline.json" > "$FINAL/flow_timeline.log" 2>&1
echo "flow timeline rc $?"; grep -E "^flow timeline| ours |Error" "$FINAL/flow_timeline.log" | cut -c1-700
echo "[timeline at $((SECONDS - t0)) s]"
for KNOB in CF_ATTN_FLOW_MAX_CHUNKS=64 CF_ATTN_FLOW_O_GATED=1 CF_ATTN_FLOW_O_GATED=1,CF_ATTN_FLOW_MAX_CHUNKS=64 \
    CF_ATTN_FLOW_QKV_WPR=4; do
  TAG=$(echo "$KNOB" | sed 's/CF_ATTN_FLOW_//g' | tr '=,' '__' | tr 'A-Z' 'a-z')
  env $(echo "$KNOB" | tr ',' ' ') timeout 60 python3 benchmarks/attention.py --no-inductor --no-prefetch --variants flow --dtypes bf16 \
    --batches 1 --seqs 1024 4096 --json "$FINAL/rows_flow_$TAG.json" > "$FINAL/flow_$TAG.log" 2>&1
  echo "flow $KNOB rc $?"; grep -E " ours |Error" "$FINAL/flow_$TAG.log" | cut -c1-110
done
echo "[knobs at $((SECONDS - t0)) s]"
timeout 90 python3 benchmarks/attention.py --no-prefetch --models llama-2-7b --dtypes bf16 fp16 --batches 1 \
  --seqs 1024 4096 --json "$FINAL/rows_l2_default.json" > "$FINAL/l2_default.log" 2>&1
echo "llama-2-7b default rc $?"; grep -E " ours |Error" "$FINAL/l2_default.log" | cut -c1-170
timeout 110 python3 benchmarks/ffn.py --dtypes bf16 --batches 2 --rows-out "$FINAL/rows_ffn_b2_default.json" \
  > "$FINAL/ffn_b2.log" 2>&1
echo "ffn batch 2 (flow default since session 13) rc $?"; grep -E "^\| |Error" "$FINAL/ffn_b2.log" | cut -c1-120
echo "[done at $((SECONDS - t0)) s]"
