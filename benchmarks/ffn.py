"""Gated-FFN decode block: the fused kernel vs Inductor vs the HBM floor, every row from one run.

    PYTHONPATH=. python3 benchmarks/ffn.py --rows-out rows.json [--no-inductor] [--variants ...] [--phases]
    python3 benchmarks/ffn.py --append rows.json      # on the CPU machine: rows -> results.jsonl/RESULTS.md

Method: fresh random weights (several sets, rotated, so the weights of one timing never sit in L2),
each path checked against fp64 before it is timed; one CUDA graph holds one call per weight set and
is replayed; CUDA events around each replay; the per-call median over the replays is reported.
Inductor: torch.compile(mode="max-autotune-no-cudagraphs") of the eager HF-style block (rmsnorm,
gate/up linears, silu * up, down, residual), captured in the same kind of graph. Floor: bytes that must
move (weights, x, out, norm weight) / device-to-device copy bandwidth measured in this run.
Variants (--variants "mode=whole,stages=0" ...) are timed on the same rows, same weights, no Inductor.
Phases (--phases): the kernel rebuilt with its %globaltimer timeline (-DCF_FFN_PHASES; the claimed-tile
kernel's -DCF_FLOW_TIMELINE, summarised by benchmarks/flow_timeline.py) runs PHASE_RUNS single launches
over the rotated weights; per phase, the median and max over CTAs of (stamp - the
launch's first CTA start), and the median per-CTA time from clock64 (finer than globaltimer's tick).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import results  # noqa: E402
from benchmarks.flow_timeline import flow_timeline, format_flow_timeline  # noqa: E402
from benchmarks.timing import copy_bandwidth, graph_time_us  # noqa: E402
from cf_compile_kernels import ffn  # noqa: E402

MODELS = {
    "Llama-2-7B": (4096, 11008),
    "Llama-3-8B": (4096, 14336),
    "Llama-3.2-1B": (2048, 8192),
    "Qwen2.5-0.5B": (896, 4864),
}
BATCHES = (1, 4, 16)
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
EPS = 1e-5
ROTATION_BYTES = 400e6  # weight bytes cycled through per graph: 8x the 50 MB L2
MIN_SETS = 2
REPLAYS = 50
PHASE_RUNS = 20  # instrumented single launches per timeline (medians over them)
NS_PER_US = 1e3
COLUMNS = [
    "config.model",
    "config.dtype",
    "config.batch",
    "ours_us",
    "inductor_us",
    "floor_us",
    "floor_over_ours",
    "inductor_over_ours",
]


def weight_sets(hidden: int, inter: int, dtype: torch.dtype) -> list[dict]:
    per_set = 3 * hidden * inter * torch.finfo(dtype).bits // 8
    count = max(MIN_SETS, math.ceil(ROTATION_BYTES / per_set))
    sets = []
    for _ in range(count):
        sets.append(
            {
                "norm_weight": (1 + 0.1 * torch.randn(hidden, device="cuda")).to(dtype),
                "gate": (torch.randn(inter, hidden, device="cuda") * hidden**-0.5).to(dtype),
                "up": (torch.randn(inter, hidden, device="cuda") * hidden**-0.5).to(dtype),
                "down": (torch.randn(hidden, inter, device="cuda") * inter**-0.5).to(dtype),
            }
        )
    return sets


def eager_block(x, norm_weight, gate, up, down):
    """The HF Llama MLP + RMSNorm + residual, as eager code writes it (rounding points included)."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + EPS)
    h = norm_weight * h.to(x.dtype)
    a = torch.nn.functional.silu(torch.nn.functional.linear(h, gate)) * torch.nn.functional.linear(h, up)
    return x + torch.nn.functional.linear(a, down)


def rel_error(out: torch.Tensor, x, s) -> float:
    ref = ffn.gated_ffn_reference(
        x, s["norm_weight"], EPS, "weight", [s["gate"], s["up"]], s["down"], "silu", True
    )
    return float((out.double() - ref).norm() / ref.norm())


