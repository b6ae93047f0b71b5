#!/usr/bin/env bash
# Nsight Compute on the default attention kernel (fp16, B=1, 1024 cached), one report per model, with
# per-instruction stall sampling (SourceCounters) against line info, to place the fixed ~7 us that the per-CTA
# timeline finds in phase 4 (attention) on every model (Qwen2.5-0.5B: 8.1 us for 0.5 MB of K/V).
#   bash benchmarks/device/attn_ncu.sh [models...]   -> $OUT/attn_ncu.tgz (reports, details/source CSVs)
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1 CF_NVRTC_EXTRA_OPTIONS="-lineinfo"
FINAL=${OUT:-/tmp/cf-final}; W=/tmp/cf-out/attn_ncu; mkdir -p "$W" "$FINAL"
MODELS=("${@:-qwen2.5-0.5b llama-2-7b}"); read -r -a MODELS <<< "${MODELS[*]}"
t0=$SECONDS
for m in "${MODELS[@]}"; do
  python3 - "$m" <<'PY' > "$W/$m.plain.log" 2>&1  # compile (disk cache) and check once without the profiler
import sys; sys.path.insert(0, "benchmarks")
import torch, attention as A
layer = A.make_layer(sys.argv[1], 1, 1024, torch.float16, 0)
A.ours(layer); torch.cuda.synchronize(); print("ok", sys.argv[1])
PY
  timeout 240 ncu --clock-control none --target-processes all -k regex:attention --launch-skip 3 --launch-count 1 \
    --set full --import-source yes -f -o "$W/$m" python3 - "$m" <<'PY' > "$W/$m.ncu.log" 2>&1
import sys; sys.path.insert(0, "benchmarks")
import torch, attention as A
layer = A.make_layer(sys.argv[1], 1, 1024, torch.float16, 0)
for _ in range(5):
    A.ours(layer)
torch.cuda.synchronize()
PY
  echo "$m ncu rc $? at $((SECONDS - t0)) s"; tail -3 "$W/$m.ncu.log"
  ncu --import "$W/$m.ncu-rep" --page details --csv > "$W/$m.details.csv" 2>&1
  ncu --import "$W/$m.ncu-rep" --page source --csv --print-source sass > "$W/$m.sass.csv" 2> "$W/$m.sass.err" \
    || ncu --import "$W/$m.ncu-rep" --page source --csv > "$W/$m.sass.csv" 2>> "$W/$m.sass.err"
  ncu --import "$W/$m.ncu-rep" --page source --csv --print-source cuda > "$W/$m.cuda.csv" 2> "$W/$m.cuda.err"
  wc -c "$W/$m".*.csv; head -c 600 "$W/$m.sass.err"
  grep -E '"(Duration|Memory Throughput|DRAM Throughput|Registers Per Thread|Achieved Occupancy|Warp Cycles Per Issued Instruction)"' "$W/$m.details.csv" | cut -c1-220 | head -12
done
echo "done at $((SECONDS - t0)) s"
tar czf "$FINAL/attn_ncu.tgz" -C "$W" .
