#!/usr/bin/env bash
# Session 4, third device call (<= 560 s): the HF decode step of Llama-3-8B (bf16, B=1, prompt 512) through
# benchmarks/e2e.py with kernels="auto" from cf_compile/measured.json (round-6 rows: the attention kernel at this
# shape, the FFN left to Inductor). generate() is skipped (two more compiles of 32 layers do not fit the call);
# the stage lines of e2e.log show how far a cut run got. One archive back.
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
FINAL=${OUT:-/tmp/cf-final}; W=/tmp/cf-out/e2e_llama3_8b; mkdir -p "$W" "$FINAL"
timeout 540 python3 benchmarks/e2e.py --models llama3-8b --repeats 3 --agree 128 --generate 0 --accuracy-steps 8 \
  --rows-out "$W/e2e.json" > "$W/e2e.log" 2>&1
echo "rc $?"; grep "^\[" "$W/e2e.log"; grep -i "error\|Traceback" "$W/e2e.log" | head -5
tar czf "$FINAL/e2e_llama3_8b.tgz" -C "$W" .