def bench_row(
    model: str,
    batch: int,
    dtype_name: str,
    bandwidth: float,
    inductor: bool,
    tuning: ffn.Tuning | None = None,
    phases: bool = False,
) -> dict:
    tuning = tuning or ffn.Tuning()
    hidden, inter = MODELS[model]
    dtype = DTYPES[dtype_name]
    sets = weight_sets(hidden, inter, dtype)
    x = torch.randn(batch, 1, hidden, device="cuda").to(dtype)
    outs = [torch.full_like(x, float("nan")) for _ in sets]

    def ours(i):
        s = sets[i]
        return lambda: ffn.gated_ffn(
            x,
            s["norm_weight"],
            EPS,
            "weight",
            [s["gate"], s["up"]],
            s["down"],
            "silu",
            True,
            outs[i],
            tuning=tuning,
        )

    calls = [ours(i) for i in range(len(sets))]
    calls[0]()
    err = rel_error(outs[0], x, sets[0])
    assert err < 1e-2, f"{model} b{batch} {dtype_name}: ours relative error {err:.3g}"
    ours_us = graph_time_us(calls, REPLAYS)
    assert torch.isfinite(torch.stack(outs)).all()
    timeline = None
    if phases and ffn.kernel_kind(hidden, inter, batch, tuning) == "flow":
        timeline = flow_timeline(x, sets, tuning, PHASE_RUNS, EPS)
    elif phases:
        timeline = phase_timeline(x, sets, tuning)

    inductor_us = None
    if inductor:
        # A fresh Dynamo cache per row: one function compiled for 24 shapes passes Dynamo's recompile
        # limit (8) and silently runs *eager* from then on (seen in the 2026-11-23 run, rows 9-24).
        torch._dynamo.reset()
        compiled = torch.compile(eager_block, mode="max-autotune-no-cudagraphs", dynamic=False)
        ind_out = [None] * len(sets)

        def theirs(i):
            s = sets[i]

            def call():
                ind_out[i] = compiled(x, s["norm_weight"], s["gate"], s["up"], s["down"])

            return call

        ind_calls = [theirs(i) for i in range(len(sets))]
        started = time.perf_counter()
        ind_calls[0]()
        torch.cuda.synchronize()
        compile_s = time.perf_counter() - started
        err_ind = rel_error(ind_out[0], x, sets[0])
        assert err_ind < 2e-2, f"inductor error {err_ind:.3g}"
        inductor_us = graph_time_us(ind_calls, REPLAYS)

    elem = x.element_size()
    bytes_moved = (3 * hidden * inter + 2 * batch * hidden + hidden) * elem
    floor_us = bytes_moved / bandwidth * 1e6
    info = ffn.plan_info(hidden, inter, dtype, batch, tuning=tuning)
    row = results.make_row(
        "ffn",
        {
            "model": model,
            "batch": batch,
            "seq": 0,
            "dtype": dtype_name,
            "hidden": hidden,
            "intermediate": inter,
            "shape": {"hidden": hidden, "intermediate": inter},
        },
        ours_us=round(ours_us, 2),
        inductor_us=None if inductor_us is None else round(inductor_us, 2),
        floor_us=round(floor_us, 2),
    )
    row["floor_over_ours"] = round(floor_us / ours_us, 3)
    row["inductor_over_ours"] = None if inductor_us is None else round(inductor_us / ours_us, 3)
    row["ours_rel_err"] = float(f"{err:.3g}")
    if timeline is not None:
        row["phases"] = timeline
    if inductor:
        row["inductor_compile_s"] = round(compile_s, 1)
    row["launch"] = {
        "grid": info["grid"][0],
        "cluster": info["cluster"][0],
        "smem": info["smem"],
        "registers": info["registers"],
        "kernel": info["template"],
    }
    sets.clear()
    torch.cuda.empty_cache()
    return row


