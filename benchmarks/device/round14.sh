#!/usr/bin/env bash
# Round 14 (<= ~8 min on an H100): phase 5's merges by runs of elements (bitwise the per-element loops) and the
# lean runner's address check in C++.
# Needs the previous kernel source at benchmarks/device/baseline/attention_decode.cu (untracked; written by
#   git show <before>:cf_compile_kernels/csrc/attention_decode.cu > benchmarks/device/baseline/attention_decode.cu)
#   1. compile every instantiation of both sources in parallel (registers / spills)
#   2. GPU tests: bitwise the baseline source (v3: last-arriver split merge; v5 and v5_ring: wide tail), the fp64
#      sweep, determinism and graphs on the default
#   3. compute-sanitizer memcheck / racecheck on the split GQA case (P > 1 merge through global scratch)
#   4. attention.py, bf16 1024 cached, batch 1 / 4 / 16, four models (no Inductor: the policy rows of round 5 are
#      the comparison) and the batch-16 timeline of Llama-3-8B and Llama-2-7B
#   5. host_profile.py, Qwen2.5-0.5B
# Predictions: bitwise and sanitizer-clean. Llama-3-8B B=16 220 -> ~185 us (cluster merge 16 -> ~4, split merge
# 36 -> ~8); Llama-2-7B B=16 merge 8.9 -> ~3 us; batch-1 rows within +-1 us. Host per step (Qwen2.5-0.5B): ours
# 769 -> ~530 us, without guard evaluation 347 -> ~110 (the Python data_ptr map was 240-360 us).
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
FINAL=${OUT:-/tmp/cf-final}; W=/tmp/cf-out/round14; mkdir -p "$W" "$FINAL"
BASE=$PWD/benchmarks/device/baseline/attention_decode.cu
t0=$SECONDS
stamp() { echo "[$1 at $((SECONDS - t0)) s]"; }
[ -f "$BASE" ] || { echo "no baseline source at $BASE"; exit 2; }
timeout 200 python3 - "$BASE" <<'PY' 2>&1 | tail -3
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
print("new regs", [k.registers for k in new], "spills", sum(k.spill_bytes for k in new))
print("old regs", [k.registers for k in old], "spills", sum(k.spill_bytes for k in old))
PY
stamp compiled
CF_ATTN_BASELINE_SOURCE=$BASE CF_ATTN_VARIANTS="v3 v5 v5_ring" timeout 200 python3 -m pytest -q -p no:cacheprovider \
  tests/gpu/test_kernels_attention.py -k "baseline_source" > "$W/bitwise.log" 2>&1
echo "bitwise rc $?: $(tail -1 "$W/bitwise.log")"; grep -E "^(FAILED|E )" "$W/bitwise.log" | head -6
CF_ATTN_VARIANTS=v5_ring timeout 150 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_kernels_attention.py \
  -k "random_sweep or deterministic or graph_capture or named_models_match" > "$W/tests.log" 2>&1
echo "tests rc $?: $(tail -1 "$W/tests.log")"; grep -E "^(FAILED|E )" "$W/tests.log" | head -6
stamp tests
for tool in memcheck racecheck; do
  CF_ATTN_VARIANTS=v5_ring timeout 80 compute-sanitizer --tool "$tool" --report-api-errors no --error-exitcode 9 \
    python3 -m pytest -q -p no:cacheprovider -x tests/gpu/test_kernels_attention.py -k "named_models and small_gqa_split" \
    > "$W/split_$tool.log" 2>&1
  rc=$?; echo "split $tool rc $rc: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|passed|failed' "$W/split_$tool.log" | tr '\n' ' ' | cut -c1-200)"
done
stamp sanitizer
timeout 150 python3 benchmarks/attention.py --no-inductor --no-prefetch --dtypes bf16 --batches 1 4 16 --seqs 1024 \
  --json "$W/rows.json" > "$W/bench.log" 2>&1
grep -E "ours" "$W/bench.log" | cut -c1-150 | head -14
stamp bench
timeout 80 python3 benchmarks/attention.py --no-inductor --no-prefetch --timeline --dtypes bf16 --batches 16 \
  --seqs 1024 --models llama-3-8b llama-2-7b --json "$W/timeline_b16.json" > "$W/timeline.log" 2>&1
grep -E "^timeline|^  (qkv_wait|rope|attn|attn_sync|merge_arrive|merge_wait|merge|oproj|end) " "$W/timeline.log" | head -24
stamp timeline
timeout 150 python3 benchmarks/host_profile.py --model qwen2.5-0.5b --json "$W/host.json" > "$W/host.log" 2>&1
echo "host_profile rc $?"; grep '^{' "$W/host.log"
stamp host
tar czf "$FINAL/round14.tgz" -C "$W" .
