#!/usr/bin/env bash
# The kernels="auto" evidence round 6 could not finish (<= ~560 s on an H100): ours (defaults) and Inductor in the
# same run, bf16: attention B=16 at 1024 cached for Llama-3.2-1B, Llama-3-8B, Llama-2-7B (Inductor's compile
# budget ran out there), attention B=1 at 4096 for the four models, MLA B=16 at 1024 and B=1 at 4096; then
# cf_compile/measured.json rebuilt from them (benchmarks/policy_table.py --extra). One archive back.
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
FINAL=${OUT:-/tmp/cf-final}; W=/tmp/cf-out/policy_b16; mkdir -p "$W" "$FINAL"
t0=$SECONDS
stamp() { echo "[$1 at $((SECONDS - t0)) s]"; }
timeout 200 python3 benchmarks/attention.py --no-prefetch --dtypes bf16 --batches 16 --seqs 1024 \
  --models llama-3.2-1b llama-3-8b llama-2-7b --inductor-budget 170 --json "$W/attn_b16.json" 2>&1 \
  | tee "$W/attn_b16.log" | grep -E "^[a-z].*ours" ; stamp "attention B=16"
timeout 190 python3 benchmarks/attention.py --no-prefetch --dtypes bf16 --batches 1 --seqs 4096 \
  --models qwen2.5-0.5b llama-3.2-1b llama-3-8b llama-2-7b --inductor-budget 160 --json "$W/attn_4096.json" 2>&1 \
  | tee "$W/attn_4096.log" | grep -E "^[a-z].*ours" ; stamp "attention 4096"
timeout 110 python3 benchmarks/mla.py --rows 16:1024 1:4096 --dtypes bf16 --inductor-budget 90 \
  --json "$W/mla.json" 2>&1 | tee "$W/mla.log" | grep -E "ours" ; stamp mla
python3 benchmarks/policy_table.py --extra "$W/attn_b16.json" "$W/attn_4096.json" "$W/mla.json" 2>&1 \
  | tee "$W/policy.log" | tail -24
cp cf_compile/measured.json "$W/measured.json"; stamp policy
tar czf "$FINAL/policy_b16.tgz" -C "$W" .
