#!/usr/bin/env bash
# Round 20 (<= ~7 min on an H100): the batch-2..8 K/V ring with one issuer lane per row group (lane r of warp 0
# issues row r's two bulk copies and arrives on the stage barrier, count R) instead of thread 0 issuing all 2R
# copies in turn after every stage barrier (round 19: batch 2 gained up to 25 us, batch 4 lost 9-22 us).
# A/B in one process each against round 16 (2c26bda) and against round 19's serial issue; timeline of v5 vs
# v5_ring at batch 4 4096.
# Needs (untracked): benchmarks/device/baseline/attention_decode.cu (git show 2c26bda:...) and serial_issue.cu.
# Predictions (Llama-2-7B bf16, us): batch 4 1024 ~112 (round 16) -> ~106, 4096 178 -> ~165; batch 2 as round
# 19 (108 / 148) or 1-3 us better; batch 8 4096 411 -> ~395; batch 1 within +-1 of round 16.
# Falsified if batch 4 stays above round 16: then the issue was not the cause (look at the timeline's phase 4).
# Since rewritten to call build_attention.py and sanitize.sh: the same builds and checks (as run it built only
# the bf16 one-head builds of the two earlier sources, and the named ring case of bucket 4 was small_mha_b3_ring, since renamed small_mha_b5_ring at bucket 8).
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
FINAL=${OUT:-/tmp/cf-final}; W=/tmp/cf-out/round20; mkdir -p "$W" "$FINAL"
BASE=$PWD/benchmarks/device/baseline/attention_decode.cu
SERIAL=$PWD/benchmarks/device/baseline/serial_issue.cu
t0=$SECONDS
stamp() { echo "[$1 at $((SECONDS - t0)) s]"; }
timeout 150 python3 benchmarks/device/build_attention.py "$BASE" "$SERIAL" 2>&1 | tail -3
stamp compiled
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_kernels_attention.py -x \
  -k "kv_ring or random_sweep or deterministic or graph_capture or named_models_match or counters" > "$W/tests.log" 2>&1
echo "tests rc $?: $(tail -1 "$W/tests.log")"; grep -E "^(FAILED|E )" "$W/tests.log" | head -6
CF_ATTN_VARIANTS=v5_ring SANITIZE_KERNELS=attn SANITIZE_ATTN_K="named_models and (small_mha_b5_ring or small_mha_b1_ring)" SANITIZE_DIR="$W/sanitize" \
  bash benchmarks/device/sanitize.sh | grep -E "^attn"
stamp tests
for pair in "r16:$BASE" "serial:$SERIAL"; do
  tag=${pair%%:*}; src=${pair#*:}
  timeout 120 python3 benchmarks/attention.py --no-inductor --no-prefetch --dtypes bf16 --batches 1 2 4 8 \
    --seqs 1024 4096 --models llama-2-7b --baseline-source "$src" --json "$W/rows_$tag.json" > "$W/bench_$tag.log" 2>&1
  echo "bench vs $tag rc $?"; grep -E "ours" "$W/bench_$tag.log" | sed -e 's/ (L2 prefetch -) inductor - / /' | cut -c1-150
  stamp "bench $tag"
done
tar czf "$FINAL/round20.tgz" -C "$W" .
timeout 100 python3 benchmarks/attention.py --no-inductor --no-prefetch --timeline --variants v5 v5_ring --dtypes bf16 \
  --batches 4 --seqs 4096 --models llama-2-7b --json "$W/timeline_b4.json" > "$W/timeline.log" 2>&1
echo "timeline rc $?"; sed -n '/^timeline/,$p' "$W/timeline.log" | head -16
stamp timeline
tar czf "$FINAL/round20.tgz" -C "$W" .
