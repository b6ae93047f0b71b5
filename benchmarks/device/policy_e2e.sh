#!/usr/bin/env bash
# One device call (H100, <= 9.5 min of wall): the evidence for kernels="auto", then the HF decode step.
#   1. ours (each family's default) and Inductor in the same run, bf16 (the e2e dtype), batch 1, 1024 cached:
#      attention for the four benchmark models, the FFN for the four, MLA (DeepSeek-V2-Lite) at 1024/4096 and B=4
#   2. cf_compile/measured.json rebuilt from those rows on the device (benchmarks/policy_table.py --extra), so
#      step 3's kernels="auto" decides from them
#   3. benchmarks/e2e.py for Qwen2.5-0.5B and Llama-3.2-1B (eager, reduce-overhead, Inductor max-autotune in a
#      plain graph, ours auto, ours kernels=all, per-activity time of a step, accuracy diff, generate())
# Everything comes back in one archive ($OUT/policy_e2e.tgz); locally: record the rows, rebuild the table.
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
FINAL=${OUT:-/tmp/cf-final}; W=/tmp/cf-out/policy_e2e; mkdir -p "$W" "$FINAL"
t0=$SECONDS
stamp() { echo "[$1 at $((SECONDS - t0)) s]"; }
ATTN_S=${ATTN_S:-85} FFN_S=${FFN_S:-60} MLA_S=${MLA_S:-40} E2E_S=${E2E_S:-290}
# 0. the default attention variant's random sweep, named models, determinism and graph replay (correctness first)
CF_ATTN_VARIANTS=v4_mma timeout 80 python3 -m pytest -q -p no:cacheprovider -rfE tests/gpu/test_kernels_attention.py \
  -k "random_sweep or named_models or deterministic or graph" > "$W/attn_tests.log" 2>&1; tail -2 "$W/attn_tests.log"
stamp "attention tests"
timeout "$ATTN_S" python3 benchmarks/attention.py --no-prefetch --dtypes bf16 --batches 1 --seqs 1024 \
  --models qwen2.5-0.5b llama-3.2-1b llama-3-8b --inductor-budget $((ATTN_S - 40)) \
  --json "$W/attn.json" 2>&1 | tee "$W/attn.log" | grep -v "^  cumulative" | tail -6; stamp attention
timeout "$FFN_S" python3 benchmarks/ffn.py --models Qwen2.5-0.5B Llama-3.2-1B --dtypes bf16 \
  --batches 1 --rows-out "$W/ffn.json" > "$W/ffn.log" 2>&1; tail -6 "$W/ffn.log"; stamp ffn
timeout "$MLA_S" python3 benchmarks/mla.py --rows 1:1024 4:1024 --dtypes bf16 --inductor-budget $((MLA_S - 15)) \
  --json "$W/mla.json" 2>&1 | tee "$W/mla.log" | tail -4; stamp mla
python3 benchmarks/policy_table.py --extra "$W/attn.json" "$W/ffn.json" "$W/mla.json" 2>&1 | tee "$W/policy.log"
cp cf_compile/measured.json "$W/measured.json"; stamp policy
timeout "$E2E_S" python3 benchmarks/e2e.py --models qwen2.5-0.5b llama3.2-1b --kernels-all --repeats 3 \
  --agree 128 --generate 32 --accuracy-steps 16 --rows-out "$W/e2e.json" > "$W/e2e.log" 2>&1
grep -v "^{" "$W/e2e.log" | tail -12; stamp e2e
tar czf "$FINAL/policy_e2e.tgz" -C "$W" .