def phase_timeline(x: torch.Tensor, sets: list[dict], tuning: ffn.Tuning) -> dict:
    """Per phase (ffn.PHASES): median and max over CTAs of the globaltimer stamp minus the launch's
    earliest start, and the median over CTAs of the clock64 time since the CTA's own start (converted
    with that CTA's ns-per-cycle over the whole launch); each the median over PHASE_RUNS launches. us."""
    tuning = dataclasses.replace(tuning, phases=True)
    hidden = x.shape[-1]
    inter = sets[0]["down"].shape[-1]
    ctas = ffn.plan_info(hidden, inter, x.dtype, x.shape[0], tuning=tuning)["grid"][0]
    stamps = torch.zeros(ffn.stamp_elems(ctas), dtype=torch.int64, device=x.device)
    out = torch.empty_like(x)
    runs = []
    for r in range(PHASE_RUNS + 1):  # the first launch compiles and warms up: not counted
        s = sets[r % len(sets)]
        ffn.gated_ffn(
            x, s["norm_weight"], EPS, "weight", [s["gate"], s["up"]], s["down"], "silu", True, out,
            tuning=tuning, stamps=stamps,
        )  # fmt: skip
        torch.cuda.synchronize()
        if r:
            st = stamps.view(ctas, len(ffn.PHASES), ffn.STAMP_WORDS).cpu()
            # int64 differences first: globaltimer counts ns since an epoch (~1e18), past double precision
            ns = (st[..., 0] - st[:, 0, 0].min()).double()
            clk = (st[..., 1] - st[:, :1, 1]).double()
            runs.append(torch.stack([ns, clk], dim=-1))
    # [run, cta, phase, (ns since the launch's first start, cycles since the CTA's start)]
    stacked = torch.stack(runs)
    ns, clk = stacked[..., 0], stacked[..., 1]
    since_launch = ns / NS_PER_US
    ns_per_cycle = (ns[:, :, -1:] - ns[:, :, :1]) / clk[:, :, -1:].clamp(min=1)
    since_cta = clk * ns_per_cycle / NS_PER_US
    med = since_launch.median(dim=1).values.median(dim=0).values
    worst = since_launch.amax(dim=1).median(dim=0).values
    cta = since_cta.median(dim=1).values.median(dim=0).values
    return {
        name: {
            "median": round(float(med[i]), 2),
            "max": round(float(worst[i]), 2),
            "cta": round(float(cta[i]), 2),
        }
        for i, name in enumerate(ffn.PHASES)
    }


def format_phases(label: str, timeline: dict) -> str:
    """One compact block: phase, median / max over CTAs since launch start, and the step from the previous
    (the claimed-tile kernel's summary is one line, benchmarks/flow_timeline.py)."""
    if "first_claim" in timeline:
        return format_flow_timeline(label, timeline)
    lines = [f"phases {label} (us since launch: median over CTAs / max; clock-based per-CTA median; step)"]
    prev = 0.0
    for name, t in timeline.items():
        lines.append(
            f"  {name:8s} {t['median']:8.2f} / {t['max']:8.2f}  cta {t['cta']:8.2f}  +{t['cta'] - prev:7.2f}"
        )
        prev = t["cta"]
    return "\n".join(lines)


VARIANT_KEYS = {
    "cluster": "cluster", "warps": "warps", "depth": "depth", "stages": "stages", "l2": "l2_hint",
    # claimed tiles:
    "rpw": "rpw", "gu": "gu_wpr", "down": "down_wpr", "per_sm": "ctas_per_sm", "hsm": "h_shared", "stream": "streamed",
    "lean": "lean_sync",
}


