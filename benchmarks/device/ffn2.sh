#!/usr/bin/env bash
# Run 5 of the gated-FFN kernel (branch ffn2): the fixed-cost flags next to the current default, one device
# call with a HARD wall budget of 110 s on an H100 (kernels compile cold there):
#   1. compile only the kernels this script runs (fp16, cluster 4, both batch tiles, plain + timeline
#      builds), 16 NVRTC jobs at once, so no test or benchmark compiles on its own
#   2. GPU FFN tests of the new variants (-x): every flag bitwise equal to the plain kernel (20 launches each,
#      6 shapes, split and whole, staged and direct), 1000-run determinism of early_x+defer_fix_up
#   3. benchmarks/ffn.py --phases, no Inductor: every variant with its timeline at Llama-2-7B fp16 B=1 and
#      B=16, Qwen2.5-0.5B fp16 B=1
#   4. a compact summary (times per variant, timeline rows)
# Run from the repository root:  bash benchmarks/device/ffn2.sh      (outputs under $OUT/ffn2/)
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
DIR="${OUT:-/tmp/cf-ffn2-out}/ffn2"
BUDGET_S=110
RESERVE_S=8  # summary + margin
COMPILE_S=30
TEST_S=32
mkdir -p "$DIR"
SECONDS=0
left() { echo $((BUDGET_S - RESERVE_S - SECONDS)); }
VARIANTS=(
    "flags=early_x"
    "flags=defer_fix_up"
    "flags=early_x+defer_fix_up"
    "mode=whole,flags=early_x+defer_fix_up"
    "stages=0,flags=early_x+defer_fix_up"
)
export FFN2_VARIANTS="${VARIANTS[*]}"

echo "== 1. compile (only what steps 2-3 launch; 16 NVRTC jobs)"
timeout "$COMPILE_S" python3 - >"$DIR/compile.log" 2>&1 <<'PY'
import itertools
import os
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from benchmarks.ffn import MODELS, parse_variant
from cf_compile_kernels import ffn
from cf_compile_kernels.build import compile_kernel

CLUSTERS = 30  # what the occupancy query gave on the H100 (run 1-4); the ring choice depends on it
early_defer = ffn.parse_flags("early_x+defer_fix_up")
bench = [ffn.Tuning()] + [parse_variant(v) for v in os.environ["FFN2_VARIANTS"].split()]
tests = [ffn.Tuning(mode=m, flags=f) for m in (0, 2) for f in range(4)]
tests += [ffn.Tuning(mode=m, stages=0, flags=f) for m in (0, 2) for f in (0, early_defer)]
jobs = set()
for dtype in (torch.float16, torch.bfloat16):
    for bt in (1, 2):
        tunings = [(t, {}) for t in bench + tests] + [(t, {"CF_FFN_PHASES": 1}) for t in bench]
        if dtype == torch.bfloat16:  # the 1000-run determinism test only
            tunings = [(ffn.Tuning(), {}), (ffn.Tuning(flags=early_defer), {})]
        for (t, defines), model in itertools.product(tunings, ("Llama-2-7B", "Qwen2.5-0.5B")):
            warps, stages = ffn.choose_path(*MODELS[model], 4, CLUSTERS, bt, t.mode)  # ring: shape-dependent
            stages = stages if t.stages is None else t.stages
            args = ffn.template_args(dtype, 4, bt, warps, t.depth, stages, t.mode, t.flags)
            jobs.add((args, tuple(defines.items())))
started = time.time()
with ThreadPoolExecutor(16) as pool:
    done = list(pool.map(lambda j: compile_kernel(ffn.SOURCE, ffn.KERNEL, template_args=j[0], defines=dict(j[1])), sorted(jobs, key=str)))
spills = [k.name_expression for k in done if k.spill_bytes or k.local_bytes]
print(f"{len(done)} kernels in {time.time() - started:.1f} s; spilling: {spills or 'none'}")
PY
echo "   rc $? (124 = cut at ${COMPILE_S} s; the rest then compiles on demand)"; tail -1 "$DIR/compile.log"
echo "   [${SECONDS} s]"

echo "== 2. GPU FFN tests of the new variants"
timeout "$TEST_S" python3 -m pytest -x -q -p no:cacheprovider -rfE tests/gpu/test_kernels_ffn.py \
    -k "test_flags_ or (bitwise_identical_over_1000 and early-defer)" >"$DIR/tests.log" 2>&1
echo "   rc $? (124 = cut at ${TEST_S} s)"; tail -3 "$DIR/tests.log"
echo "   [${SECONDS} s]"

echo "== 3. variants + phase timelines (Llama-2-7B fp16 B=1/16, Qwen2.5-0.5B B=1)"
timeout "$(left)" python3 benchmarks/ffn.py --no-inductor --phases --models Llama-2-7B Qwen2.5-0.5B \
    --dtypes fp16 --batches 1 16 --variants "${VARIANTS[@]}" --rows-out "$DIR/variants.json" \
    >"$DIR/variants.log" 2>&1 &
BENCH=$!
# Qwen B=16 is not asked for: stop after the third row (the script writes rows as it goes)
while kill -0 "$BENCH" 2>/dev/null; do
    if [ -s "$DIR/variants.json" ] && python3 -c "import json,sys; sys.exit(len(json.load(open('$DIR/variants.json'))) < 3)" 2>/dev/null; then
        kill "$BENCH" 2>/dev/null; break
    fi
    sleep 1
done
wait "$BENCH" 2>/dev/null
echo "   rc $?   [${SECONDS} s]"

echo "== 4. summary"
timeout 10 python3 - "$DIR" <<'PY' | tee "$DIR/summary.txt"
import json
import sys
from pathlib import Path

path = Path(sys.argv[1]) / "variants.json"
rows = json.loads(path.read_text()) if path.exists() and path.stat().st_size else []
print("variants (us; default first):")
for r in rows:
    c = r["config"]
    vs = "  ".join(f"{k}={v if isinstance(v, (int, float)) else 'n/a'}" for k, v in r.get("variants", {}).items())
    print(f"  {c['model']:13s} b{c['batch']:<2d} default={r['ours_us']}  {vs}  (floor {r['floor_us']})")
    timelines = {"default": r.get("phases", {}), **r.get("variant_phases", {})}
    names = list(next(iter(timelines.values()), {}))
    if names:
        print("    phase (per-CTA clock us)              " + " ".join(f"{n:>7s}" for n in names) + "  last-end")
        for label, t in timelines.items():
            print(f"    {label:38s} " + " ".join(f"{t[n]['cta']:7.2f}" for n in names) + f"  {t['end']['max']:7.2f}")
PY
echo "   total ${SECONDS} s"
