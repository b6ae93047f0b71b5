#!/usr/bin/env bash
# First device call for attention v5_ring (branch r10-kvring; <= ~6 min on an H100): phase 4's K/V through a
# shared-memory ring of bulk copies at batch 1, bitwise v5.
#   1. compile the bucket-1 instantiations (and the timeline builds) in parallel
#   2. GPU tests with CF_ATTN_VARIANTS="v5 v5_ring": the ring bitwise v5 (sweep's batch-1 cases, 4096 caches,
#      G=16 two passes, D=64/256, a chunk shorter than a stage), fp64 sweep, named models, counters, graphs (-x)
#   3. attention.py --phases, fp16 B=1: v5 vs v5_ring at 1024 (four models) and 4096 (Llama-2-7B, Llama-3-8B)
#   4. the per-CTA timeline of both at Llama-2-7B 1024 and 4096
# Predictions (fp16 B=1, us): Llama-2-7B 1024 80 -> ~75 (phase 4 13 -> ~7: 128 KB of K/V per CTA in flight
# instead of one step per lane), 4096 122 -> ~104 (phase 4 45 -> ~25), Llama-3-8B 1024 62 -> ~58, 4096 ~76 ->
# ~68; Qwen2.5-0.5B and Llama-3.2-1B within +-1 (their phase 4 is not load-bound). Falsified if Llama-2-7B 4096
# gains < 5 us or its phase-4 cut does not fall by >= 10 us.
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1 CF_ATTN_VARIANTS="v5 v5_ring"
FINAL=${OUT:-/tmp/cf-final}; W=/tmp/cf-out/round10; mkdir -p "$W" "$FINAL"
t0=$SECONDS
stamp() { echo "[$1 at $((SECONDS - t0)) s]"; }
timeout 120 python3 - <<'PY' 2>&1 | tail -2
from concurrent.futures import ThreadPoolExecutor
import torch
from cf_compile_kernels.attention import compiled_kernel
keys = [(dt, 1, hg, tl) for dt in (torch.float16, torch.bfloat16) for hg in (1, 4, 8) for tl in (False, True)]
with ThreadPoolExecutor(8) as pool:
    done = list(pool.map(lambda k: compiled_kernel(*k[:3], timeline=k[3]), keys))
print("regs", [k.registers for k in done], "spills", [k.spill_bytes for k in done])
PY
stamp compiled
timeout 200 python3 -m pytest -q -x -p no:cacheprovider tests/gpu/test_kernels_attention.py \
  -k "kv_ring or named_models_match or random_sweep or counters or graph_capture or deterministic" \
  > "$W/tests.log" 2>&1; echo "tests rc $?: $(tail -1 "$W/tests.log")"; grep -E "^(FAILED|E )" "$W/tests.log" | head -6
stamp tests
timeout 120 python3 benchmarks/attention.py --no-inductor --no-prefetch --phases --variants v5 v5_ring --dtypes fp16 \
  --batches 1 --seqs 1024 --models llama-2-7b llama-3-8b qwen2.5-0.5b llama-3.2-1b --json "$W/rows_1024.json" \
  > "$W/bench.log" 2>&1
timeout 60 python3 benchmarks/attention.py --no-inductor --no-prefetch --phases --variants v5 v5_ring --dtypes fp16 \
  --batches 1 --seqs 4096 --models llama-2-7b llama-3-8b --json "$W/rows_4096.json" >> "$W/bench.log" 2>&1
grep -E "ours|cumulative" "$W/bench.log" | cut -c1-160 | head -30
stamp bench
timeout 60 python3 benchmarks/attention.py --no-inductor --no-prefetch --timeline --variants v5 v5_ring --dtypes fp16 \
  --batches 1 --seqs 1024 4096 --models llama-2-7b --json "$W/timeline.json" > "$W/timeline.log" 2>&1
grep -E "^timeline|^  (qkv|rope|attn|end) " "$W/timeline.log" | head -24
stamp timeline
tar czf "$FINAL/round10.tgz" -C "$W" .
