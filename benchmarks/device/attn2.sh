#!/usr/bin/env bash
# Device call (H100, hard wall budget 120 s): attention work-split variants v3 / tail / qkv / v4
# (cf_compile_kernels/attention.py VARIANTS) -- correctness, then per-phase timing side by side.
#   bash benchmarks/device/attn2.sh        outputs under $OUT/attn2/
# Steps (each under `timeout`; a step that runs out leaves what it wrote):
#   1. compile, 16 in parallel, only the instantiations steps 2-3 use (fp16 buckets 1-2, bf16 bucket 4)   <= 40 s
#   2. GPU attention tests, quick subset (CF_ATTN_QUICK=1: 48 random fp16 cases x 4 variants vs fp64,
#      named cases, counters after phase cuts, 1000-run determinism, graph replay), -x                    <= 35 s
#   3. benchmarks/attention.py --phases --no-inductor, fp16 B=1, four models at S=1024 + Llama-2-7B 4096  <= 38 s
#   4. compact summary (ours and the phase cuts per variant per row)
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/cf-out}; D="$OUT/attn2"; mkdir -p "$D"
PY=${PYTHON:-python3}
t0=$SECONDS
stamp() { echo "[$1 at $((SECONDS - t0)) s]"; }

timeout 40 "$PY" - <<'PY' 2>&1 | tee "$D/compile.log" | tail -3
import itertools, time
from concurrent.futures import ThreadPoolExecutor
import torch
from cf_compile_kernels.attention import compiled_kernel
keys = [(torch.float16, bb, hg) for bb, hg in itertools.product((1, 2), (1, 2, 4, 8))] + [(torch.bfloat16, 4, 4)]
t = time.time()
with ThreadPoolExecutor(max_workers=len(keys)) as pool:
    done = list(pool.map(lambda k: compiled_kernel(*k), keys))
print(f"{len(done)} kernels ready in {time.time() - t:.1f} s; spills {[k.spill_bytes for k in done]}")
PY
stamp "compile done"

CF_ATTN_QUICK=1 timeout 35 "$PY" -m pytest -q -p no:cacheprovider -x -rfE tests/gpu/test_kernels_attention.py \
  2>&1 | tee "$D/tests.log" | tail -6
stamp "tests done"

run_bench() {  # $1 = timeout, rest = benchmark arguments
  local limit=$1; shift
  timeout "$limit" "$PY" benchmarks/attention.py --no-inductor --no-prefetch --phases --dtypes fp16 --batches 1 \
    --variants v3 tail qkv v4 "$@" 2>&1
}
left=$((116 - (SECONDS - t0))); [ "$left" -lt 10 ] && left=10
{
  run_bench $((left * 3 / 5)) --models llama-3-8b llama-3.2-1b qwen2.5-0.5b llama-2-7b --seqs 1024 \
    --json "$D/rows_1024.json"
  left=$((116 - (SECONDS - t0))); [ "$left" -lt 5 ] && left=5
  run_bench "$left" --models llama-2-7b --seqs 4096 --json "$D/rows_4096.json"
} | tee "$D/bench.log" | grep -v "^  cumulative"
stamp "bench done"

timeout 5 "$PY" - "$D" <<'PY'
import json, sys
from pathlib import Path
rows = []
for f in sorted(Path(sys.argv[1]).glob("rows_*.json")):
    rows += json.loads(f.read_text())
print("model          S     variant [C,P]   ours   cut after phase 1..5            floor")
for r in rows:
    c = r["config"] if "config" in r else r
    get = lambda k: r.get(k, r.get("metrics", {}).get(k))
    cuts = " ".join(f"{get(f'phase{k}_us') or 0:6.1f}" for k in range(1, 6))
    print(f"{c['model']:13s} {c['seq']:5d} {c.get('variant', 'v3'):7s} [C{c['cluster']},P{c['clusters_per_kv_head']}] "
          f"{get('ours_us'):6.1f}  {cuts}  {get('floor_us'):6.1f}")
PY
stamp "all done"
