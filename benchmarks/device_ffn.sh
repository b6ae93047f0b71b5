#!/usr/bin/env bash
# One device call for the gated-FFN kernel (issue 5), <= 420 s on an H100 with kernels compiled cold:
#   1. compile every FFN kernel the tests and benchmarks need, 16 NVRTC jobs at once (fills the cubin cache)
#   2. GPU FFN tests (-x -q): fp64 bands for every gate/up mode and load path, determinism, graph replay,
#      the timeline build bitwise equal to the plain one
#   3. every variant timed side by side, with its per-phase timeline: Llama-2-7B fp16 B=1/16, Qwen2.5-0.5B B=1
#   4. the default against Inductor on the benchmark rows (fp16 first, bf16 with what time is left)
#   5. a compact summary
# Run from the repository root:  OUT=/some/dir bash benchmarks/device_ffn.sh
# Outputs under $OUT: compile.log, tests.log, variants-*.json/.log, rows-*.json/.log, summary.txt.
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/cf-ffn-out}
BUDGET_S=${BUDGET_S:-420}
TEST_BUDGET_S=${TEST_BUDGET_S:-170}
RESERVE_S=15  # summary + margin
mkdir -p "$OUT"
SECONDS=0
left() { echo $((BUDGET_S - RESERVE_S - SECONDS)); }
VARIANTS=("stages=0" "mode=split_local_stats" "mode=whole" "mode=whole,stages=0")

echo "== 1. compile (cold cache: parallel NVRTC)"
python3 - >"$OUT/compile.log" 2>&1 <<'EOF'
import itertools, time
from concurrent.futures import ThreadPoolExecutor
import torch
from cf_compile_kernels import ffn
from cf_compile_kernels.build import compile_kernel

jobs = []
for dtype, cluster, bt, stages, mode in itertools.product(
    ffn.CTYPES, (1, 2, 4), (1, 2), (0, 3, 4), ffn.MODES.values()
):
    args = ffn.template_args(dtype, cluster, bt, ffn.WARPS, ffn.DEPTH, stages, mode)
    jobs.append((args, {}))
    if cluster == 4 and dtype == torch.float16:  # the benchmark's timeline builds
        jobs.append((args, {"CF_FFN_PHASES": 1}))
started = time.time()
with ThreadPoolExecutor(16) as pool:
    done = list(pool.map(lambda j: compile_kernel(ffn.SOURCE, ffn.KERNEL, template_args=j[0], defines=j[1]), jobs))
spills = [k.name_expression for k in done if k.spill_bytes or k.local_bytes]
print(f"{len(done)} kernels in {time.time() - started:.1f} s; spilling: {spills or 'none'}")
print("registers:", sorted({(k.name_expression.split('<')[1].rstrip('>'), k.registers) for k in done})[:12], "...")
EOF
tail -2 "$OUT/compile.log"
echo "   [${SECONDS} s]"

echo "== 2. GPU FFN tests"
timeout "$TEST_BUDGET_S" python3 -m pytest -x -q -p no:cacheprovider -rfE tests/gpu/test_kernels_ffn.py \
    >"$OUT/tests.log" 2>&1
echo "   rc $? (124 = cut at ${TEST_BUDGET_S} s)"; tail -4 "$OUT/tests.log"
echo "   [${SECONDS} s]"

echo "== 3. variants + phase timelines"
timeout "$(left)" python3 benchmarks/ffn.py --no-inductor --phases --models Llama-2-7B --dtypes fp16 \
    --batches 1 16 --variants "${VARIANTS[@]}" --rows-out "$OUT/variants-llama2.json" \
    >"$OUT/variants-llama2.log" 2>&1
echo "   llama2 rc $?   [${SECONDS} s]"
timeout "$(left)" python3 benchmarks/ffn.py --no-inductor --phases --models Qwen2.5-0.5B --dtypes fp16 \
    --batches 1 --variants "${VARIANTS[@]}" --rows-out "$OUT/variants-qwen.json" \
    >"$OUT/variants-qwen.log" 2>&1
echo "   qwen rc $?   [${SECONDS} s]"

echo "== 4. default vs Inductor (rows written one by one; cut when the budget ends)"
for dt in fp16 bf16; do
    if [ "$(left)" -gt 30 ]; then
        timeout "$(left)" python3 benchmarks/ffn.py --dtypes "$dt" --rows-out "$OUT/rows-$dt.json" \
            >"$OUT/rows-$dt.log" 2>&1
        echo "   $dt rc $?   [${SECONDS} s]"
    fi
done

echo "== 5. summary"
python3 - "$OUT" <<'EOF' | tee "$OUT/summary.txt"
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
def rows(name):
    p = out / name
    return json.loads(p.read_text()) if p.exists() and p.stat().st_size else []

print("variants (us; default first):")
for r in rows("variants-llama2.json") + rows("variants-qwen.json"):
    c = r["config"]
    vs = "  ".join(f"{k}={v if isinstance(v, (int, float)) else 'n/a'}" for k, v in r.get("variants", {}).items())
    print(f"  {c['model']:13s} b{c['batch']:<2d} default={r['ours_us']}  {vs}  (floor {r['floor_us']})")
    timelines = {"default": r.get("phases", {}), **r.get("variant_phases", {})}
    names = list(next(iter(timelines.values()), {}))
    if names:
        print("    phase (per-CTA clock us) " + " ".join(f"{n:>8s}" for n in names))
        for label, t in timelines.items():
            print(f"    {label:26s} " + " ".join(f"{t[n]['cta']:8.2f}" for n in names))
            print(f"    {'  since launch, median':26s} " + " ".join(f"{t[n]['median']:8.2f}" for n in names)
                  + f"   (last CTA ends {t['end']['max']:.2f})")
print("default vs Inductor:")
for r in rows("rows-fp16.json") + rows("rows-bf16.json"):
    c = r["config"]
    print(f"  {c['model']:13s} {c['dtype']} b{c['batch']:<2d} ours {r['ours_us']:7.2f}  inductor {r['inductor_us']}"
          f"  floor {r['floor_us']:6.2f}  floor/ours {r['floor_over_ours']}  ind/ours {r['inductor_over_ours']}")
EOF
echo "   total ${SECONDS} s"
