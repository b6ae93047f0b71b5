#!/usr/bin/env bash
# Round 23 (<= ~6 min on an H100): batch bucket 1 back on round 16's ring code (thread 0 issues; one sub-block per
# stage) under `if constexpr (BB == 1)`, buckets 2 and 8 on the general form of round 20.
# On the CPU (NVRTC 13.5 and 13.0, ELF .text compared): the bucket-1 one-head builds are round 16's (2c26bda) byte
# for byte, every other build is main's (5d6d7cf). So this round measures code that ran before; what it adds is
# the A/B in one process against main's source (and against round 16's, whose bucket-1 builds are the same bytes:
# that pair is the noise of the measurement).
# Needs (untracked): benchmarks/device/baseline/attention_decode_{5d6d7cf,2c26bda}.cu (git show <rev>:...).
# Prediction (Llama-2-7B bf16 B=1, us): 4096 cached 113.7 (main, round 20) -> ~110 (round 16's 110.2); 1024 80.9
# -> ~80.1. Falsified if the new source is not faster than main's at 4096 by more than the r16 pair's difference:
# then round 20's 3.5 us was between processes, not between codes.
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
FINAL=${OUT:-/tmp/cf-final}; W=/tmp/cf-out/round23; mkdir -p "$W" "$FINAL"
MAIN=$PWD/benchmarks/device/baseline/attention_decode_5d6d7cf.cu
R16=$PWD/benchmarks/device/baseline/attention_decode_2c26bda.cu
t0=$SECONDS
stamp() { echo "[$1 at $((SECONDS - t0)) s]"; }
timeout 200 python3 benchmarks/device/build_attention.py "$MAIN" "$R16" 2>&1 | tail -3
stamp compiled
CF_ATTN_VARIANTS=v5_ring CF_ATTN_BASELINE_SOURCE="$MAIN" timeout 150 python3 -m pytest -q -p no:cacheprovider \
  tests/gpu/test_kernels_attention.py -x -k "baseline_source or kv_ring or named_models_match" > "$W/tests.log" 2>&1
echo "tests rc $?: $(tail -1 "$W/tests.log")"; grep -E "^(FAILED|E )" "$W/tests.log" | head -6
stamp tests
for pair in "main:$MAIN" "r16:$R16"; do
  tag=${pair%%:*}; src=${pair#*:}
  timeout 120 python3 benchmarks/attention.py --no-inductor --no-prefetch --dtypes bf16 fp16 --batches 1 \
    --seqs 1024 4096 --models llama-2-7b --baseline-source "$src" --json "$W/rows_$tag.json" > "$W/bench_$tag.log" 2>&1
  echo "bench vs $tag rc $?"; grep -E "ours" "$W/bench_$tag.log" | sed -e 's/ (L2 prefetch -) inductor - / /' | cut -c1-160
  stamp "bench $tag"
done
tar czf "$FINAL/round23.tgz" -C "$W" .
