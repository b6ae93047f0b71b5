#!/usr/bin/env bash
# FFN flow round 1 (2026-12-07): the claimed-tile gated-FFN kernel (csrc/gated_ffn_flow.cu) beside the cluster kernel
# and Inductor. Part 1: its GPU tests. Part 2: bf16 B=1 rows of the four benchmark models with Inductor, the
# flow kernel and its tile-cut variants. Part 3: B=4 and 8 rows, ours (cluster) vs flow, no Inductor.
# Predicted (bf16 B=1, us; cluster / Inductor from 2026-11-23): flow Llama-2-7B ~97 (cluster ~116, Inductor ~99-113),
# Llama-3-8B ~125 (~150), Llama-3.2-1B ~38 (49.2 / 40.7), Qwen2.5-0.5B ~13 (20.9 / 18.4). Falsified at a model if
# flow is not faster than the cluster kernel there; the tile-cut variants move it by <= 3%.
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
FINAL=${OUT:-/tmp/cf-final}; W=/tmp/cf-out/ffn_flow; mkdir -p "$W" "$FINAL"
t0=$SECONDS
stamp() { echo "[$1 at $((SECONDS - t0)) s]"; }
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  timeout 150 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_kernels_ffn_flow.py -x > "$W/tests.log" 2>&1
  echo "flow tests rc $?: $(tail -1 "$W/tests.log")"; grep -E "^(FAILED|E )" "$W/tests.log" | head -12
  stamp tests
fi
V="kernel=flow kernel=flow,gu=1 kernel=flow,gu=2 kernel=flow,down=2 kernel=flow,down=4 kernel=flow,down=8 kernel=flow,per_sm=1 kernel=flow,rpw=4,gu=1,down=8"
timeout 300 python3 benchmarks/ffn.py --dtypes bf16 --batches 1 --variants $V --rows-out "$FINAL/rows_b1.json" \
  > "$W/bench_b1.log" 2>&1
echo "bench b1 rc $?"; grep -E "^variant|copy|Error|error" "$W/bench_b1.log" | cut -c1-200
python3 - "$FINAL/rows_b1.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1])):
    c = r["config"]
    print(c["model"], c["batch"], "ours", r["ours_us"], "inductor", r["inductor_us"], "floor", r["floor_us"], "launch", r["launch"])
PY
stamp "bench b1"
timeout 150 python3 benchmarks/ffn.py --no-inductor --dtypes bf16 --batches 4 8 --variants kernel=flow kernel=flow,per_sm=1 \
  --rows-out "$FINAL/rows_b48.json" > "$W/bench_b48.log" 2>&1
echo "bench b4/8 rc $?"; grep -E "^variant|Error|error" "$W/bench_b48.log" | cut -c1-200
python3 - "$FINAL/rows_b48.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1])):
    c = r["config"]
    print(c["model"], c["batch"], "ours", r["ours_us"], "floor", r["floor_us"])
PY
stamp "bench b4/8"
cp "$W"/*.log "$FINAL/" 2>/dev/null
