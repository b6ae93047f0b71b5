#!/usr/bin/env bash
# Decode step by fused family (<= ~220 s per small model): inductor vs all vs "attention only" vs "ffn only",
# alternating rounds, one plain CUDA graph each. Then locally:
#   python benchmarks/e2e_families.py --append <files_at>/families_MODEL.json; python benchmarks/policy_table.py
#   bash benchmarks/device/e2e_families.sh qwen2.5-0.5b llama3.2-1b   -> $OUT/families_*.json, families.log
#   TIMEOUT=540 bash benchmarks/device/e2e_families.sh llama3-8b      (a 7-8B model: one per call)
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
FINAL=${OUT:-/tmp/cf-final}; mkdir -p "$FINAL"
for MODEL in "${@:-qwen2.5-0.5b}"; do
  timeout "${TIMEOUT:-280}" python3 benchmarks/e2e_families.py --model "$MODEL" --json "$FINAL/families_$MODEL.json" 2>&1 \
    | grep -E '^\[|"bench"|Error|Traceback' | tee -a "$FINAL/families.log" | cut -c1-400
done
