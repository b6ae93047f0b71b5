#!/usr/bin/env bash
# Round 25b (run 2026-12-07 on an H100 in 260 s; rows recorded, NOTES-attention.md round 25; branch r25-heads-batch2): the head-lane loop at batch buckets 2-16 (GQA), and
# runs of 64 / EL tokens in it (two 64-byte K and V loads per lane in flight per run, not one).
# Needs (untracked, benchmarks/device/baseline/): attention_decode_main.cu = main's source (git show
# main:cf_compile_kernels/csrc/attention_decode.cu); attention_decode_heads_runlen.cu = this branch's source with
# kHeadLaneRun<EL> = EL >= 64 ? 1 : 64 / EL. Under this branch's launcher the head-lane bit reaches bucket 2-16
# launches and main's builds ignore it there (their token-slot loop): both A/Bs run in one process each.
# Predicted (bf16, us): main -> branch: Qwen2.5-0.5B B=4 1024 ~50 -> ~46, B=16 ~108 -> ~95; Llama-3.2-1B B=4 ~47 ->
# ~44; Llama-3-8B B=4 ~83 -> ~80; 4096 rows at risk (round 24: Llama-3.2-1B 4096 broke even at B=1).
# branch -> runlen: Llama-3.2-1B B=1 4096 40.8 -> ~37 (phase 4 bound by load latency: 8 runs per warp -> 4); at
# B=4/16 (2 warps / 1 warp per row) ~-2..-5 us at 4096; 1024 rows +-1.
# Batch-1 split overrides under the head-lane loop (round 5 found no smaller split faster when phase 4 grew with the
# chunk; with the lean loop it grows less): Qwen2.5-0.5B 1024 [C4,P15] 26.8 -> ~25 at 8 or fewer partials;
# falsified if no override beats the default.
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
FINAL=${OUT:-/tmp/cf-final}; W=/tmp/cf-out/round25b; mkdir -p "$W" "$FINAL"
BASE=$PWD/benchmarks/device/baseline
t0=$SECONDS
stamp() { echo "[$1 at $((SECONDS - t0)) s]"; }
CF_ATTN_VARIANTS=v5_heads timeout 130 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_kernels_attention.py -x \
  -k "head_lanes or random_sweep or named_models_match or timeline_build" > "$W/tests.log" 2>&1
echo "attention tests rc $?: $(tail -1 "$W/tests.log")"; grep -E "^(FAILED|E )" "$W/tests.log" | head -8
stamp tests
AB="--no-inductor --no-prefetch --dtypes bf16 --seqs 1024 4096 --models qwen2.5-0.5b llama-3.2-1b llama-3-8b"
timeout 160 python3 benchmarks/attention.py $AB --batches 2 4 8 16 --baseline-source "$BASE/attention_decode_main.cu" \
  --json "$FINAL/rows_ab.json" > "$W/bench_ab.log" 2>&1
echo "bench vs main rc $?"; grep -E " ours |copy" "$W/bench_ab.log" | cut -c1-170
stamp "bench vs main"
timeout 120 python3 benchmarks/attention.py $AB --batches 1 4 16 --baseline-source "$BASE/attention_decode_heads_runlen.cu" \
  --json "$FINAL/rows_runlen.json" > "$W/bench_runlen.log" 2>&1
echo "bench vs runlen rc $?"; grep -E " ours |copy" "$W/bench_runlen.log" | cut -c1-170
stamp "bench vs runlen"
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_backend_gpu.py -x > "$W/backend.log" 2>&1
echo "backend tests rc $?: $(tail -1 "$W/backend.log")"; grep -E "^(FAILED|E )" "$W/backend.log" | head -8
stamp backend
timeout 80 python3 benchmarks/attention.py --no-inductor --no-prefetch --dtypes bf16 --batches 1 --seqs 1024 4096 \
  --models qwen2.5-0.5b llama-3.2-1b --splits 8,8 4,8 8,4 4,4 2,16 4,2 8,2 2,4 2,8 \
  --json "$FINAL/rows_splits.json" > "$W/bench_splits.log" 2>&1
echo "bench splits rc $?"; grep -E " ours |copy|split" "$W/bench_splits.log" | cut -c1-170
stamp "bench splits"
tar czf "$FINAL/round25b.tgz" -C "$W" .
