#!/usr/bin/env bash
# Run 7 of the gated-FFN kernel (branch r4-ffn): prefetch_down (each warp asks L2 for its first down-projection
# rows as soon as its last gate/up copy is out, so HBM stays busy through the cluster exchange) next to the
# default, one device call, HARD wall budget 100 s on an H100 (16 cores):
#   1. compile only the builds steps 2-3 launch (benchmarks/device/ffn_r7_kernels.py: benchmark builds first,
#      then the tests'; ~50), 16 NVRTC jobs, capped at COMPILE_S
#   2. GPU tests of the flag (-x; ffn_r7_kernels.DEVICE_TESTS, 168 tests): random-config sweep (whole-prefetch),
#      bitwise equality to the plain kernel (6 shapes x split/whole x 20 launches, direct path too), 1000-run
#      determinism (and equal to the same kernel without the flag), timeline build, graph replay
#   3. benchmarks/ffn.py --phases --no-inductor: default vs default+prefetch_down at Llama-2-7B fp16 B=1/16,
#      Qwen2.5-0.5B B=1/16
#   4. a compact summary: times, timelines, down phase (down - gather, median), "last CTA end minus median end"
# Run from the repository root:  bash benchmarks/device/ffn_r7.sh   (outputs under $OUT/ffn_r7/)
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
DIR="${OUT:-/tmp/cf-ffn-r7-out}/ffn_r7"
BUDGET_S=100
RESERVE_S=6  # summary + margin
COMPILE_S=24
TEST_S=28
JOBS=16
mkdir -p "$DIR"
SECONDS=0
left() { local s=$((BUDGET_S - RESERVE_S - SECONDS)); echo $((s > 1 ? s : 1)); }
VARIANTS=("flags=early_x+defer_fix_up+prefetch_down")

echo "== 1. compile"
timeout "$COMPILE_S" python3 benchmarks/device/ffn_r7_kernels.py --compile --jobs "$JOBS" \
    --variants "${VARIANTS[@]}" >"$DIR/compile.log" 2>&1
echo "   rc $? (124 = cut at ${COMPILE_S} s; the rest compiles on demand)"; tail -1 "$DIR/compile.log"
echo "   [${SECONDS} s]"

echo "== 2. GPU FFN tests of prefetch_down"
K="$(timeout 10 python3 benchmarks/device/ffn_r7_kernels.py --print-k)"  # the list step 1 compiled for
timeout "$TEST_S" python3 -m pytest -x -q -p no:cacheprovider -rfE tests/gpu/test_kernels_ffn.py -k "$K" \
    >"$DIR/tests.log" 2>&1
echo "   rc $? (124 = cut at ${TEST_S} s)"; tail -3 "$DIR/tests.log"
echo "   [${SECONDS} s]"

echo "== 3. default vs prefetch_down with timelines (fp16: Llama-2-7B B=1/16, Qwen2.5-0.5B B=1/16)"
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
print("us (default first); down = median(down) - median(gather); tail = last CTA end - median CTA end")
for r in rows:
    c = r["config"]
    timelines = {"default": r.get("phases", {}), **r.get("variant_phases", {})}
    times = {"default": r["ours_us"], **r.get("variants", {})}
    print(f"  {c['model']:13s} b{c['batch']:<2d} floor {r['floor_us']}")
    for label, us in times.items():
        t = timelines.get(label, {})
        tail = f"{t['end']['max'] - t['end']['median']:6.2f}" if "end" in t else "   n/a"
        down = f"{t['down']['median'] - t['gather']['median']:6.2f}" if "down" in t and "gather" in t else "   n/a"
        steps = " ".join(f"{n} {v['cta']:.1f}" for n, v in t.items() if n != "start")
        us = us if isinstance(us, (int, float)) else "n/a"
        print(f"    {label:42s} {us:>7}  down {down}  tail {tail}  | {steps}")
PY
echo "   total ${SECONDS} s"
