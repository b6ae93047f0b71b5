#!/usr/bin/env bash
# Round 29 (prepared 2026-12-07): the claimed-tile attention kernel stages each attention tile's K/V chunk into
# shared memory (one bulk copy per K and V, STAGE_BYTES = 64 KB) at claim time, before it waits for its group's
# q/k/v tiles. Round 28's timeline: attention tiles run 9-22 us after their group's q/k/v are done (Qwen
# 1024: q/k/v done 4.6 us, first attention tile done 13.8, last 20.5; Llama-3-8B: 23.2 -> 29.4 / 45.0): K/V
# loads of short runs, issued only after the wait. Predicted (bf16 B=1, us at 1024 / 4096; round 28 in
# brackets): Qwen ~16 / ~30 (26.5 / 45.3), Llama-3.2-1B ~21 / ~40 (27.9 / 51.9), Llama-3-8B ~52 / ~75
# (61.6 / 83.6), Llama-2-7B ~62 / ~88 (67.9 / 91.5). Falsified if Qwen 1024 > 22.
# Then o_proj tiles of 8 rows (CF_ATTN_FLOW_O_ROWS=8: each CTA's first o_proj tile holds 64 KB of W_o in
# registers before the hand-off instead of 32): predicted -3 us at Llama-2-7B (o_proj ran 53 -> 66 us).
# q/k/v tiles of 4 warps per row (round 28: Llama-3-8B 61.6 -> 55.9 unstaged) timed staged too.
# Decision: if staged flow beats v5_heads (cluster) at both lengths on a GQA model, is_default takes it.
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
FINAL=${OUT:-/tmp/cf-final}; W=/tmp/r29; mkdir -p "$FINAL" "$W"
t0=$SECONDS
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_kernels_attention_flow.py > "$W/tests.log" 2>&1
echo "flow tests rc $?: $(tail -1 "$W/tests.log")"; grep -E "^(FAILED|ERROR)|Error" "$W/tests.log" | head -12
echo "[tests at $((SECONDS - t0)) s]"
A="benchmarks/attention.py --no-prefetch --dtypes bf16 --batches 1 --seqs 1024 4096"
timeout 90 python3 $A --no-inductor --timeline --variants flow --json "$W/rows_staged_timeline.json" \
  > "$W/staged_timeline.log" 2>&1
echo "staged timeline rc $?"; grep -E "^flow timeline| ours |Error" "$W/staged_timeline.log" | cut -c1-520
echo "[timeline at $((SECONDS - t0)) s]"
CF_ATTN_FLOW_STAGE_KB=0 timeout 90 python3 $A --no-inductor --variants flow v5_heads --json "$W/rows_unstaged.json" \
  > "$W/unstaged.log" 2>&1
echo "unstaged + cluster rc $?"; grep -E " ours |Error" "$W/unstaged.log" | cut -c1-110
CF_ATTN_FLOW_O_ROWS=8 timeout 70 python3 $A --no-inductor --variants flow --json "$W/rows_o_rows_8.json" \
  > "$W/o_rows_8.log" 2>&1
echo "o_rows 8 rc $?"; grep -E " ours |Error" "$W/o_rows_8.log" | cut -c1-110
CF_ATTN_FLOW_QKV_WPR=4 timeout 70 python3 $A --no-inductor --variants flow --json "$W/rows_qkv_wpr_4.json" \
  > "$W/qkv_wpr_4.log" 2>&1
echo "staged, q/k/v wpr 4 rc $?"; grep -E " ours |Error" "$W/qkv_wpr_4.log" | cut -c1-110
echo "[A/B at $((SECONDS - t0)) s]"
timeout 200 python3 $A --variants flow v5_heads --json "$W/rows_inductor.json" > "$W/inductor.log" 2>&1
echo "beside Inductor rc $?"; grep -E " ours |Error" "$W/inductor.log" | cut -c1-170
tar czf "$FINAL/round29.tgz" -C "$W" .
echo "[done at $((SECONDS - t0)) s]"
