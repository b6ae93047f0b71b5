#!/usr/bin/env bash
# Device call (H100, hard wall budget 100 s): attention variant "mma" (tail + q/k/v rows and o_proj slice
# on the tensor cores, mma.sync m16n8k16, for batch buckets >= 4; cf_compile_kernels/attention.py VARIANTS)
# -- correctness at batch 3-16 in fp16 and bf16, then per-phase timing beside "tail" at batch 16 and 4.
#   bash benchmarks/device/attn_mma.sh        outputs under $OUT/attn_mma/
# Steps (each under `timeout`; a step that runs out leaves what it wrote):
#   1. compile, in parallel (capped at the 16 cores), the 16 instantiations steps 2-3 use
#      (fp16/bf16 x buckets 4/16 x 1/2/4/8 heads per pass)                                          <= 40 s
#   2. GPU attention tests for mma, CF_ATTN_QUICK=mma (48 random cases at batch 3/4/11/16,
#      fp16+bf16, vs fp64; named batch 3-16 cases; counters after phase cuts; 1000-run determinism;
#      graph replay; mma != tail bitwise at
#      bucket >= 4, i.e. the MMA path really ran), -x                                                <= 28 s
#   3. benchmarks/attention.py --no-inductor --no-prefetch --phases --variants tail mma, fp16 S=1024,
#      Llama-2-7B and Llama-3-8B: batch 16 first (the row the variant is for), then batch 4         rest
#   4. compact summary (ours and the phase cuts per variant per row)
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/cf-out}; D="$OUT/attn_mma"; mkdir -p "$D"
PY=${PYTHON:-python3}
BUDGET=96  # seconds of the 100 s call this script may use (the rest: start-up and copying $OUT back)
t0=$SECONDS
stamp() { echo "[$1 at $((SECONDS - t0)) s]"; }
left() { local l=$((BUDGET - (SECONDS - t0))); [ "$l" -lt "$1" ] && l=$1; echo "$l"; }

timeout 40 "$PY" - <<'PY' 2>&1 | tee "$D/compile.log" | tail -3
import itertools, os, time
from concurrent.futures import ThreadPoolExecutor
import torch
from cf_compile_kernels.attention import compiled_kernel
keys = [(dt, bb, hg) for dt, bb, hg in itertools.product((torch.float16, torch.bfloat16), (4, 16), (1, 2, 4, 8))]
t = time.time()
with ThreadPoolExecutor(max_workers=min(len(keys), os.cpu_count() or 1, 16)) as pool:
    done = list(pool.map(lambda k: compiled_kernel(*k), keys))
print(f"{len(done)} kernels ready in {time.time() - t:.1f} s; regs {[k.registers for k in done]}; "
      f"spills {[k.spill_bytes for k in done]}")
PY
stamp "compile done"

CF_ATTN_QUICK=mma CF_ATTN_VARIANTS="mma" timeout 28 "$PY" -m pytest -q -p no:cacheprovider -x -rfE \
  tests/gpu/test_kernels_attention.py 2>&1 | tee "$D/tests.log" | tail -6
stamp "tests done"

run_bench() {  # $1 = timeout, $2 = batch, rest = benchmark arguments
  local limit=$1 batch=$2; shift 2
  timeout "$limit" "$PY" benchmarks/attention.py --no-inductor --no-prefetch --phases --dtypes fp16 \
    --batches "$batch" --seqs 1024 --models llama-2-7b llama-3-8b --variants tail mma "$@" 2>&1
}
{
  run_bench "$(left 10)" 16 --json "$D/rows_b16.json"
  run_bench "$(left 5)" 4 --json "$D/rows_b4.json"
} | tee "$D/bench.log" | grep -v "^  cumulative"
stamp "bench done"

timeout 4 "$PY" - "$D" <<'PY'
import json, sys
from pathlib import Path
rows = []
for f in sorted(Path(sys.argv[1]).glob("rows_*.json")):
    rows += json.loads(f.read_text())
print("model          B   variant [C,P]   ours   cut after phase 1..5            floor  err")
for r in rows:
    c = r["config"] if "config" in r else r
    get = lambda k: r.get(k, r.get("metrics", {}).get(k))
    cuts = " ".join(f"{get(f'phase{k}_us') or 0:6.1f}" for k in range(1, 6))
    print(f"{c['model']:13s} {c['batch']:3d} {c.get('variant', 'tail'):7s} [C{c['cluster']},P{c['clusters_per_kv_head']}] "
          f"{get('ours_us'):6.1f}  {cuts}  {get('floor_us'):6.1f}  {get('rel_err')}")
PY
stamp "all done"
