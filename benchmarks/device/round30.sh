#!/usr/bin/env bash
# Round 30 (prepared 2026-12-07): token-parallel lanes in the claimed-tile attention kernel's token loop
# (-DCF_ATTN_TOKEN_LANES, CF_ATTN_FLOW_TOKEN_LANES=1; opt-in). Round 29: staging K/V changed nothing at 1024, so
# the attention tile's ~9 us after q is ready is its own arithmetic: a 5-level 32-lane xor tree per score
# (80 shuffles per 2 tokens per warp at Qwen) and 24 exp2 per run. Lane groups of D / 8 (D / 4 at GM = 8) lanes
# per token: 3-4 levels, each shuffle serving 2-4 tokens; per-group running softmax merged once per tile.
# Predicted (bf16 B=1, us, 1024 / 4096; round 29's default flow in brackets): Qwen ~22 / ~32 (26.5 / 45.3),
# Llama-3.2-1B ~24 / ~38 (27.9 / 51.9), Llama-3-8B ~56 / ~72 (61.6 / 83.6), Llama-2-7B ~66 / ~85 (67.9 / 91.5).
# Falsified if Qwen 4096 > 40. Also o_proj split by head segment (-DCF_ATTN_O_SPLIT, CF_ATTN_FLOW_O_SPLIT=1; 32-row
# tiles of <= 1024 columns, 64 KB of W_o in registers before each tile's wait, the wait only for its segment's
# groups): predicted Llama-2-7B ~60 / ~82 (67.9 / 91.5: o_proj overlaps the last groups' attention instead of
# following it for 13 us), Llama-3-8B -3 us, ~0 at Qwen (one segment). Falsified if Llama-2-7B 1024 > 64. Decision: a GQA model whose token-lane flow beats v5_heads at both lengths gets
# flow as its default (and the token lanes become the flow default where they win on every row).
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
FINAL=${OUT:-/tmp/cf-final}; W=/tmp/r30; mkdir -p "$FINAL" "$W"
t0=$SECONDS
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_kernels_attention_flow.py -k "token_lanes or split" -x \
  > "$W/tests.log" 2>&1
echo "flow tests rc $?: $(tail -1 "$W/tests.log")"; grep -E "^(FAILED|ERROR)|Error" "$W/tests.log" | head -12
echo "[tests at $((SECONDS - t0)) s]"
A="benchmarks/attention.py --no-prefetch --no-inductor --dtypes bf16 --batches 1 --seqs 1024 4096"
timeout 50 python3 $A --variants flow v5_heads --json "$W/rows_default.json" > "$W/default.log" 2>&1
echo "default flow + cluster rc $?"; grep -E " ours |Error" "$W/default.log" | cut -c1-110
CF_ATTN_FLOW_TOKEN_LANES=1 timeout 50 python3 $A --timeline --variants flow --json "$W/rows_lanes.json" \
  > "$W/lanes.log" 2>&1
echo "token lanes rc $?"; grep -E "^flow timeline| ours |Error" "$W/lanes.log" | cut -c1-400
CF_ATTN_FLOW_O_SPLIT=1 timeout 50 python3 $A --timeline --variants flow --json "$W/rows_o_split.json" \
  > "$W/o_split.log" 2>&1
echo "o_proj split rc $?"; grep -E "^flow timeline| ours |Error" "$W/o_split.log" | cut -c1-400
CF_ATTN_FLOW_O_SPLIT=1 CF_ATTN_FLOW_TOKEN_LANES=1 timeout 50 python3 $A --variants flow \
  --json "$W/rows_o_split_lanes.json" > "$W/o_split_lanes.log" 2>&1
echo "o_proj split + token lanes rc $?"; grep -E " ours |Error" "$W/o_split_lanes.log" | cut -c1-110
if [ "${CAP64:-0}" = 1 ]; then
  CF_ATTN_FLOW_TOKEN_LANES=1 CF_ATTN_FLOW_MAX_CHUNKS=64 timeout 70 python3 $A --variants flow \
    --json "$W/rows_lanes_cap64.json" > "$W/lanes_cap64.log" 2>&1
  echo "token lanes, cap 64 rc $?"; grep -E " ours |Error" "$W/lanes_cap64.log" | cut -c1-110
fi
if [ "${E2E:-0}" = 1 ]; then  # second call: the Qwen step with flow + token lanes for its attention (GQA)
  CF_ATTN_KERNEL=flow CF_ATTN_FLOW_TOKEN_LANES=1 timeout 280 python3 benchmarks/e2e_families.py \
    --model qwen2.5-0.5b --json "$W/families_qwen_lanes.json" 2>&1 | grep -E '^\[|"bench"|Error|Traceback' \
    | cut -c1-400
fi
tar czf "$FINAL/round30.tgz" -C "$W" .
echo "[done at $((SECONDS - t0)) s]"
