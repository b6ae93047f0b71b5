#!/usr/bin/env bash
# Round 16 (<= ~5 min on an H100): the 8-heads-per-pass builds of batch bucket 4 and up keep the one-run split
# merge (round 15's merge_split_runs spilled 36 B there under NVRTC 13.5: CI failed). A/B against round 15's
# source (c083905), bitwise and in time, one process.
# Needs round 15's source at benchmarks/device/baseline/attention_decode.cu (untracked):
#   git show c083905:cf_compile_kernels/csrc/attention_decode.cu > benchmarks/device/baseline/attention_decode.cu
# Predictions: bitwise 3/3; Qwen2.5-0.5B (group 7 -> 8 heads per pass) B=4 within +-1 us of round 15 (its split
# merge runs P <= 4 partials of 2 KV heads: ~1-2 us of the step), B=16 within +-2 us; every other row unchanged.
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
FINAL=${OUT:-/tmp/cf-final}; W=/tmp/cf-out/round16; mkdir -p "$W" "$FINAL"
BASE=$PWD/benchmarks/device/baseline/attention_decode.cu
t0=$SECONDS
stamp() { echo "[$1 at $((SECONDS - t0)) s]"; }
[ -f "$BASE" ] || { echo "no baseline source at $BASE"; exit 2; }
python3 -c "import torch, cuda.bindings; print(torch.__version__, torch.version.cuda)"
timeout 200 python3 - "$BASE" <<'PY' 2>&1 | tail -3  # both sources' builds, in parallel, before the tests
import sys
from concurrent.futures import ThreadPoolExecutor
import torch
from cf_compile_kernels import attention
from cf_compile_kernels.build import compile_kernel
keys = [(dt, bb, hg) for dt in (torch.float16, torch.bfloat16) for bb in (1, 2, 4, 8, 16) for hg in (1, 2, 4, 8)]
def build(key, source):
    dt, bb, hg = key
    return compile_kernel(source, attention.KERNEL, template_args=(attention.SUPPORTED_DTYPES[dt], bb, hg))
with ThreadPoolExecutor(16) as pool:
    new = list(pool.map(lambda k: build(k, attention.SOURCE), keys))
    old = list(pool.map(lambda k: build(k, sys.argv[1]), keys))
print("new spills", sum(k.spill_bytes for k in new), "old spills", sum(k.spill_bytes for k in old))
PY
stamp compiled
CF_ATTN_BASELINE_SOURCE=$BASE CF_ATTN_VARIANTS="v3 v5 v5_ring" timeout 200 python3 -m pytest -q -p no:cacheprovider \
  tests/gpu/test_kernels_attention.py -k "baseline_source" > "$W/bitwise.log" 2>&1
echo "bitwise rc $?: $(tail -1 "$W/bitwise.log")"; grep -E "^(FAILED|E )" "$W/bitwise.log" | head -6
stamp bitwise
[ -n "${BITWISE_ONLY:-}" ] && { tar czf "$FINAL/round16.tgz" -C "$W" .; exit 0; }  # the re-run after a cold timeout
CF_ATTN_VARIANTS=v5_ring timeout 150 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_kernels_attention.py \
  -k "random_sweep or deterministic or graph_capture or named_models_match" > "$W/tests.log" 2>&1
echo "tests rc $?: $(tail -1 "$W/tests.log")"; grep -E "^(FAILED|E )" "$W/tests.log" | head -6
stamp tests
timeout 200 python3 benchmarks/attention.py --no-inductor --no-prefetch --dtypes bf16 fp16 --batches 4 16 --seqs 1024 \
  --models qwen2.5-0.5b --baseline-source "$BASE" --json "$W/rows.json" > "$W/bench.log" 2>&1
echo "bench rc $?"; grep -E "ours" "$W/bench.log" | sed -e 's/(L2 prefetch -) inductor - //' | cut -c1-160 | head -8
stamp bench
tar czf "$FINAL/round16.tgz" -C "$W" .
