#!/usr/bin/env bash
# compute-sanitizer memcheck, racecheck and synccheck on the defaults (<= ~540 s on an H100): attention v5 on the
# small named cases (cluster gather, split KV head at batch 3 = the tensor-core bucket, MQA head_dim 256, masks)
# and MLA split_mma on V2-Lite / many-chunk cases (split merge). Each run is the test itself, so every launch is
# also checked against its fp64 reference. The cubins are compiled once without the sanitizer (disk cache).
#   bash benchmarks/device/sanitize.sh     -> $OUT/sanitize.tgz (one log per tool and kernel, summary.txt)
# A round's script narrows it: SANITIZE_KERNELS="attn" SANITIZE_ATTN_K="named_models and small_mha_b5_ring"
# CF_ATTN_VARIANTS=v5_ring SANITIZE_DIR=<the round's folder> (logs there, no tarball).
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1 CF_ATTN_VARIANTS=${CF_ATTN_VARIANTS:-v5} CF_MLA_TEST_VARIANTS=split_mma
FINAL=${OUT:-/tmp/cf-final}; W=${SANITIZE_DIR:-/tmp/cf-out/sanitize}; mkdir -p "$W" "$FINAL"
t0=$SECONDS
ATTN=(tests/gpu/test_kernels_attention.py -k "${SANITIZE_ATTN_K:-named_models and small}")
MLA=(tests/gpu/test_kernels_mla.py -k "split_merge_is_bitwise")
KERNELS=${SANITIZE_KERNELS:-attn mla}
for k in $KERNELS; do
  if [ "$k" = attn ]; then args=("${ATTN[@]}"); else args=("${MLA[@]}"); fi
  timeout 120 python3 -m pytest -q -p no:cacheprovider "${args[@]}" > "$W/${k}_plain.log" 2>&1
  echo "$k plain run done at $((SECONDS - t0)) s: $(tail -1 "$W/${k}_plain.log")"
done
for tool in memcheck racecheck synccheck; do
  for k in $KERNELS; do
    if [ "$k" = attn ]; then args=("${ATTN[@]}"); else args=("${MLA[@]}"); fi
    timeout 70 compute-sanitizer --tool "$tool" --report-api-errors no --error-exitcode 9 \
      python3 -m pytest -q -p no:cacheprovider -x "${args[@]}" > "$W/${k}_${tool}.log" 2>&1
    rc=$?
    echo "$k $tool rc $rc ($([ $rc = 0 ] && echo clean || ([ $rc = 124 ] && echo 'timed out' || echo FAILED))):" \
         "$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|passed|failed' "$W/${k}_${tool}.log" | tr '\n' ' ' | cut -c1-200)" \
      | tee -a "$W/summary.txt"
  done
done
echo "done at $((SECONDS - t0)) s"
[ -n "${SANITIZE_DIR:-}" ] || tar czf "$FINAL/sanitize.tgz" -C "$W" .
