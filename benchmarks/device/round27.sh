#!/usr/bin/env bash
# Round 27 (2026-12-07). FFN: the streamed hand-off (down warps wait per 256-column h segment, not for all of h;
# NOTES-ffn.md round 10) vs one wait (onewait=1) in one run, with Inductor, B=1 and 2; B=2 also flow + h in smem.
# Attention flow: the token loop as batched scores (round 27 of NOTES-attention.md), chunk cap 16 vs 64.
# Predicted FFN B=1 (us): Llama-2-7B 98.5 -> ~94, Llama-3-8B 124.9 -> ~119, Llama-3.2-1B 41.6 -> ~37,
# Qwen2.5-0.5B 17.0 -> ~15.5. Attention flow (1024 / 4096): Qwen ~20 / ~25, Llama-3-8B ~55 / ~65.
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
FINAL=${OUT:-/tmp/cf-final}; mkdir -p "$FINAL"
t0=$SECONDS
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_kernels_attention_flow.py tests/gpu/test_kernels_ffn_flow.py > "$FINAL/tests.log" 2>&1
echo "flow tests rc $?: $(tail -1 "$FINAL/tests.log")"; grep -E "^(FAILED|ERROR)" "$FINAL/tests.log" | head -12
echo "[tests at $((SECONDS - t0)) s]"
timeout 200 python3 benchmarks/ffn.py --dtypes bf16 --batches 1 2 \
  --variants kernel=flow,onewait=1 kernel=flow kernel=flow,hsm=1 --rows-out "$FINAL/rows_ffn.json" > "$FINAL/ffn.log" 2>&1
echo "ffn rc $?"; grep -E " ours |^variant|Error" "$FINAL/ffn.log" | cut -c1-200
echo "[ffn at $((SECONDS - t0)) s]"
for CAP in 16 64; do
  CF_ATTN_FLOW_MAX_CHUNKS=$CAP timeout 110 python3 benchmarks/attention.py --no-inductor --no-prefetch --dtypes bf16 \
    --batches 1 --seqs 1024 4096 --variants v5_heads flow --json "$FINAL/rows_attn_cap$CAP.json" > "$FINAL/attn_cap$CAP.log" 2>&1
  echo "attention cap $CAP rc $?"; grep -E " ours |Error" "$FINAL/attn_cap$CAP.log" | cut -c1-150
done
echo "[attention at $((SECONDS - t0)) s]"
