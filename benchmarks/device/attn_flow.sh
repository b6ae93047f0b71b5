#!/usr/bin/env bash
# Round 26 (prepared 2026-12-07, not run yet): the claimed-tile attention kernel (variant "flow", batch 1) and the
# claimed-tile FFN kernel's timeline. Part 1: the flow attention GPU tests (64 random batch-1 cases, named models,
# 200 bitwise repeats, graph replay with a moving position, the env switch). Part 2: attention rows, bf16 B=1, 1024
# and 4096 cached, default (v5_heads) vs flow beside Inductor. Part 3: the FFN flow timeline (B=1), and at B=2 / 4 the
# flow kernel with rows per warp 4 / 2 and h in shared memory (hsm). ~520 s. Then, in a second call if part 1 passed:
#   CF_ATTN_KERNEL=flow TIMEOUT=280 bash benchmarks/device/e2e_families.sh qwen2.5-0.5b   (the decode step by family)
# Predicted (bf16 B=1, us, 1024 / 4096 cached): flow Qwen2.5-0.5B ~12 / ~14 (v5_heads 26.8 / 31.0), Llama-3.2-1B
# ~15 / ~20 (31.4 / 40.8), Llama-3-8B ~40 / ~50 (58.4 / 70.3), Llama-2-7B ~58 / ~78 (79.3 / 110.1; floor 50.6 / 67.4).
# Falsified where flow is not faster than v5_heads. FFN timeline: hand-off wait median < 2 us, end tail < 3 us;
# if the tail is larger, the last tiles are the cause (smaller tiles at the end of the queue next). FFN B=2 / B=4
# (us): flow + hsm Llama-2-7B ~105 / ~110 (flow rpw 2: 114.3 / 141.1; cluster 115.9 / 117.8), Qwen ~19 / ~21.
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
FINAL=${OUT:-/tmp/cf-final}; W=/tmp/cf-out/attn_flow; mkdir -p "$W" "$FINAL"
t0=$SECONDS
stamp() { echo "[$1 at $((SECONDS - t0)) s]"; }
timeout 170 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_kernels_attention_flow.py tests/gpu/test_kernels_ffn_flow.py > "$W/tests.log" 2>&1
TESTS=$?
echo "flow tests (attention, FFN) rc $TESTS: $(tail -1 "$W/tests.log")"; grep -E "^(FAILED|E )" "$W/tests.log" | head -12
stamp tests
if [ "$TESTS" = 0 ]; then
  timeout 200 python3 benchmarks/attention.py --no-prefetch --dtypes bf16 --batches 1 --seqs 1024 4096 \
    --variants v5_heads flow --json "$FINAL/rows_attn_flow.json" > "$W/bench_attn.log" 2>&1
  echo "attention bench rc $?"; grep -E " ours |copy|Error" "$W/bench_attn.log" | cut -c1-190
  stamp "attention bench"
fi
timeout 90 python3 benchmarks/ffn.py --no-inductor --dtypes bf16 --batches 1 --phases --rows-out "$FINAL/rows_ffn_tl.json" \
  > "$W/ffn_tl.log" 2>&1
echo "ffn timeline rc $?"; grep -E "^flow timeline|Error" "$W/ffn_tl.log" | cut -c1-400
timeout 100 python3 benchmarks/ffn.py --no-inductor --dtypes bf16 --batches 2 4 \
  --variants kernel=flow kernel=flow,hsm=1 kernel=flow,rpw=2 kernel=flow,rpw=2,hsm=1 \
  --rows-out "$FINAL/rows_ffn_b2.json" > "$W/ffn_b2.log" 2>&1
echo "ffn b2 rc $?"; grep -E "^variant|Error" "$W/ffn_b2.log" | cut -c1-200
stamp ffn
cp "$W"/*.log "$FINAL/" 2>/dev/null
