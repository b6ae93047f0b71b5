#!/usr/bin/env bash
# ONE command on the H100 for the MLA kernel variants (benchmarks/NOTES-mla.md), HARD budget 100 s of wall:
#   1. compile only the instantiations used below, 16 processes, bucket 16 first (the ~7 s compiles)  <= 28 s
#   2. GPU tests of the variants that carry new code paths (merge: spread merge over 132 chunks; fast, removed in round 4, had every
#      knob + the tile-sized chunks), fp64 reference on 16 cases, determinism, graph replay, -x         <= 26 s
#   3. benchmark, every variant, per-phase timelines, V2-Lite bf16 B=1 S=1024/4096, then B=16 S=1024    <= 42 s
#   4. a compact summary (variant x row, us, and the phase steps that matter)                           <= 4 s
# Outputs under $OUT/mla2/. No Inductor (the lead has its numbers).
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/cf-out}
D="$OUT/mla2"
mkdir -p "$D"
t0=$SECONDS
VARIANTS="base bar merge chunk"

timeout 28 python3 - <<'PY' 2>&1 | tee "$D/compile.log" | tail -2
from concurrent.futures import ProcessPoolExecutor
import torch
from cf_compile_kernels import mla
bench = [(torch.bfloat16, bb, v, ph) for v in mla.VARIANTS for bb in (1, 16) for ph in (False, True)]
tests = [(dt, bb, v, False) for v in ("merge",) for dt in (torch.float16, torch.bfloat16) for bb in (1, 2, 4, 8, 16)]
jobs = sorted(set(bench + tests), key=lambda j: (-j[1], str(j)))
def one(j):
    k = mla.compiled_kernel(j[0], j[1], arch="sm_90a", variant=j[2], phases=j[3])
    return k.registers, k.spill_bytes
with ProcessPoolExecutor(16) as ex:
    res = list(ex.map(one, jobs))
print(f"{len(jobs)} kernels compiled; registers {sorted({r for r, _ in res})}; spills {sum(s for _, s in res)}")
PY
echo "[compile done at $((SECONDS - t0)) s]"

CF_MLA_TEST_VARIANTS=merge CF_MLA_TEST_RANDOM=14 timeout 26 python3 -m pytest -q -x -p no:cacheprovider -rfE \
    tests/gpu/test_kernels_mla.py 2>&1 | tee "$D/tests.log" | tail -4
echo "[tests done at $((SECONDS - t0)) s]"

# shellcheck disable=SC2086
timeout 26 python3 benchmarks/mla.py --no-inductor --phases --variants $VARIANTS --batches 1 --seqs 1024 4096 \
    --dtypes bf16 --json "$D/b1.json" > "$D/bench-b1.log" 2>&1
echo "[bench B=1 done at $((SECONDS - t0)) s]"
# shellcheck disable=SC2086
timeout 16 python3 benchmarks/mla.py --no-inductor --phases --variants $VARIANTS --batches 16 --seqs 1024 \
    --dtypes bf16 --json "$D/b16.json" > "$D/bench-b16.log" 2>&1
echo "[bench B=16 done at $((SECONDS - t0)) s]"

timeout 4 python3 - "$D" <<'PY' | tee "$D/summary.txt"
import json, sys
from pathlib import Path
rows = []
for name in ("b1.json", "b16.json"):
    f = Path(sys.argv[1]) / name
    rows += json.loads(f.read_text()) if f.exists() else []
steps = ("proj", "proj_sync", "absorb", "absorb_sync", "attn", "attn_sync", "merge", "merge_sync", "w_uv", "w_uv_sync",
         "end")
print("variant  B     S  ours_us | phase steps us: " + " ".join(f"{s[:9]:>9s}" for s in steps))
for r in rows:
    cfg = r.get("config", r)
    variant, us = cfg.get("variant", r.get("variant")), r["ours_us"]
    ph, prev, cells = r.get("phases") or {}, None, []
    names = list(ph)
    for s in steps:
        if s in ph:
            before = ph[names[names.index(s) - 1]]
            cells.append(f"{ph[s] - before:9.2f}")
        else:
            cells.append(f"{'-':>9s}")
    print(f"{variant:7s} {cfg['batch']:2d} {cfg['seq']:5d} {us:8.1f} | " + " ".join(cells)
          + (f"  end {ph['end']:.1f}" if ph else ""))
PY
grep -h "WRONG\|Error\|error" "$D"/bench-*.log | head -5
echo "[all done at $((SECONDS - t0)) s; logs in $D]"