def parse_variant(spec: str) -> ffn.Tuning:
    """'mode=whole,stages=0' (keys: mode, cluster, warps, depth, stages, l2, and flags=early_x+defer_fix_up;
    kernel=flow|cluster, and for the claimed-tile kernel rpw, gu, down, per_sm, hsm, stream, lean) or the older positional
    'cluster:warps:depth[:stages[:l2_hint]]'; 'default' is the launcher's own choice."""
    if spec == "default":
        return ffn.Tuning()
    if "=" not in spec:
        cluster, warps, depth, stages, l2_hint = (int(v) for v in (spec + ":0:0").split(":")[:5])
        return ffn.Tuning(cluster, warps, depth, stages, l2_hint)
    fields = {}
    for item in spec.split(","):
        key, value = item.split("=")
        if key == "mode":
            fields["mode"] = ffn.MODES[value] if value in ffn.MODES else int(value)
        elif key == "flags":
            fields["flags"] = ffn.parse_flags(value)
        elif key == "kernel":
            fields["kernel"] = value
        else:
            fields[VARIANT_KEYS[key]] = int(value)
    return ffn.Tuning(**fields)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows-out", type=Path, help="write the rows as JSON here (device run)")
    parser.add_argument("--no-inductor", action="store_true")
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--dtypes", nargs="*", default=list(DTYPES))
    parser.add_argument("--batches", nargs="*", type=int, default=list(BATCHES))
    parser.add_argument(
        "--stages", type=int, default=None, help="force the load path of the main rows (0: direct)"
    )
    parser.add_argument(
        "--variants",
        nargs="*",
        default=[],
        help="extra tunings timed on the same rows (no Inductor): 'mode=whole,stages=0' "
        "(keys mode/cluster/warps/depth/stages/l2/flags) or cluster:warps:depth[:stages[:l2_hint]]",
    )
    parser.add_argument(
        "--phases",
        action="store_true",
        help="also print each variant's per-phase timeline (instrumented build)",
    )
    parser.add_argument(
        "--append", type=Path, help="append rows from this JSON to results.jsonl / RESULTS.md"
    )
    args = parser.parse_args()

    if args.append:
        rows = json.loads(args.append.read_text())
        results.append(
            rows,
            title="Gated FFN decode block: fused kernel vs Inductor vs HBM floor",
            method=__doc__.split("Method:", 1)[1],
            columns=COLUMNS,
        )
        return

    bandwidth, measured = copy_bandwidth()
    print(
        "device-to-device copy bandwidth (TB/s): "
        + ", ".join(f"{k} {v / 1e12:.3f}" for k, v in measured.items()),
        flush=True,
    )
    rows = []
    for model in args.models:
        for dtype_name in args.dtypes:
            for batch in args.batches:
                main_tuning = ffn.Tuning(stages=args.stages)
                row = bench_row(
                    model, batch, dtype_name, bandwidth, not args.no_inductor, main_tuning, args.phases
                )
                label = f"{model} {dtype_name} b{batch}"
                if args.phases:
                    print(format_phases(f"{label} default", row["phases"]), flush=True)
                for spec in args.variants:
                    try:
                        alt = bench_row(
                            model, batch, dtype_name, bandwidth, False, parse_variant(spec), args.phases
                        )
                        alt_us = alt["ours_us"]
                        if args.phases:
                            row.setdefault("variant_phases", {})[spec] = alt["phases"]
                            print(format_phases(f"{label} {spec}", alt["phases"]), flush=True)
                    except (ValueError, AssertionError) as exc:  # ring does not fit; a wrong variant
                        alt_us = f"n/a: {exc}"
                    row.setdefault("variants", {})[spec] = alt_us
                    print(f"variant {label} {spec}: {alt_us} us", flush=True)
                print(json.dumps(row), flush=True)
                rows.append(row)
                if args.rows_out:  # after every row: a run cut short keeps what it measured
                    args.rows_out.write_text(json.dumps(rows, indent=1))
    print(results.markdown_table(rows, COLUMNS + ["variants"]))


if __name__ == "__main__":
    main()
