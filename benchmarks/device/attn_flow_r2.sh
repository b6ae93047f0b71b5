set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
mkdir -p $OUT
timeout 100 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_kernels_ffn_flow.py -k random_config > $OUT/tests2.log 2>&1; echo "ffn random rc $?: $(tail -1 $OUT/tests2.log)"
timeout 240 python3 benchmarks/attention.py --no-prefetch --dtypes bf16 --batches 1 --seqs 1024 4096 \
    --variants v5_heads flow --json "$OUT/rows_attn_flow.json" > "$OUT/bench_attn.log" 2>&1
echo "attention bench rc $?"; grep -E " ours |copy|Error|variant" "$OUT/bench_attn.log" | cut -c1-220
