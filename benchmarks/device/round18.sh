#!/usr/bin/env bash
# Round 18 (<= ~8 min on an H100): phase 3's cos/sin rows, biases and q/k norm weights staged once in shared
# memory (before: every (row, head) job of a warp loaded them from global memory, one dependent latency per job:
# Qwen2.5-0.5B B=16's "rope" step took 16.7 us in round 17's timeline). A/B against round 16's source (2c26bda),
# bitwise and in time, one process.
# Needs round 16's source at benchmarks/device/baseline/attention_decode.cu (untracked):
#   git show 2c26bda:cf_compile_kernels/csrc/attention_decode.cu > benchmarks/device/baseline/attention_decode.cu
# Predictions (bf16 1024, us): bitwise 3/3; Qwen2.5-0.5B B=16 110 -> ~97 (rope step 16.7 -> ~3), B=4 51 -> ~47;
# Llama-3-8B B=16 186 -> ~178, Llama-3.2-1B B=16 108 -> ~100, Llama-2-7B B=16 274 -> ~270; batch 1 within +-0.5
# (a warp had at most 1-2 jobs there; one more CTA barrier before the gather).
# Since rewritten to call build_attention.py and sanitize.sh: the same builds and checks.
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
FINAL=${OUT:-/tmp/cf-final}; W=/tmp/cf-out/round18; mkdir -p "$W" "$FINAL"
BASE=$PWD/benchmarks/device/baseline/attention_decode.cu
t0=$SECONDS
stamp() { echo "[$1 at $((SECONDS - t0)) s]"; }
[ -f "$BASE" ] || { echo "no baseline source at $BASE"; exit 2; }
timeout 200 python3 benchmarks/device/build_attention.py "$BASE" 2>&1 | tail -3
stamp compiled
CF_ATTN_BASELINE_SOURCE=$BASE CF_ATTN_VARIANTS="v3 v5 v5_ring" timeout 200 python3 -m pytest -q -p no:cacheprovider \
  tests/gpu/test_kernels_attention.py -k "baseline_source" > "$W/bitwise.log" 2>&1
echo "bitwise rc $?: $(tail -1 "$W/bitwise.log")"; grep -E "^(FAILED|E )" "$W/bitwise.log" | head -6
stamp bitwise
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_kernels_attention.py -x \
  -k "random_sweep or deterministic or graph_capture or named_models_match or counters or rows_attended" > "$W/tests.log" 2>&1
echo "tests rc $?: $(tail -1 "$W/tests.log")"; grep -E "^(FAILED|E )" "$W/tests.log" | head -6
CF_ATTN_VARIANTS=v5_ring SANITIZE_KERNELS=attn SANITIZE_ATTN_K="named_models and (small_gqa_split or qwen25_05b_b16)" SANITIZE_DIR="$W/sanitize" \
  bash benchmarks/device/sanitize.sh | grep -E "^attn"
stamp tests
timeout 200 python3 benchmarks/attention.py --no-inductor --no-prefetch --dtypes bf16 --batches 1 4 16 --seqs 1024 \
  --baseline-source "$BASE" --json "$W/rows.json" > "$W/bench.log" 2>&1
echo "bench rc $?"; grep -E "ours" "$W/bench.log" | sed -e 's/ (L2 prefetch -) inductor - / /' | cut -c1-150 | head -14
stamp bench
timeout 60 python3 benchmarks/attention.py --no-inductor --no-prefetch --timeline --dtypes bf16 --batches 16 \
  --seqs 1024 --models qwen2.5-0.5b --json "$W/timeline_qwen_b16.json" > "$W/timeline.log" 2>&1
echo "timeline rc $?"; sed -n '/^timeline/,$p' "$W/timeline.log" | grep -E "qkv_wait|rope|attn |end" | head -6
stamp timeline
tar czf "$FINAL/round18.tgz" -C "$W" .
