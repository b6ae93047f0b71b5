#!/usr/bin/env bash
# Device call C of round 4 (<= ~8.5 min): the three unvalidated variants (attention v5 = v4_mma + deep_kv,
# FFN prefetch_down and cluster size 2, MLA split_mma / split_mma_all), then the default attention's full
# random sweep (v4_mma, and v5) and the backend tests for MLA and kernels="auto". One archive back.
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
FINAL=${OUT:-/tmp/cf-final}; export OUT=/tmp/cf-out; mkdir -p "$OUT" "$FINAL"
t0=$SECONDS
stamp() { echo "[$1 at $((SECONDS - t0)) s]"; }
bash benchmarks/device/attn_v5.sh 2>&1 | tail -12; stamp "attention v5"
bash benchmarks/device/ffn_r7.sh 2>&1 | tail -16; stamp "ffn prefetch_down"
timeout 25 python3 benchmarks/ffn.py --no-inductor --models Llama-2-7B Qwen2.5-0.5B --dtypes fp16 --batches 1 \
  --variants "cluster=2,flags=early_x+defer_fix_up" --rows-out "$OUT/ffn_cluster2.json" > "$OUT/ffn_cluster2.log" 2>&1
grep -i "us\b\|cluster" "$OUT/ffn_cluster2.log" | grep -v "^{" | tail -6; stamp "ffn cluster 2"
bash benchmarks/device/mla_r4.sh 2>&1 | tail -14; stamp "mla split_mma"
CF_ATTN_VARIANTS="v4_mma v5" timeout 120 python3 -m pytest -q -p no:cacheprovider -rfE \
  tests/gpu/test_kernels_attention.py -k "random_sweep or named_models or deterministic or graph" 2>&1 \
  | tee "$OUT/attn_full.log" | tail -4; stamp "attention full sweep"
timeout 70 python3 -m pytest -q -p no:cacheprovider -rfE tests/gpu/test_backend_gpu.py -k "mla or auto" 2>&1 \
  | tee "$OUT/backend.log" | tail -3; stamp "backend mla/auto"
tar czf "$FINAL/round4_c.tgz" -C "$OUT" .
