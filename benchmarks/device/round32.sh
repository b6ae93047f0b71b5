#!/usr/bin/env bash
# Round 32 (prepared 2026-12-07): round 31's measured builds are the defaults now (lean hand-offs and the dense-mask
# skip everywhere; token lanes + o_proj split for GQA; the claimed-tile kernel at batch 1 for GQA too). This call:
# (1) the flow GPU tests on the new defaults (fp64 reference sweep, named models, bitwise repeats, graph replay,
#     timeline marks, knob A/Bs bit-equal, merge stage one- and two-level);
# (2) the merge stage (-DCF_ATTN_MERGE_STAGE, CF_ATTN_FLOW_MERGE_STAGE=1, opt-in) with its timeline. Round 31's
#     marks: the merge took 5.3 us (Qwen) / 6.1 us (Llama-3-8B) / 3.2 (Llama-3.2-1B) / 2.1 (Llama-2-7B) at 1024, two
#     passes of L2 loads, 8 in flight. Staged: one copy with every load in flight, then shared-memory reads.
#     Predicted (us, 1024 / 4096, default in brackets): Qwen -3.5 / -3.5, Llama-3-8B -4 / -4, Llama-3.2-1B -2 / -2,
#     Llama-2-7B -1 / -1. Falsified if Qwen 1024 gains < 1.5. Decision: default where it never loses > 0.5.
# (2b) the K/V chunk asked of L2 before the q/k/v wait (-DCF_ATTN_KV_PREFETCH, CF_ATTN_FLOW_KV_PREFETCH=1, opt-in),
#     alone and with the stage: predicted -1 to -2 us at 1024 (the walk's steps read L2), more at 4096.
# (2c) the token-lane walk with the next step's K loaded before this step's scores (-DCF_ATTN_WALK_PIPELINE,
#     CF_ATTN_FLOW_WALK_PIPELINE=1; GQA builds only): predicted Qwen -2 / -6, Llama-3.2-1B -1 / -4 (1024 / 4096).
# (3) the new defaults beside Inductor, bf16 then fp16 (the policy's block rows for batch 1).
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
FINAL=${OUT:-/tmp/cf-final}; W=/tmp/r32; mkdir -p "$FINAL" "$W"
t0=$SECONDS
pack() { tar czf "$FINAL/round32.tgz" -C "$W" .; }  # after each part: a cut-off call keeps what ran
timeout 180 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_kernels_attention_flow.py \
  -k "${TESTS_K:-random_batch_one or named or repeats or graph_replay or timeline_build or change_no_bit}" \
  > "$W/tests.log" 2>&1
echo "flow tests rc $?: $(tail -1 "$W/tests.log")"; grep -E "^(FAILED|ERROR)|Error" "$W/tests.log" | head -12
echo "[tests at $((SECONDS - t0)) s]"
A="benchmarks/attention.py --no-prefetch --batches 1 --seqs 1024 4096"
run() {  # name, timeout, env..., (EXTRA: more args)
  local name=$1 limit=$2; shift 2
  env "$@" timeout "$limit" python3 $A --json "$W/rows_$name.json" ${EXTRA:-} > "$W/$name.log" 2>&1
  echo "$name rc $?"; grep -E " ours |Error|Traceback" "$W/$name.log" | cut -c1-118
  grep -E "^flow timeline" "$W/$name.log" | sed "s/^flow timeline /$name /" >> "$W/timelines.txt"
  pack
}
EXTRA="--no-inductor --dtypes bf16 --timeline --variants flow" run stage 70 CF_ATTN_FLOW_MERGE_STAGE=1
EXTRA="--no-inductor --dtypes bf16 --variants flow" run default_again 40 CF_ATTN_FLOW_MERGE_STAGE=0
EXTRA="--no-inductor --dtypes bf16 --variants flow" run pipeline 40 CF_ATTN_FLOW_WALK_PIPELINE=1
EXTRA="--no-inductor --dtypes bf16 --variants flow" run prefetch 40 CF_ATTN_FLOW_KV_PREFETCH=1
EXTRA="--no-inductor --dtypes bf16 --variants flow" run prefetch_stage 40 CF_ATTN_FLOW_KV_PREFETCH=1 \
  CF_ATTN_FLOW_MERGE_STAGE=1
echo "[stage at $((SECONDS - t0)) s]"
[ "${IND:-1}" = 1 ] && EXTRA="--dtypes bf16" run inductor_bf16 150
[ "${FP16:-0}" = 1 ] && EXTRA="--dtypes fp16" run inductor_fp16 150
if [ $((SECONDS - t0)) -lt ${FFN_BEFORE:-330} ]; then  # FFN claimed tiles, lean hand-offs (opt-in): bits, then an A/B at batch 1-2
  timeout 60 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_kernels_ffn_flow.py -k lean > "$W/ffn_tests.log" 2>&1
  echo "ffn lean tests rc $?: $(tail -1 "$W/ffn_tests.log")"
  timeout 70 python3 benchmarks/ffn.py --no-inductor --dtypes bf16 --batches 1 2 \
    --variants kernel=flow kernel=flow,lean=1 --rows-out "$W/rows_ffn_lean.json" > "$W/ffn.log" 2>&1
  echo "ffn rc $?"; grep -E "^variant|Error" "$W/ffn.log" | cut -c1-160
fi
python3 benchmarks/flow_timeline.py "$W/timelines.txt"
tar czf "$FINAL/round32.tgz" -C "$W" .
echo "[done at $((SECONDS - t0)) s]"
