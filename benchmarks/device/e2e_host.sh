#!/usr/bin/env bash
# Host time vs GPU time of a compiled decode step (<= ~420 s for a small model): e2e_gaps.py with ours through
# the lean runner and in a plain graph, kernels auto and all, and Inductor in a plain graph.
#   bash benchmarks/device/e2e_host.sh MODEL   -> $OUT/e2e_host_MODEL.tgz
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
MODEL=${1:?model name, e.g. qwen2.5-0.5b}; shift
FINAL=${OUT:-/tmp/cf-final}; W=/tmp/cf-out/e2e_host_$MODEL; mkdir -p "$W" "$FINAL"
timeout 560 python3 benchmarks/e2e_gaps.py --model "$MODEL" --kernels auto all --inductor --json "$W/gaps.json" "$@" \
  > "$W/gaps.log" 2>&1
echo "rc $?"; grep '^{' "$W/gaps.log" | python3 -c "
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    print(r['variant'], {k: r.get(k) for k in ('step_us', 'host_us', 'span_us', 'busy_us', 'idle_us', 'kernels', 'seconds', 'error')})"
grep -i "Traceback\|Error" "$W/gaps.log" | head -5
tar czf "$FINAL/e2e_host_$MODEL.tgz" -C "$W" .
