#!/usr/bin/env bash
# Session 4, second device call (<= ~560 s on an H100): correctness of the new defaults, the batch-16 phase-4
# question, and the kernels="auto" evidence at batch 1/4/16.
#   1. attention: every instantiation compiled (40, in parallel), then the full GPU test file for v5 (216-case
#      fp64 sweep, named models, deep_kv bitwise its base, MMA buckets, 1000-run determinism, graph replay)
#   2. Llama-2-7B fp16 B=16 phase cuts: this tree (v4_mma, v5) beside two reference trees carried as
#      _ref_pre/ (b558542, before the review pass) and _ref_main/ (main 67755e9): round 5 measured phase 4 at
#      203 us where round 4 measured 124 (is it the review pass, the v5 merge, or the machine?)
#   3. ours (defaults) and Inductor in the same run, bf16, 1024 cached: attention B=1/4/16 for the four models,
#      MLA (DeepSeek-V2-Lite) B=1/4/16 at 1024 and B=1 at 4096
#   4. cf_compile/measured.json rebuilt from those rows (benchmarks/policy_table.py --extra)
# One archive back ($OUT/round6.tgz).
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
FINAL=${OUT:-/tmp/cf-final}; W=/tmp/cf-out/round6; mkdir -p "$W" "$FINAL"
t0=$SECONDS
stamp() { echo "[$1 at $((SECONDS - t0)) s]"; }
COMPILE='
import itertools, os, sys, time
from concurrent.futures import ThreadPoolExecutor
import torch
from cf_compile_kernels.attention import compiled_kernel
full = sys.argv[1] == "all"
keys = ([(dt, bb, hg) for dt, bb, hg in itertools.product((torch.float16, torch.bfloat16), (1, 2, 4, 8, 16), (1, 2, 4, 8))]
        if full else [(torch.float16, 16, 1)])
t = time.time()
with ThreadPoolExecutor(max_workers=min(len(keys), 16)) as pool:
    done = list(pool.map(lambda k: compiled_kernel(*k), keys))
print(f"{len(done)} kernels ready in {time.time() - t:.1f} s; regs {[k.registers for k in done]}; "
      f"spills {[k.spill_bytes for k in done]}")
'
(cd _ref_pre && timeout 60 python3 -c "$COMPILE" one > "$W/ref_pre_compile.log" 2>&1) &
(cd _ref_main && timeout 60 python3 -c "$COMPILE" one > "$W/ref_main_compile.log" 2>&1) &
timeout 100 python3 -c "$COMPILE" all 2>&1 | tee "$W/compile.log" | tail -2; wait; stamp compile

CF_ATTN_VARIANTS="v5" timeout 110 python3 -m pytest -q -p no:cacheprovider -rfE tests/gpu/test_kernels_attention.py \
  -k "not split_override" > "$W/attn_tests.log" 2>&1; tail -3 "$W/attn_tests.log"; stamp "attention tests"

b16() {  # $1 = tree, $2 = label, rest = variants
  local tree=$1 label=$2; shift 2
  (cd "$tree" && timeout 40 python3 benchmarks/attention.py --no-inductor --no-prefetch --phases --dtypes fp16 \
     --batches 16 --seqs 1024 --models llama-2-7b --variants "$@" --json "$W/b16_$label.json" 2>&1 \
     | grep -v "^  cumulative" | tail -3)
}
b16 _ref_pre pre mma; b16 _ref_main main mma; b16 . round6 v4_mma v5; stamp "batch-16 phases"

timeout 230 python3 benchmarks/attention.py --no-prefetch --dtypes bf16 --batches 1 4 16 --seqs 1024 \
  --models qwen2.5-0.5b llama-3.2-1b llama-3-8b llama-2-7b --inductor-budget 170 \
  --json "$W/attn.json" 2>&1 | tee "$W/attn.log" | grep -v "^  cumulative" | tail -14; stamp "attention rows"
timeout 75 python3 benchmarks/mla.py --rows 1:1024 4:1024 16:1024 1:4096 --dtypes bf16 --inductor-budget 50 \
  --json "$W/mla.json" 2>&1 | tee "$W/mla.log" | tail -5; stamp "mla rows"
python3 benchmarks/policy_table.py --extra "$W/attn.json" "$W/mla.json" 2>&1 | tee "$W/policy.log" | tail -12
cp cf_compile/measured.json "$W/measured.json"; stamp policy
tar czf "$FINAL/round6.tgz" -C "$W" .
