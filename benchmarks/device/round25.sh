#!/usr/bin/env bash
# Round 25 (part 1 run 2026-12-07 as two e2e_families.sh calls, rows recorded; part 2 not run: round25b.sh took
# the device time; ~9 min on an H100): evidence for the policy under the
# default v5_heads (round 24 timed it against v5_ring only, and the session's device time ran out).
#   1. The decode step with only the attention family fused vs Inductor (e2e_families.py, alternating rounds,
#      prompt 512), Qwen2.5-0.5B and Llama-3.2-1B: the step rows that decide kernels="auto" at batch 1.
#      Predicted (bf16 B=1, us; before: attention only 1473 / 1456 vs Inductor 1571 / 1784, 2026-11-23):
#      Qwen2.5-0.5B ~1365 (24 layers x -4.5 us), Llama-3.2-1B ~1413 (16 x -2.7).
#   2. The batch-1 block rows beside Inductor again (attention.py with Inductor, bf16, 1024 and 4096 cached), so
#      measured.json regains block rows of the default at these shapes.
# Then locally: python benchmarks/e2e_families.py --append <files_at>/families_MODEL.json (each model);
# attention.py rows via results.append (see round 24's recording); python benchmarks/policy_table.py.
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
FINAL=${OUT:-/tmp/cf-final}; mkdir -p "$FINAL"
t0=$SECONDS
stamp() { echo "[$1 at $((SECONDS - t0)) s]"; }
TIMEOUT=250 bash benchmarks/device/e2e_families.sh qwen2.5-0.5b llama3.2-1b
stamp families
timeout 280 python3 benchmarks/attention.py --no-prefetch --dtypes bf16 --batches 1 --seqs 1024 4096 \
  --models qwen2.5-0.5b llama-3.2-1b llama-3-8b --inductor-budget 240 --json "$FINAL/rows_b1.json" 2>&1 \
  | grep -E " ours |copy" | cut -c1-170
stamp blocks
