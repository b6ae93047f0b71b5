#!/usr/bin/env bash
# FFN flow round 2 (2026-12-07): the claimed-tile kernel as the batch-1 default (rows per warp 4 at buckets 1-2, whole
# gate/up rows per warp, 4-row down tiles). Part 1: its GPU tests and the backend's. Part 2: bf16 B=1 and B=2 rows
# with Inductor, the cluster kernel and the other rows-per-warp build as variants. Part 3: the Qwen2.5-0.5B decode
# step by family (FFN now on the claimed tiles).
# Predicted: B=1 rows as round 1's best variant (Llama-2-7B ~99.5, Llama-3-8B ~125, Llama-3.2-1B ~42, Qwen ~17 us);
# B=2 flow slower than at B=1 by the h reads (~+5%) and still ahead of the cluster kernel at the small models;
# Qwen step: FFN only ~1434 - 24 x (23.5 - 17) ~ 1280 us, all ~1294 - 24 x 6 ~ 1150 (falsified if FFN only >= Inductor).
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
FINAL=${OUT:-/tmp/cf-final}; W=/tmp/cf-out/ffn_flow2; mkdir -p "$W" "$FINAL"
t0=$SECONDS
stamp() { echo "[$1 at $((SECONDS - t0)) s]"; }
timeout 70 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_kernels_ffn_flow.py -x > "$W/tests.log" 2>&1
echo "flow tests rc $?: $(tail -1 "$W/tests.log")"; grep -E "^(FAILED|E )" "$W/tests.log" | head -12
timeout 100 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_backend_gpu.py -x > "$W/backend.log" 2>&1
echo "backend tests rc $?: $(tail -1 "$W/backend.log")"; grep -E "^(FAILED|E )" "$W/backend.log" | head -12
stamp tests
timeout 170 python3 benchmarks/ffn.py --dtypes bf16 --batches 1 2 --variants kernel=cluster kernel=flow,rpw=2 \
  --rows-out "$FINAL/rows_flow.json" > "$W/bench.log" 2>&1
echo "bench rc $?"; grep -E "^variant|copy|Error|error" "$W/bench.log" | cut -c1-200
python3 - "$FINAL/rows_flow.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1])):
    c = r["config"]
    print(c["model"], c["batch"], "ours", r["ours_us"], "inductor", r["inductor_us"], "floor", r["floor_us"], r["launch"]["kernel"])
PY
stamp bench
TIMEOUT=200 bash benchmarks/device/e2e_families.sh qwen2.5-0.5b
stamp families
cp "$W"/*.log "$FINAL/" 2>/dev/null
