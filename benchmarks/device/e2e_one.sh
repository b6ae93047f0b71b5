#!/usr/bin/env bash
# One model's HF decode step end to end in one device call (<= 560 s): bash benchmarks/device/e2e_one.sh MODEL
# [e2e.py options]. Defaults fit a 7-8B model in the call: no generate() (two more compiles of 32 layers), 8
# accuracy-diff steps; Inductor and ours are timed again in alternating rounds for the row (e2e.py). Small models
# can add e.g. --generate 32 --kernels-all. The stage lines of e2e.log show how far a cut run got.
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
MODEL=${1:?model name, e.g. llama2-7b}; shift
FINAL=${OUT:-/tmp/cf-final}; W=/tmp/cf-out/e2e_$MODEL; mkdir -p "$W" "$FINAL"
timeout 540 python3 benchmarks/e2e.py --models "$MODEL" --repeats 3 --agree 128 --generate 0 --accuracy-steps 8 \
  --rows-out "$W/e2e.json" "$@" > "$W/e2e.log" 2>&1
echo "rc $?"; grep "^\[" "$W/e2e.log"; grep -i "error\|Traceback" "$W/e2e.log" | head -5
tar czf "$FINAL/e2e_$MODEL.tgz" -C "$W" .
