"""Fused attention-block decode kernel vs Inductor vs the HBM floor, one row per shape, in one run.

Per row (model, batch, cached length, dtype):
  ours      attention_decode in a CUDA graph;
  inductor  torch.compile(mode="max-autotune-no-cudagraphs") of an HF-style eager block (rmsnorm,
            q/k/v linears, rope, index_copy_ into the static cache, repeat_kv, SDPA with a bool mask
            over max_cache_len, o_proj, residual), replayed in a CUDA graph;
  floor     bytes that must move (every weight once, the live K/V once, activations, the new K/V)
            divided by the device-to-device copy bandwidth measured in the same run.
max_cache_len = cached length, position = cached length - 1 (the last slot). Each graph replays one
call per "layer" over enough distinct layer copies (weights + caches) to exceed twice the L2, so no
row is timed out of L2; time per call = replay time / layers, median of REPEATS replays (CUDA events).
Before timing, ours is checked against the eager block in fp32 (relative error inside the dtype band).

    PYTHONPATH=. python benchmarks/attention.py [--quick] [--no-inductor] [--record] [--inductor-budget S]
        [--variants v3 tail] [--phases] [--timeline] [--no-prefetch] [--splits 8,1 4,1 ...] [--all-splits]
        [--baseline-source path/to/earlier/attention_decode.cu]
With --variants, ours is timed once per work-split variant (attention.VARIANTS), one JSON row each.
With --splits C,P ..., ours is also timed with each (cluster size, clusters per KV head) override
(attention_decode's split=) beside the launcher's choice, one row each (config.split = "C,P" or "default");
an override equal to the chosen split is not timed twice, one that is not one wave on this device (it would
run version 3) is skipped unless --all-splits. CF_ATTN_SPLIT="C,P C,P" is the --splits default.
--phases times the kernel cut after each phase (stop_after_phase 1..5, CUDA graphs). --timeline, after the normal
timing, rebuilds the variant with its per-CTA %globaltimer stamps (-DCF_ATTN_TIMELINE, attention.TIMELINE) and
runs TIMELINE_RUNS single launches (after one warm-up): per stamp the median over the CTAs that set it of (stamp -
the launch's earliest start), median over launches, the step from the previous stamp, and the last CTA's end
(rows carry timeline_us; benchmarks/NOTES-attention.md, "Timeline build (CF_ATTN_TIMELINE)").
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results  # noqa: E402
from cta_timeline import format_timeline, reduce_stamps  # noqa: E402
from flow_timeline import summarise_kinds, summarise_steps  # noqa: E402
from timing import copy_bandwidth, graph_time_us  # noqa: E402

from cf_compile_kernels import attention, attention_flow  # noqa: E402
from cf_compile_kernels.attention import (  # noqa: E402
    DEFAULT_VARIANT,
    TIMELINE,
    VARIANTS,
    attention_decode,
    built_from,
    check_split,
    device_plan,
    timeline_elems,
)

MODELS = {  # hidden, q heads, kv heads, head_dim, qkv bias
    "llama-2-7b": (4096, 32, 32, 128, False),
    "llama-3-8b": (4096, 32, 8, 128, False),
    "llama-3.2-1b": (2048, 32, 8, 64, False),
    "qwen2.5-0.5b": (896, 14, 2, 64, True),
}
SEQS = (1024, 4096)
BATCHES = (1, 4, 16)
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
BANDS = {torch.float16: 2e-3, torch.bfloat16: 1e-2}
EPS = 1e-5
REPEATS = 30
L2_MULTIPLE = 2  # graphs cycle through layer copies whose bytes exceed this many L2s
MAX_LAYERS = 32
# At least this many layer copies per graph replay, so the per-replay overhead (~10 us) is amortised on
# every row, not only where 2 x L2 needs many copies (Llama-2-7B needed one: phase 1 read 21 us there).
MIN_LAYERS = 8
PHASES = 5  # the kernel's stop_after_phase cut points (attention_decode.cu)
TIMELINE_RUNS = 5  # single timeline launches per row and variant (after one warm-up; medians over them)


def rotate_half(t: torch.Tensor) -> torch.Tensor:
    h = t.shape[-1] // 2
    return torch.cat((-t[..., h:], t[..., :h]), dim=-1)


def hf_block(x, nw, wq, wk, wv, bq, bk, bv, wo, cos, sin, k_cache, v_cache, cache_position, mask, scale: float):
    """The HF decode attention block as eager torch writes it (LlamaAttention/Qwen2Attention, static cache)."""
    B, _, H = x.shape
    D = k_cache.shape[-1]
    kvh = k_cache.shape[1]
    nh = wq.shape[0] // D
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + EPS)
    n = nw * h.to(x.dtype)
    q = F.linear(n, wq, bq).view(B, 1, nh, D).transpose(1, 2)
    k = F.linear(n, wk, bk).view(B, 1, kvh, D).transpose(1, 2)
    v = F.linear(n, wv, bv).view(B, 1, kvh, D).transpose(1, 2)
    c, s = cos.to(x.dtype).unsqueeze(1), sin.to(x.dtype).unsqueeze(1)
    q = q * c + rotate_half(q) * s
    k = k * c + rotate_half(k) * s
    k_cache.index_copy_(2, cache_position, k)
    v_cache.index_copy_(2, cache_position, v)
    g = nh // kvh
    keys = k_cache[:, :, None].expand(B, kvh, g, *k_cache.shape[2:]).reshape(B, nh, *k_cache.shape[2:])
    vals = v_cache[:, :, None].expand(B, kvh, g, *v_cache.shape[2:]).reshape(B, nh, *v_cache.shape[2:])
    o = F.scaled_dot_product_attention(q, keys, vals, attn_mask=mask, scale=scale)
    return x + F.linear(o.transpose(1, 2).reshape(B, 1, nh * D), wo)


def make_layer(model: str, batch: int, seq: int, dtype: torch.dtype, seed: int) -> dict:
    hidden, nh, kvh, d, bias = MODELS[model]
    g = torch.Generator(device="cuda").manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, device="cuda") * scale).to(dtype)

    pos = seq - 1
    inv_freq = 10000.0 ** (-torch.arange(0, d, 2, device="cuda", dtype=torch.float32) / d)
    ang = torch.full((batch, 1), float(pos), device="cuda") * inv_freq[None]
    emb = torch.cat((ang, ang), -1)[:, None, :]
    return {
        "x": rnd(batch, 1, hidden), "nw": rnd(hidden, scale=0.1) + 1,
        "wq": rnd(nh * d, hidden, scale=hidden**-0.5), "wk": rnd(kvh * d, hidden, scale=hidden**-0.5),
        "wv": rnd(kvh * d, hidden, scale=hidden**-0.5),
        "bq": rnd(nh * d, scale=0.3) if bias else None, "bk": rnd(kvh * d, scale=0.3) if bias else None,
        "bv": rnd(kvh * d, scale=0.3) if bias else None,
        "wo": rnd(hidden, nh * d, scale=(nh * d) ** -0.5), "cos": emb.cos(), "sin": emb.sin(),
        "k_cache": rnd(batch, kvh, seq, d), "v_cache": rnd(batch, kvh, seq, d),
        "cache_position": torch.tensor([pos], device="cuda"),
        "mask": (torch.arange(seq, device="cuda") <= pos)[None, None, None, :].expand(batch, 1, 1, seq).contiguous(),
        "out": torch.empty(batch, 1, hidden, dtype=dtype, device="cuda"), "scale": d**-0.5,
    }


def floor_bytes(model: str, batch: int, seq: int, esize: int) -> int:
    hidden, nh, kvh, d, bias = MODELS[model]
    weights = ((nh + 2 * kvh) * d * hidden + hidden * nh * d + hidden) * esize + (nh + 2 * kvh) * d * esize * bias
    kv_read = 2 * batch * kvh * (seq - 1) * d * esize  # the cached tokens; the new one comes from registers
    activations = (2 * batch * hidden + 2 * batch * kvh * d) * esize + batch * seq  # x, out, new k/v, mask
    return weights + kv_read + activations


def ours(layer: dict, prefetch: bool = False, stop_after_phase: int = 0, variant: str | None = None,
         split: tuple[int, int] | None = None, timeline: torch.Tensor | None = None) -> None:
    attention_decode(layer["x"], layer["nw"], EPS, "weight", [layer["wq"], layer["wk"], layer["wv"]],
                     [layer["bq"], layer["bk"], layer["bv"]], None, None, 0.0, layer["cos"], layer["sin"],
                     layer["cache_position"], layer["k_cache"], layer["v_cache"], layer["mask"], layer["scale"],
                     layer["wo"], None, True, layer["out"], prefetch=prefetch,
                     stop_after_phase=stop_after_phase, variant=None if variant == "default" else variant,
                     split=split, timeline=timeline)


def timeline_of(layers: list[dict], variant: str, split, ctas: int) -> tuple[dict, dict]:
    """(timeline_us, CTAs that set each stamp) of the CF_ATTN_TIMELINE build: TIMELINE_RUNS single launches after
    one warm-up (rotating the layers so weights come from HBM), reduced by cta_timeline.reduce_stamps."""
    stamps = torch.zeros(timeline_elems(ctas), dtype=torch.int64, device="cuda")
    runs = []
    for r in range(TIMELINE_RUNS + 1):  # the first launch loads the kernel and warms up: not counted
        ours(layers[r % len(layers)], variant=variant, split=split, timeline=stamps)
        torch.cuda.synchronize()
        if r:
            runs.append(stamps.view(ctas, len(TIMELINE)).cpu())
    return reduce_stamps(runs, TIMELINE)


def flow_timeline_of(layers: list[dict], model: str) -> dict:
    """The claimed-tile kernel's timeline (-DCF_FLOW_TIMELINE): TIMELINE_RUNS single launches after one warm-up,
    each summarised by flow_timeline.summarise_kinds (q/k/v, attention and o_proj tiles), medians over launches."""
    hidden, nh, kvh, d, _ = MODELS[model]
    x = layers[0]["x"]
    plan = attention_flow.plan(x.dtype, hidden, nh, kvh, d, x.device, timeline=True)
    stamps = torch.zeros(plan.stamp_elems(), dtype=torch.int64, device=x.device)
    kinds = plan.kinds
    runs = []
    for r in range(TIMELINE_RUNS + 1):
        ours(layers[r % len(layers)], variant="flow", timeline=stamps)
        torch.cuda.synchronize()
        if r:
            records = (plan.tiles + plan.grid) * attention_flow.STAMP_WORDS
            st = stamps[:records].view(-1, attention_flow.STAMP_WORDS).cpu()
            tiles, ctas = st[: plan.tiles], st[plan.tiles:]
            marks = stamps[records:].view(plan.tiles, attention_flow.PHASE_MARKS).cpu()
            runs.append(summarise_kinds(tiles, ctas, kinds)
                        | summarise_steps(tiles, ctas, marks, kinds, attention_flow.PHASE_STEPS))
    return {k: round(statistics.median(run[k] for run in runs), 2) for k in runs[0]}


def hf_args(layer: dict) -> tuple:
    return (layer["x"], layer["nw"], layer["wq"], layer["wk"], layer["wv"], layer["bq"], layer["bk"], layer["bv"],
            layer["wo"], layer["cos"], layer["sin"], layer["k_cache"], layer["v_cache"], layer["cache_position"],
            layer["mask"], layer["scale"])


def time_graph(fn, layers: list[dict]) -> float:
    """Median microseconds per call of fn(layer), one call per layer in a captured graph."""
    return graph_time_us([functools.partial(fn, layer) for layer in layers], REPEATS)


def check_ours(layer: dict, dtype: torch.dtype, variant: str | None = None, split=None) -> float:
    """Relative error of ours vs the eager block in fp32, on a fresh copy of the caches."""
    ref_layer = {k: (v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in layer.items()}
    ref_layer["k_cache"], ref_layer["v_cache"] = layer["k_cache"].float(), layer["v_cache"].float()
    ref = hf_block(*hf_args(ref_layer))
    layer["out"].fill_(float("nan"))
    ours(layer, variant=variant, split=split)
    torch.cuda.synchronize()
    err = ((layer["out"].float() - ref).norm() / ref.norm()).item()
    if not err <= BANDS[dtype]:
        raise AssertionError(f"ours is off: relative error {err:.2e} vs the eager block")
    return err


def resolved_variant(variant: str, model: str, batch: int, dtype: torch.dtype) -> str:
    """The name of what ran: 'default' is attention_decode's own choice (the claimed-tile kernel at batch 1,
    attention_flow.is_default; else attention.DEFAULT_VARIANT)."""
    if variant != "default":
        return variant
    hidden, nh, kvh, d, _ = MODELS[model]
    kernel = attention.attention_config(hidden=hidden, num_heads=nh, num_kv_heads=kvh, head_dim=d, batch=batch,
                                        dtype=dtype, num_sms=torch.cuda.get_device_properties(0).multi_processor_count
                                        )["kernel"]
    return "flow" if kernel == "flow" else DEFAULT_VARIANT


def time_variant(layers: list[dict], dtype: torch.dtype, variant: str, phases: bool, prefetch: bool, split=None):
    """(us per call, us with the L2 prefetch or None, relative error, {phaseK_us}) of one variant of ours
    (split: the (C, P) override, None for the launcher's choice)."""
    err = check_ours(layers[0], dtype, variant, split)
    t_ours = time_graph(lambda layer: ours(layer, variant=variant, split=split), layers)
    t_pf = (time_graph(lambda layer: ours(layer, prefetch=True, variant=variant, split=split), layers)
            if prefetch else None)
    cut = {}
    if phases:
        for k in range(1, PHASES + 1):
            cut[f"phase{k}_us"] = round(time_graph(
                lambda layer, k=k: ours(layer, stop_after_phase=k, variant=variant, split=split), layers), 2)
    return t_ours, t_pf, err, cut


def parse_split(text: str) -> tuple[int, int]:
    """'C,P' -> (C, P), validated as attention_decode's split= (argparse type)."""
    try:
        split = check_split(tuple(int(v) for v in text.split(",")))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    assert split is not None
    return split


def splits_to_time(dtype, model: str, batch: int, splits, all_splits: bool) -> list[tuple[tuple | None, dict]]:
    """[(None, default plan), (override, its plan), ...] as launched on device 0: overrides equal to the default
    and (without all_splits) those that are not one wave are left out, with a note."""
    hidden, nh, kvh, d, _ = MODELS[model]
    shape = dict(hidden=hidden, num_heads=nh, num_kv_heads=kvh, head_dim=d, batch=batch, device_index=0)
    default = device_plan(dtype, **shape)
    out = [(None, default)]
    for split in splits:
        plan = device_plan(dtype, **shape, split=split)
        if (plan.cluster, plan.clusters_per_kv_head) == (default.cluster, default.clusters_per_kv_head):
            print(f"  split {split[0]},{split[1]} is the default for {model} B={batch}: timed once")
        elif not plan.one_wave and not all_splits:
            print(f"  split {split[0]},{split[1]} is not one wave for {model} B={batch} "
                  f"({kvh * split[1]} clusters of {split[0]}, {dict(plan.active_clusters)[split[0]]} co-resident): "
                  "skipped (--all-splits times it: version 3)")
        elif split not in [s for s, _ in out]:
            out.append((split, plan))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="Llama-2-7B fp16 only")
    ap.add_argument("--no-inductor", action="store_true")
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--dtypes", nargs="*", default=list(DTYPES))
    ap.add_argument("--batches", nargs="*", type=int, default=list(BATCHES))
    ap.add_argument("--seqs", nargs="*", type=int, default=list(SEQS))
    ap.add_argument("--phases", action="store_true",
                    help="also time the kernel cut after each phase (stop_after_phase 1..PHASES)")
    ap.add_argument("--timeline", action="store_true",
                    help="after the timing, print each variant's per-CTA stamp timeline (CF_ATTN_TIMELINE build)")
    ap.add_argument("--variants", nargs="*", default=["default"], choices=["default", *sorted(VARIANTS), "flow"],
                    help="variants of ours to time side by side (one row each; 'default': what attention_decode "
                         "picks for the shape, recorded by name; 'flow': the claimed-tile kernel, batch 1, with "
                         "--no-prefetch)")
    ap.add_argument("--no-prefetch", action="store_true", help="skip the L2-prefetch timing of ours")
    ap.add_argument("--splits", nargs="*", type=parse_split,
                    default=[parse_split(t) for t in os.environ.get("CF_ATTN_SPLIT", "").split()],
                    help="(cluster,clusters_per_kv_head) overrides of ours to time beside the chosen split, e.g. "
                         "8,1 4,1 (default: $CF_ATTN_SPLIT, else none)")
    ap.add_argument("--all-splits", action="store_true", help="also time overrides that are not one wave")
    ap.add_argument("--inductor-budget", type=float, default=420.0, help="seconds of Inductor compiles, then skip")
    ap.add_argument("--record", action="store_true", help="append rows to results.jsonl / RESULTS.md")
    ap.add_argument("--baseline-source", help="also time each variant built from this kernel source (an earlier "
                                               "attention_decode.cu), right after ours: rows carry baseline_source_us")
    ap.add_argument("--json", default=os.path.join(os.environ.get("OUT", "."), "attention_rows.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    bw, _ = copy_bandwidth()
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(f"copy bandwidth {bw / 1e12:.3f} TB/s, L2 {l2 >> 20} MiB, {sms} SMs")
    torch._dynamo.config.recompile_limit = 1024  # one specialised compile per row, never an eager fallback
    torch._dynamo.config.accumulated_recompile_limit = 4096
    compiled = torch.compile(hf_block, mode="max-autotune-no-cudagraphs", dynamic=False)
    spent = 0.0
    rows = []
    models = ["llama-2-7b"] if args.quick else args.models
    dtypes = ["fp16"] if args.quick else args.dtypes
    order = [(m, dt, b, s) for dt in dtypes for b in args.batches for m in models for s in args.seqs]
    order.sort(key=lambda r: (r[2] != 1, r[1] != "fp16"))  # batch 1 fp16 first: the headline rows
    for model, dtname, batch, seq in order:
        dtype = DTYPES[dtname]
        esize = torch.empty((), dtype=dtype).element_size()
        fb = floor_bytes(model, batch, seq, esize)
        n_layers = max(MIN_LAYERS, min(MAX_LAYERS, math.ceil(L2_MULTIPLE * l2 / fb)))
        layers = [make_layer(model, batch, seq, dtype, seed) for seed in range(n_layers)]
        plans = splits_to_time(dtype, model, batch, args.splits, args.all_splits)
        timed = {(variant, split): time_variant(layers, dtype, variant, args.phases, not args.no_prefetch, split)
                 for split, _ in plans for variant in args.variants}
        baseline = {}
        if args.baseline_source:
            with built_from(args.baseline_source):
                baseline = {key: time_variant(layers, dtype, key[0], False, False, key[1])[0] for key in timed}
        timelines = {}  # after every timing of the row: the timeline launches never share a graph with them
        if args.timeline:
            for split, plan in plans:
                for variant in args.variants:
                    if resolved_variant(variant, model, batch, dtype) == "flow":
                        timelines[(variant, split)] = (flow_timeline_of(layers, model), None)
                    else:
                        timelines[(variant, split)] = timeline_of(layers, variant, split, math.prod(plan.grid))
        plans = dict(plans)
        t_ind = None
        if not args.no_inductor and spent < args.inductor_budget:
            start = time.perf_counter()
            try:
                compiled(*hf_args(layers[0]))
                spent += time.perf_counter() - start
                t_ind = time_graph(lambda layer: compiled(*hf_args(layer)), layers)
            except Exception as exc:  # report, keep the row
                print(f"inductor failed on {model} {batch} {seq} {dtname}: {type(exc).__name__}: {exc}")
                spent += time.perf_counter() - start
        hidden, nh, kvh, d, _ = MODELS[model]
        floor_us = fb / bw * 1e6
        for (variant, split), (t_ours, t_pf, err, phases) in timed.items():
            plan = plans[split]  # the split actually launched: device_plan's, from the driver's cluster counts
            config = {"model": model, "batch": batch, "seq": seq, "dtype": dtname, "layers": n_layers,
                      "cluster": plan.cluster, "clusters_per_kv_head": plan.clusters_per_kv_head,
                      "shape": {"hidden": hidden, "heads": nh, "kv_heads": kvh, "head_dim": d}}
            config["variant"] = resolved_variant(variant, model, batch, dtype)
            if config["variant"] == "flow":  # the build this process ran (environment overrides included)
                config.update(attention_flow.Knobs.from_env().resolved(nh, kvh).row_flags())
            if args.splits:  # whether it was an override
                config["split"] = "default" if split is None else f"{split[0]},{split[1]}"
                config["ctas"] = plan.grid[0] * plan.grid[1] * plan.grid[2]
                config["one_wave"] = plan.one_wave
            row = results.make_row(
                "attention", config, ours_us=round(t_ours, 2),
                ours_l2_prefetch_us=None if t_pf is None else round(t_pf, 2),
                inductor_us=None if t_ind is None else round(t_ind, 2), floor_us=round(floor_us, 2),
                floor_fraction=round(floor_us / t_ours, 3), rel_err=float(f"{err:.3g}"), **phases,
                **({"baseline_source_us": round(baseline[(variant, split)], 2)} if baseline else {}),
                **({"timeline_us": timelines[(variant, split)][0]} if args.timeline else {}))
            rows.append(row)
            Path(args.json).write_text(json.dumps(rows, indent=1))  # after every row: a timeout keeps what ran
            pf = "-" if t_pf is None else f"{t_pf:7.1f}"
            label = "" if not args.splits else (" default" if split is None else " split")
            print(f"{model:13s} B={batch:2d} S={seq:4d} {dtname} {variant:4s} [C{config['cluster']},"
                  f"P{config['clusters_per_kv_head']}{label}]: ours {t_ours:7.1f} (L2 prefetch {pf}) "
                  f"inductor {'-' if t_ind is None else f'{t_ind:7.1f}'} floor {floor_us:6.1f} "
                  f"({floor_us / t_ours:.2f} of floor) err {err:.1e} layers {n_layers}"
                  + (f" | baseline source {baseline[(variant, split)]:7.1f}" if baseline else ""), flush=True)
            if phases:
                print("  cumulative time after each phase (us): " + " ".join(f"{v:.1f}" for v in phases.values()))
            if args.timeline:
                tl, set_ctas = timelines[(variant, split)]
                if set_ctas is None:  # the claimed-tile kernel's summary
                    print(f"flow timeline {model} B={batch} S={seq} {dtname} (us since the first CTA start; medians "
                          "over launches): " + ", ".join(f"{k} {v}" for k, v in tl.items()), flush=True)
                    continue
                print(format_timeline(f"{model} B={batch} S={seq} {dtname} {variant}{label}", tl, TIMELINE,
                                      kind="timeline", set_ctas=set_ctas, ctas=math.prod(plan.grid)), flush=True)
        del layers
        torch.cuda.empty_cache()
    Path(args.json).write_text(json.dumps(rows, indent=1))
    if args.record:
        results.append(rows, title="Attention block decode", method=__doc__.split("\n\n")[0] + "\n\n" +
                       __doc__.split("\n\n")[1], columns=["config.model", "config.batch", "config.seq", "config.dtype",
                                                          "ours_us", "inductor_us", "floor_us", "floor_fraction"])


if __name__ == "__main__":
    main()
