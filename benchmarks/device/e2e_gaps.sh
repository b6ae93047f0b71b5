#!/usr/bin/env bash
# Session 4, last device call (<= 550 s): why Llama-3-8B's decode step through clusterfusion (6916 us) is slower
# than Inductor in a plain graph (6438) while the kernels of the two add up to the same busy time (6404 / 6384):
#   1. benchmarks/e2e_gaps.py: host time per call, GPU span/busy/idle and the largest gaps per step, for ours
#      through the lean runner, ours in one plain graph, and Inductor in one plain graph
#   2. benchmarks/e2e.py for Llama-3.2-1B (B=1 bf16, kernels="auto"), the model the last session's call cut
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
FINAL=${OUT:-/tmp/cf-final}; W=/tmp/cf-out/e2e_gaps; mkdir -p "$W" "$FINAL"
t0=$SECONDS
timeout 290 python3 benchmarks/e2e_gaps.py --model llama3-8b --inductor --json "$W/gaps.json" > "$W/gaps.log" 2>&1
echo "gaps rc $? at $((SECONDS - t0)) s"; grep -v "^ \|AUTOTUNE\|triton_\|^$" "$W/gaps.log" | cut -c1-900 | tail -8
timeout $((540 - (SECONDS - t0))) python3 benchmarks/e2e.py --models llama3.2-1b --repeats 3 --agree 128 --generate 16 \
  --accuracy-steps 8 --rows-out "$W/e2e.json" > "$W/e2e.log" 2>&1
echo "e2e rc $? at $((SECONDS - t0)) s"; grep "^\[" "$W/e2e.log"
tar czf "$FINAL/e2e_gaps.tgz" -C "$W" .
