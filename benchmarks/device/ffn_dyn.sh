#!/usr/bin/env bash
# Run 6 of the gated-FFN kernel (branch ffn-dyn): dyn_down (down tiles claimed from per-slice counters, early
# clusters stealing the late ones' tiles) next to the default, one device call, HARD wall budget 110 s on an
# H100 (16 cores):
#   1. compile only the builds steps 2-3 launch (benchmarks/device/ffn_dyn_kernels.py: benchmark builds first,
#      then the tests'; ~52), 16 NVRTC jobs, capped at COMPILE_S
#   2. GPU tests of the new variant (-x; ffn_dyn_kernels.DEVICE_TESTS): random-config sweep (whole-dyn),
#      bitwise equality to the plain kernel (fixed split) on both load paths, incl. shapes where most slices
#      are empty and nearly everything is stolen (132 slices: the probe loops), 1000-run determinism (and
#      the plain kernel's bits), graph replay
#   3. benchmarks/ffn.py --phases --no-inductor: default vs dyn at Llama-2-7B fp16 B=1/16, Qwen2.5-0.5B B=1/16
#   4. a compact summary: times, timelines, "last CTA end minus median end"
# Run from the repository root:  bash benchmarks/device/ffn_dyn.sh   (outputs under $OUT/ffn_dyn/)
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
DIR="${OUT:-/tmp/cf-ffn-dyn-out}/ffn_dyn"
BUDGET_S=110
RESERVE_S=6  # summary + margin
COMPILE_S=28
TEST_S=34
JOBS=16
mkdir -p "$DIR"
SECONDS=0
left() { echo $((BUDGET_S - RESERVE_S - SECONDS)); }
VARIANTS=("flags=early_x+defer_fix_up+dyn_down")

echo "== 1. compile"
timeout "$COMPILE_S" python3 benchmarks/device/ffn_dyn_kernels.py --compile --jobs "$JOBS" \
    --variants "${VARIANTS[@]}" >"$DIR/compile.log" 2>&1
echo "   rc $? (124 = cut at ${COMPILE_S} s; the rest compiles on demand)"; tail -1 "$DIR/compile.log"
echo "   [${SECONDS} s]"

echo "== 2. GPU FFN tests of dyn_down"
K="$(timeout 10 python3 benchmarks/device/ffn_dyn_kernels.py --print-k)"  # the list step 1 compiled for
timeout "$TEST_S" python3 -m pytest -x -q -p no:cacheprovider -rfE tests/gpu/test_kernels_ffn.py -k "$K" \
    >"$DIR/tests.log" 2>&1
echo "   rc $? (124 = cut at ${TEST_S} s)"; tail -3 "$DIR/tests.log"
echo "   [${SECONDS} s]"

echo "== 3. default vs dyn_down with timelines (fp16: Llama-2-7B B=1/16, Qwen2.5-0.5B B=1/16)"
timeout "$(left)" python3 benchmarks/ffn.py --no-inductor --phases --models Llama-2-7B Qwen2.5-0.5B \
    --dtypes fp16 --batches 1 16 --variants "${VARIANTS[@]}" --rows-out "$DIR/variants.json" \
    >"$DIR/variants.log" 2>&1
echo "   rc $? (124 = cut; rows written so far are kept)   [${SECONDS} s]"

echo "== 4. summary"
timeout 5 python3 - "$DIR" <<'PY' | tee "$DIR/summary.txt"
import json
import sys
from pathlib import Path

path = Path(sys.argv[1]) / "variants.json"
rows = json.loads(path.read_text()) if path.exists() and path.stat().st_size else []
print("us (default first); tail = last CTA end - median CTA end (since launch)")
for r in rows:
    c = r["config"]
    timelines = {"default": r.get("phases", {}), **r.get("variant_phases", {})}
    times = {"default": r["ours_us"], **r.get("variants", {})}
    print(f"  {c['model']:13s} b{c['batch']:<2d} floor {r['floor_us']}")
    for label, us in times.items():
        t = timelines.get(label, {})
        tail = f"{t['end']['max'] - t['end']['median']:6.2f}" if "end" in t else "   n/a"
        steps = " ".join(f"{n} {v['cta']:.1f}" for n, v in t.items() if n != "start")
        us = us if isinstance(us, (int, float)) else "n/a"
        print(f"    {label:38s} {us:>7}  tail {tail}  | {steps}")
PY
echo "   total ${SECONDS} s"
