#!/usr/bin/env bash
# Round 19 (<= ~9 min on an H100): the K/V ring of phase 4 for MHA builds of batch bucket 2-8 (before: bucket 1
# only). A stage holds one sub-block per row group (R rows in parallel), each warp reads the tokens it read
# without the ring, in the same order: bitwise round 16 (2c26bda) and bitwise v5. A/B against 2c26bda in one
# process, beside Inductor for the policy.
# Needs round 16's source at benchmarks/device/baseline/attention_decode.cu (untracked):
#   git show 2c26bda:cf_compile_kernels/csrc/attention_decode.cu > benchmarks/device/baseline/attention_decode.cu
# Predictions (Llama-2-7B bf16, us): batch 1 unchanged (+-0.5); the ring at batch 1 4096 (67 MB of K/V) won
# 12 us, so batch 4 at 1024 (the same 67 MB) ~114 -> ~102 and batch 2 ~88 -> ~82; batch 4 at 4096 (268 MB) and
# batch 8 gain most: phase 4 at ~2.3 instead of ~1.5 TB/s, ~40-60 us. Inductor at batch 4 1024 measured 96.
# Since rewritten to call build_attention.py and sanitize.sh: the same builds and checks.
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
FINAL=${OUT:-/tmp/cf-final}; W=/tmp/cf-out/round19; mkdir -p "$W" "$FINAL"
BASE=$PWD/benchmarks/device/baseline/attention_decode.cu
t0=$SECONDS
stamp() { echo "[$1 at $((SECONDS - t0)) s]"; }
[ -f "$BASE" ] || { echo "no baseline source at $BASE"; exit 2; }
timeout 200 python3 benchmarks/device/build_attention.py "$BASE" 2>&1 | tail -3
stamp compiled
CF_ATTN_BASELINE_SOURCE=$BASE CF_ATTN_VARIANTS="v3 v5 v5_ring" timeout 150 python3 -m pytest -q -p no:cacheprovider \
  tests/gpu/test_kernels_attention.py -k "baseline_source" > "$W/bitwise.log" 2>&1
echo "bitwise rc $?: $(tail -1 "$W/bitwise.log")"; grep -E "^(FAILED|E )" "$W/bitwise.log" | head -6
stamp bitwise
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_kernels_attention.py -x \
  -k "kv_ring or random_sweep or deterministic or graph_capture or named_models_match or counters" > "$W/tests.log" 2>&1
echo "tests rc $?: $(tail -1 "$W/tests.log")"; grep -E "^(FAILED|E )" "$W/tests.log" | head -6
CF_ATTN_VARIANTS=v5_ring SANITIZE_KERNELS=attn SANITIZE_ATTN_K="named_models and (small_mha_b3_ring or small_mha_b1_ring)" SANITIZE_DIR="$W/sanitize" \
  bash benchmarks/device/sanitize.sh | grep -E "^attn"
stamp tests
timeout 280 python3 benchmarks/attention.py --no-prefetch --dtypes bf16 --batches 1 2 4 8 --seqs 1024 4096 \
  --models llama-2-7b --inductor-budget 120 --baseline-source "$BASE" --json "$W/rows.json" > "$W/bench.log" 2>&1
echo "bench rc $?"; grep -E "ours" "$W/bench.log" | sed -e 's/ (L2 prefetch -)//' | cut -c1-170 | head -10
stamp bench
tar czf "$FINAL/round19.tgz" -C "$W" .
timeout 75 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_backend_gpu.py -k "report_gives_the_split" \
  > "$W/report.log" 2>&1
echo "report test rc $?: $(tail -1 "$W/report.log")"; grep -E "^(FAILED|E )" "$W/report.log" | head -4
stamp report
tar czf "$FINAL/round19.tgz" -C "$W" .
