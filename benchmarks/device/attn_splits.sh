#!/usr/bin/env bash
# Device call (H100, hard wall budget 100 s): the attention block's work split (cluster size C, clusters per
# KV head P) overridden through attention_decode(split=(C, P)) -- is a smaller P (fewer CTAs, fewer global
# hand-offs) faster on the latency-bound small models? benchmarks/NOTES-attention.md, "Round 5 (prediction)".
#   bash benchmarks/device/attn_splits.sh        outputs under $OUT/attn_splits/
#   SPLITS="8,1 4,1" bash benchmarks/device/attn_splits.sh   (other overrides; default below)
# Steps (each under `timeout`; a step that runs out leaves what it wrote):
#   1. compile, in parallel (capped at the 16 cores), the 8 instantiations steps 2-3 use
#      (fp16/bf16 x batch buckets 1/4 x 4/8 heads per pass: Llama-3.2-1B G=4, Qwen2.5-0.5B G=7)        <= 35 s
#   2. GPU tests -k split_override, CF_ATTN_QUICK=split (overrides (8,1) (4,1) (8,2) (4,2) of Qwen2.5-0.5B and
#      Llama-3.2-1B at batch 1 and 4, fp16 and bf16: fp64 band, vs the default split within the band,
#      counters at zero, determinism; invalid splits rejected), -x                                         <= 22 s
#   3. benchmarks/attention.py --no-inductor --no-prefetch --phases, bf16 B=1 S=1024, Qwen2.5-0.5B and
#      Llama-3.2-1B, the default split and --splits $SPLITS beside it (an override equal to the default is
#      timed once; one that is not one wave is skipped)                                                    rest
#   4. compact summary: ours and the phase cuts per split, and ours minus the default's
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/cf-out}; D="$OUT/attn_splits"; mkdir -p "$D"
PY=${PYTHON:-python3}
SPLITS=${SPLITS:-"8,1 8,2 8,4 4,1 4,2 2,1"}
BUDGET=96  # seconds of the 100 s call this script may use (the rest: start-up and copying $OUT back)
t0=$SECONDS
stamp() { echo "[$1 at $((SECONDS - t0)) s]"; }
left() { local l=$((BUDGET - (SECONDS - t0))); [ "$l" -lt "$1" ] && l=$1; echo "$l"; }

timeout 35 "$PY" - <<'PY' 2>&1 | tee "$D/compile.log" | tail -3
import itertools, os, time
from concurrent.futures import ThreadPoolExecutor
import torch
from cf_compile_kernels.attention import compiled_kernel
keys = list(itertools.product((torch.float16, torch.bfloat16), (1, 4), (4, 8)))
t = time.time()
with ThreadPoolExecutor(max_workers=min(len(keys), os.cpu_count() or 1, 16)) as pool:
    done = list(pool.map(lambda k: compiled_kernel(*k), keys))
print(f"{len(done)} kernels ready in {time.time() - t:.1f} s; regs {[k.registers for k in done]}; "
      f"spills {[k.spill_bytes for k in done]}")
PY
stamp "compile done"

CF_ATTN_QUICK=split timeout 22 "$PY" -m pytest -q -s -p no:cacheprovider -x -rfE \
  tests/gpu/test_kernels_attention.py -k split_override 2>&1 | tee "$D/tests.log" | grep -v "^$" | tail -8
stamp "tests done"

# shellcheck disable=SC2086  # SPLITS is a list of C,P words
timeout "$(left 10)" "$PY" benchmarks/attention.py --no-inductor --no-prefetch --phases --dtypes bf16 \
  --batches 1 --seqs 1024 --models qwen2.5-0.5b llama-3.2-1b --splits $SPLITS --json "$D/rows.json" 2>&1 \
  | tee "$D/bench.log" | grep -v "^  cumulative"
stamp "bench done"

timeout 4 "$PY" - "$D/rows.json" <<'PY'
import json, sys
from pathlib import Path
rows = json.loads(Path(sys.argv[1]).read_text())
base = {r["config"]["model"]: r["ours_us"] for r in rows if r["config"].get("split") == "default"}
print("model          split    [C,P]   CTAs wave  ours   -default  cut after phase 1..5 (norm qkv rope attn merge)  floor  err")
for r in rows:
    c = r["config"]
    cuts = " ".join(f"{r.get(f'phase{k}_us') or 0:6.1f}" for k in range(1, 6))
    d = r["ours_us"] - base.get(c["model"], r["ours_us"])
    print(f"{c['model']:13s} {c.get('split', '-'):8s} [C{c['cluster']},P{c['clusters_per_kv_head']}] "
          f"{c.get('ctas', 0):4d} {'1' if c.get('one_wave') else '>1':>4s} {r['ours_us']:6.1f} {d:+7.1f}   {cuts}  "
          f"{r['floor_us']:6.1f}  {r['rel_err']}")
PY
stamp "all done"
