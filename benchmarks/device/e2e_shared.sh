#!/usr/bin/env bash
# Last device call of session 3 (<= 330 s): Qwen2.5-0.5B decode step end to end after the shared-table fix
# (clusterfusion::shared_input), kernels="auto" from cf_compile/measured.json and kernels="all". One archive back.
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
FINAL=${OUT:-/tmp/cf-final}; W=/tmp/cf-out/e2e_shared; mkdir -p "$W" "$FINAL"
timeout 320 python3 benchmarks/e2e.py --models qwen2.5-0.5b --kernels-all --repeats 3 --agree 128 --generate 32 \
  --accuracy-steps 16 --rows-out "$W/e2e.json" > "$W/e2e.log" 2>&1
echo "rc $?"; python3 - "$W/e2e.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1])):
    print({k: v for k, v in r.items() if k not in ("inductor_time",)})
PY
tar czf "$FINAL/e2e_shared.tgz" -C "$W" .
