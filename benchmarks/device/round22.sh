#!/usr/bin/env bash
# Round 22 (<= ~5 min on an H100): where the small models' attention time goes with WARM caches.
# Round 7's Nsight Compute samples (benchmarks/NOTES-attention.md) were taken with ncu's default cache control,
# which flushes every cache before each replay: instruction fetch ("no_inst") came out as 34.5% of Qwen2.5-0.5B's
# stall samples, and "the small shapes' fixed cost is instruction fetch" has guided rounds since. In the graph
# replays that the benchmarks time (8 layers of the same kernel back to back), the code is warm in L2 and maybe
# in the SM's instruction caches. This round samples the same kernel both ways in one process per model, so the
# two breakdowns differ only in cache control:
#   1. ncu --set full --import-source, -lineinfo builds, bf16 B=1 1024 cached, default variant:
#      Qwen2.5-0.5B (G=7, 8 heads per pass) cold and warm, Llama-3.2-1B (G=4) warm.
#   2. nvdisasm -gi of the same cubins (the device's NVRTC and -lineinfo), benchmarks/ncu_phases.py per profile.
#   3. the per-CTA timeline of both rows (CF_ATTN_TIMELINE build), for today's phase cuts.
# Prediction (written before the run): if instruction fetch is an artifact of the flush, warm no_inst falls below
# ~10% of samples and barrier / long_sb take its place; if it stays above ~25%, fetch from L2 into the SM's
# instruction cache is the small shapes' cost, and shrinking the code a CTA runs once is the lever.
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1 CF_NVRTC_EXTRA_OPTIONS="-lineinfo"
FINAL=${OUT:-/tmp/cf-final}; W=/tmp/cf-out/round22; mkdir -p "$W" "$FINAL"
t0=$SECONDS
stamp() { echo "[$1 at $((SECONDS - t0)) s]"; }
python3 - "$W" <<'PY' 2>&1 | tail -3  # the two lineinfo cubins, compiled once, written for nvdisasm
import sys, torch
from cf_compile_kernels.attention import compiled_kernel
for hg in (8, 4):
    k = compiled_kernel(torch.bfloat16, 1, hg)
    open(f"{sys.argv[1]}/attn_bf16_1_{hg}.cubin", "wb").write(k.cubin)
    print("hg", hg, "regs", k.registers, "spill", k.spill_bytes)
PY
for hg in 8 4; do nvdisasm -gi -c "$W/attn_bf16_1_$hg.cubin" > "$W/attn_bf16_1_$hg.sassi" 2> "$W/nvdisasm_$hg.err"; done
stamp compile
profile() {  # model cache-control name
  timeout 150 ncu --clock-control none --cache-control "$2" --target-processes all -k regex:attention \
    --launch-skip 5 --launch-count 1 --set full --import-source yes -f -o "$W/$3" python3 - "$1" <<'PY' > "$W/$3.ncu.log" 2>&1
import sys; sys.path.insert(0, "benchmarks")
import torch, attention as A
layers = [A.make_layer(sys.argv[1], 1, 1024, torch.bfloat16, s) for s in range(2)]
for i in range(8):
    A.ours(layers[i % 2])
torch.cuda.synchronize()
PY
  echo "$3 ncu rc $?"; tail -2 "$W/$3.ncu.log"
  ncu --import "$W/$3.ncu-rep" --page details --csv > "$W/$3.details.csv" 2>&1
  ncu --import "$W/$3.ncu-rep" --page source --csv --print-source sass > "$W/$3.sass.csv" 2> "$W/$3.sass.err"
  grep -E '"(Duration|DRAM Throughput|L2 Hit Rate|Warp Cycles Per Issued Instruction)"' "$W/$3.details.csv" | cut -c1-200 | head -6
  python3 benchmarks/ncu_phases.py --csv "$W/$3.sass.csv" --sass "$W/attn_bf16_1_$4.sassi" > "$W/$3.phases.txt" 2>&1
  cat "$W/$3.phases.txt"
  stamp "$3"
}
profile qwen2.5-0.5b all qwen_cold 8
profile qwen2.5-0.5b none qwen_warm 8
profile llama-3.2-1b none l1b_warm 4
unset CF_NVRTC_EXTRA_OPTIONS
timeout 120 python3 benchmarks/attention.py --no-inductor --no-prefetch --timeline --dtypes bf16 --batches 1 \
  --seqs 1024 --models qwen2.5-0.5b llama-3.2-1b --json "$W/timeline_rows.json" > "$W/timeline.log" 2>&1
echo "timeline rc $?"; grep -v "^\s*$" "$W/timeline.log" | tail -40
stamp timeline
tar czf "$FINAL/round22.tgz" -C "$W" .
