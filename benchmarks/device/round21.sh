#!/usr/bin/env bash
# Round 21 (<= ~2 min on an H100): what lands after round 20 -- the K/V ring at MHA batch buckets 1, 2 and 8 only.
# No timing needed: on this CPU (NVRTC 13.0, ELF sections compared) the buckets-1/2/8 one-head builds have round
# 20's .text byte for byte and every other build has round 16's (2c26bda), so round 20's and round 16's device
# measurements are those of this source. What round 20 did not run: compute-sanitizer on a bucket-8 ring launch
# (batch 5: four row groups per stage, a second pass with three groups past the batch) and the named cases with
# the new bucket set.
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
FINAL=${OUT:-/tmp/cf-final}; W=/tmp/cf-out/round21; mkdir -p "$W" "$FINAL"
t0=$SECONDS
stamp() { echo "[$1 at $((SECONDS - t0)) s]"; }
timeout 100 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_kernels_attention.py -x \
  -k "named_models_match and (small_mha_b5_ring or small_mha_b1_ring or llama2_7b)" > "$W/tests.log" 2>&1
echo "tests rc $?: $(tail -1 "$W/tests.log")"; grep -E "^(FAILED|E )" "$W/tests.log" | head -6
stamp tests
CF_ATTN_VARIANTS=v5_ring SANITIZE_KERNELS=attn SANITIZE_ATTN_K="named_models and small_mha_b5_ring" SANITIZE_DIR="$W/sanitize" \
  bash benchmarks/device/sanitize.sh | grep -E "^attn"
stamp sanitizers
tar czf "$FINAL/round21.tgz" -C "$W" .
