#!/usr/bin/env bash
# Round 24 (<= ~7 min on an H100): phase 4 of the batch-1 GQA builds with lanes as (query head, slice of D)
# (variant v5_heads = v5_ring + bit 128, attend_heads), beside the default v5_ring in one process.
# Why (round 22): a small model's attention warp runs ~4,300 instructions at ~13 cycles each, fetch-bound; the slot
# layout's token loop unrolls HG heads x kTokenUnroll tokens into ~1,100 instructions run once per warp, and the slot
# merge after it ~500 more. attend_heads is one rolled loop over runs of kU = 32/EL tokens for all heads at once
# (~140 instructions per run at Qwen's shape), with no slot merge.
# Predictions (bf16 B=1, us, v5_ring -> v5_heads): Qwen2.5-0.5B 1024 31.2 -> ~26 (phase 4 7.7 -> ~3),
# Llama-3.2-1B 1024 33.6 -> ~29 (6.7 -> ~2.5), Llama-3-8B 1024 ~61 -> ~58; at 4096 cached fewer unique K/V bytes
# are in flight per warp (2 tokens x D x 4 B): Llama-3-8B 4096 may lose (75 -> 70-80). Falsified if the small
# models gain < 2 us (then the fetch stalls were not in this loop).
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
FINAL=${OUT:-/tmp/cf-final}; W=/tmp/cf-out/round24; mkdir -p "$W" "$FINAL"
t0=$SECONDS
stamp() { echo "[$1 at $((SECONDS - t0)) s]"; }
timeout 150 python3 benchmarks/device/build_attention.py 2>&1 | tail -2
stamp compiled
CF_ATTN_VARIANTS=v5_heads timeout 200 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_kernels_attention.py \
  -k "head_lanes or random_sweep or named_models_match or deterministic or graph_capture or counters" > "$W/tests.log" 2>&1
echo "tests rc $?: $(tail -1 "$W/tests.log")"; grep -E "^(FAILED|E )" "$W/tests.log" | head -12
stamp tests
timeout 150 python3 benchmarks/attention.py --no-inductor --no-prefetch --timeline --variants v5_ring v5_heads \
  --dtypes bf16 --batches 1 --seqs 1024 4096 --models qwen2.5-0.5b llama-3.2-1b llama-3-8b \
  --json "$W/rows.json" > "$W/bench.log" 2>&1
echo "bench rc $?"; grep -E " ours " "$W/bench.log" | sed -e 's/ (L2 prefetch -) inductor - / /' | cut -c1-150
grep -E "^timeline|^  (rope|attn|merge|end) " "$W/bench.log" | head -60
stamp bench
tar czf "$FINAL/round24.tgz" -C "$W" .
CF_ATTN_VARIANTS=v5_heads SANITIZE_KERNELS=attn SANITIZE_ATTN_K="named_models and small_gqa_b1_heads" \
  SANITIZE_DIR="$W/sanitize" bash benchmarks/device/sanitize.sh | grep -E "^attn"
stamp sanitizers
tar czf "$FINAL/round24.tgz" -C "$W" .
