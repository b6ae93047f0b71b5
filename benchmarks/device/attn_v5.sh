#!/usr/bin/env bash
# Device call (H100, hard wall budget 100 s): attention variant "v5" = v4_mma + deep_kv (bit 32: phase 4 issues
# every K/V and mask load of a token step before the first use, and reduces the tokens' dot products with
# unrolled, branch-free shuffles; arithmetic unchanged, so bitwise v4_mma; cf_compile_kernels/attention.py
# VARIANTS) -- correctness, then per-phase timing beside v4_mma (the default).
#   bash benchmarks/device/attn_v5.sh        outputs under $OUT/attn_v5/
# Steps (each under `timeout`; a step that runs out leaves what it wrote):
#   1. compile, in parallel (capped at the 16 cores), only the 9 instantiations steps 2-3 use
#      (fp16 buckets 1-2 x 1/2/4/8 heads per pass, bf16 bucket 4 x 4)                               <= 30 s
#   2. GPU attention tests, quick subset for v5 (CF_ATTN_QUICK=1 CF_ATTN_VARIANTS=v5: 48 random fp16 cases
#      vs fp64, named cases, counters after phase cuts, 1000-run determinism, graph replay, v5 == v4_mma
#      bitwise on 24 sweep cases + the named ones, MMA bit ignored at batch 1-2), -x                <= 28 s
#   3. benchmarks/attention.py --no-inductor --no-prefetch --phases --variants v4_mma v5, fp16 B=1:
#      Llama-2-7B, Llama-3-8B, Qwen2.5-0.5B at S=1024, then Llama-2-7B at S=4096 (JSON after every row) rest
#   4. compact summary (ours and the phase cuts per variant per row)
# Predictions (benchmarks/NOTES-attention.md, "Round 4"): Llama-2-7B S=1024 phase 4 17.6 -> ~8 us, full
# 86.9 -> ~77; S=4096 136 -> ~110; Llama-3-8B 64.5 -> ~62; Qwen2.5-0.5B 32.7 -> ~32.
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/cf-out}; D="$OUT/attn_v5"; mkdir -p "$D"
PY=${PYTHON:-python3}
VARIANTS="v4_mma v5"
BUDGET=96  # seconds of the 100 s call this script may use (the rest: start-up and copying $OUT back)
t0=$SECONDS
stamp() { echo "[$1 at $((SECONDS - t0)) s]"; }
# left MIN RESERVE: seconds of the budget still free after keeping RESERVE for the later steps, at least MIN.
# Worst case (compile 30 + tests 28 used up): S=1024 rows 96-58-20 = 18 s, S=4096 row 20-5 = 15 s, summary 5 s:
# 96 s in all, never more (the floors cannot bind then).
left() { local l=$((BUDGET - (SECONDS - t0) - $2)); [ "$l" -lt "$1" ] && l=$1; echo "$l"; }

timeout 30 "$PY" - <<'PY' 2>&1 | tee "$D/compile.log" | tail -3
import itertools, os, time
from concurrent.futures import ThreadPoolExecutor
import torch
from cf_compile_kernels.attention import compiled_kernel
keys = [(torch.float16, bb, hg) for bb, hg in itertools.product((1, 2), (1, 2, 4, 8))] + [(torch.bfloat16, 4, 4)]
t = time.time()
with ThreadPoolExecutor(max_workers=min(len(keys), os.cpu_count() or 1, 16)) as pool:
    done = list(pool.map(lambda k: compiled_kernel(*k), keys))
print(f"{len(done)} kernels ready in {time.time() - t:.1f} s; regs {[k.registers for k in done]}; "
      f"spills {[k.spill_bytes for k in done]}")
PY
stamp "compile done"

CF_ATTN_QUICK=1 CF_ATTN_VARIANTS="v5" timeout 28 "$PY" -m pytest -q -p no:cacheprovider -x -rfE \
  -k "not qkv_hand_off" tests/gpu/test_kernels_attention.py 2>&1 | tee "$D/tests.log" | tail -6
stamp "tests done"

run_bench() {  # $1 = timeout, rest = benchmark arguments
  local limit=$1; shift
  timeout "$limit" "$PY" benchmarks/attention.py --no-inductor --no-prefetch --phases --dtypes fp16 --batches 1 \
    --variants $VARIANTS "$@" 2>&1
}
{
  run_bench "$(left 8 20)" --models llama-2-7b llama-3-8b qwen2.5-0.5b --seqs 1024 --json "$D/rows_1024.json"
  run_bench "$(left 5 5)" --models llama-2-7b --seqs 4096 --json "$D/rows_4096.json"
} | tee "$D/bench.log" | grep -v "^  cumulative"
stamp "bench done"

timeout 5 "$PY" - "$D" <<'PY'
import json, sys
from pathlib import Path
rows = []
for f in sorted(Path(sys.argv[1]).glob("rows_*.json")):
    rows += json.loads(f.read_text())
print("model          S     variant    [C,P]   ours   cut after phase 1..5            floor")
for r in rows:
    c = r["config"] if "config" in r else r
    get = lambda k: r.get(k, r.get("metrics", {}).get(k))
    cuts = " ".join(f"{get(f'phase{k}_us') or 0:6.1f}" for k in range(1, 6))
    print(f"{c['model']:13s} {c['seq']:5d} {c.get('variant', 'v4_mma'):10s} [C{c['cluster']},P{c['clusters_per_kv_head']}] "
          f"{get('ours_us'):6.1f}  {cuts}  {get('floor_us'):6.1f}")
PY
stamp "all done"
