#!/usr/bin/env bash
# ONE command on the H100 for MLA round 4 (benchmarks/NOTES-mla.md, run 4), HARD budget 90 s of wall (every
# step under `timeout`; the limits sum to 89 s):
#   1. compile the instantiations used below, 16 processes: the benchmark's (bucket 16 first), then the tests' <= 20 s
#   2. GPU tests of split (default) + split_mma + split_mma_all: fp64 reference on 9 cases, determinism,
#      graph replay, -x                                                                                       <= 24 s
#   3. benchmark split vs split_mma with per-phase timelines (+ the last CTA's end), bf16 V2-Lite
#      B=1/4/16 S=1024, one process, rows written as they finish                                             <= 28 s
#   4. split_mma_all (the tensor-core GEMV layout at batch 1 too), B=1 S=1024/4096                           <= 14 s
#   5. a compact summary (variant x row: us, phase steps, median-CTA end vs last-CTA end)                    <= 3 s
# Files under $OUT/mla_r4/: compile.log tests.log bench.log bench_all.log rows.json rows_all.json summary.txt.
# No Inductor (run 1 has its numbers). Round 5: the same command checks split_mma's cache-slot fix (step 2 first).
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1 CF_MLA_TEST_VARIANTS=split,split_mma,split_mma_all CF_MLA_TEST_RANDOM=6
OUT=${OUT:-/tmp/cf-out}
D="$OUT/mla_r4"
mkdir -p "$D"
t0=$SECONDS
VARIANTS="split split_mma"
ROWS="1:1024 4:1024 16:1024"

timeout 20 python3 - <<'PY' 2>&1 | tee "$D/compile.log" | tail -4
import os
import sys
from concurrent.futures import ProcessPoolExecutor

import torch

sys.path.insert(0, "tests/gpu")
import test_kernels_mla as t  # noqa: E402  (its CASES honour CF_MLA_TEST_RANDOM)

from cf_compile_kernels import mla  # noqa: E402

variants = os.environ["CF_MLA_TEST_VARIANTS"].split(",")
bench = [(torch.bfloat16, bb, v, ph) for v in ("split", "split_mma") for bb in (16, 4, 1) for ph in (True, False)]
bench += [(torch.bfloat16, 1, "split_mma_all", ph) for ph in (True, False)]
tests = [(c.dtype, mla.batch_bucket(c.batch), v, False) for v in variants for c in t.CASES]
jobs = bench + sorted(set(tests) - set(bench), key=lambda j: (-j[1], str(j)))


def one(j):
    k = mla.compiled_kernel(j[0], j[1], arch="sm_90a", variant=j[2], phases=j[3])
    return j[2], str(j[0])[6:], j[1], j[3], k.registers, k.spill_bytes


with ProcessPoolExecutor(16) as ex:
    res = list(ex.map(one, jobs))
for v in variants:
    print(v, "registers (dtype, bucket, phases, regs)", sorted({(dt, bb, ph, r) for name, dt, bb, ph, r, _ in res
                                                                if name == v}))
print(f"{len(jobs)} kernels compiled; spills {sum(s for *_, s in res)}")
PY
echo "[compile done at $((SECONDS - t0)) s]"

timeout 24 python3 -m pytest -q -x -p no:cacheprovider -rfE tests/gpu/test_kernels_mla.py 2>&1 \
    | tee "$D/tests.log" | tail -4
echo "[tests done at $((SECONDS - t0)) s]"

# shellcheck disable=SC2086
timeout 28 python3 benchmarks/mla.py --no-inductor --phases --variants $VARIANTS --rows $ROWS --dtypes bf16 \
    --json "$D/rows.json" > "$D/bench.log" 2>&1
echo "[bench done at $((SECONDS - t0)) s]"

timeout 14 python3 benchmarks/mla.py --no-inductor --phases --variants split_mma_all --rows 1:1024 1:4096 \
    --dtypes bf16 --json "$D/rows_all.json" > "$D/bench_all.log" 2>&1
echo "[bench split_mma_all done at $((SECONDS - t0)) s]"

timeout 3 python3 - "$D" <<'PY' | tee "$D/summary.txt"
import json
import sys
from pathlib import Path

rows = []
for name in ("rows.json", "rows_all.json"):
    f = Path(sys.argv[1]) / name
    rows += json.loads(f.read_text()) if f.exists() else []
steps = ("proj", "proj_sync", "absorb", "absorb_sync", "attn", "attn_sync", "merge", "merge_sync", "w_uv", "w_uv_sync",
         "end")
order = ("start", "stats", "proj", "proj_sync", "q_b", "q_b_sync", "absorb", "absorb_sync", "attn", "attn_sync",
         "merge", "merge_sync", "w_uv", "w_uv_sync", "end")
print("variant         B     S  ours_us | phase steps us: " + " ".join(f"{s[:9]:>9s}" for s in steps)
      + " | end(median CTA) end(last CTA) start(last CTA)")
for r in sorted(rows, key=lambda r: (r.get("config", r)["batch"], r.get("config", r)["seq"])):
    cfg = r.get("config", r)
    ph = r.get("phases") or {}
    cells = [f"{ph[s] - ph[order[order.index(s) - 1]]:9.2f}" if s in ph else f"{'-':>9s}" for s in steps]
    tail = f" | {ph['end']:6.1f} {ph.get('end_last', float('nan')):6.1f} {ph.get('start_last', float('nan')):5.2f}" if ph else ""
    print(f"{cfg.get('variant', r.get('variant')):14s} {cfg['batch']:2d} {cfg['seq']:5d} {r['ours_us']:8.1f} | "
          + " ".join(cells) + tail)
PY
grep -h "WRONG\|Error\|error" "$D/bench.log" "$D/bench_all.log" | head -5
echo "[all done at $((SECONDS - t0)) s; logs in $D]"
