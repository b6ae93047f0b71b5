#!/usr/bin/env bash
# Device call (H100, hard wall budget 100 s): per-CTA phase timelines of the default attention kernel (the
# -DCF_ATTN_TIMELINE=1 build: thread 0 of every CTA stamps %globaltimer at each phase boundary and before/after
# each wait on other CTAs; cf_compile_kernels/attention.py TIMELINE, benchmarks/NOTES-attention.md "Timeline
# build (CF_ATTN_TIMELINE)") -- how much of each phase is work and how much is waiting for other CTAs.
#   bash benchmarks/device/attn_timeline.sh        outputs under $OUT/attn_timeline/
# Steps (each under `timeout`; a step that runs out leaves what it wrote):
#   1. compile, in parallel, the 6 instantiations step 2 uses: fp16 bucket 1 x 1/4/8 heads per pass (Llama-2-7B,
#      Llama-3-8B, Qwen2.5-0.5B), each as the normal and the timeline build                        <= 40 s
#   2. benchmarks/attention.py --no-inductor --no-prefetch --timeline, fp16 B=1, S=1024:
#      Llama-2-7B, Llama-3-8B, Qwen2.5-0.5B (graph timing as usual, then 1 warm-up + 5 single timeline launches
#      per row; JSON after every row, rows carry timeline_us)                            <= 50 s
#   3. compact summary: per stamp the median-CTA time since the launch's first start, per row <= 5 s
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/cf-out}; D="$OUT/attn_timeline"; mkdir -p "$D"
PY=${PYTHON:-python3}
BUDGET=96  # seconds of the 100 s call this script may use (the rest: start-up and copying $OUT back)
t0=$SECONDS
stamp() { echo "[$1 at $((SECONDS - t0)) s]"; }

timeout 40 "$PY" - <<'PY' 2>&1 | tee "$D/compile.log" | tail -3
import os, time
from concurrent.futures import ThreadPoolExecutor
import torch
from cf_compile_kernels.attention import compiled_kernel
keys = [(torch.float16, 1, hg, tl) for hg in (1, 4, 8) for tl in (False, True)]
t = time.time()
with ThreadPoolExecutor(max_workers=min(len(keys), os.cpu_count() or 1, 16)) as pool:
    done = list(pool.map(lambda k: compiled_kernel(*k[:3], timeline=k[3]), keys))
print(f"{len(done)} kernels ready in {time.time() - t:.1f} s; regs {[k.registers for k in done]}; "
      f"spills {[k.spill_bytes for k in done]}")
PY
stamp "compile done"

left=$((BUDGET - (SECONDS - t0) - 5)); [ "$left" -lt 10 ] && left=10
timeout "$left" "$PY" benchmarks/attention.py --no-inductor --no-prefetch --timeline --dtypes fp16 --batches 1 \
  --models llama-2-7b llama-3-8b qwen2.5-0.5b --seqs 1024 --json "$D/rows.json" 2>&1 \
  | tee "$D/bench.log"
stamp "bench done"

timeout 5 "$PY" - "$D/rows.json" <<'PY'
import json, sys
from cf_compile_kernels.attention import TIMELINE
rows = json.load(open(sys.argv[1]))
short = {"llama-2-7b": "L2-7B", "llama-3-8b": "L3-8B", "qwen2.5-0.5b": "Q-0.5B"}
cols = [(short.get(r["config"]["model"], r["config"]["model"][:8]), r["config"]["variant"], r.get("ours_us"),
         r.get("timeline_us") or {}) for r in rows]
print("us since launch start, median CTA (graph-timed ours in the header)")
print(f"{'stamp':13s}" + "".join(f"{m + ' ' + v:>16s}" for m, v, _, _ in cols))
print(f"{'ours (graph)':13s}" + "".join(f"{o or 0:16.1f}" for _, _, o, _ in cols))
for name in (*TIMELINE, "start_last", "end_last"):
    print(f"{name:13s}" + "".join(f"{'-' if tl.get(name) is None else format(tl[name], '.2f'):>16s}"
                                    for _, _, _, tl in cols))
PY
stamp "all done"
