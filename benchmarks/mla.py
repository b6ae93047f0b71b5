"""Fused MLA decode kernel vs Inductor vs the HBM floor (DeepSeek-V2-Lite shapes), one row per shape, in one run.

Per row (batch, cached length, dtype):
  ours      cf_compile_kernels.mla.mla_decode (absorbed W_UK/W_UV, one launch) in a CUDA graph;
  inductor  torch.compile(mode="max-autotune-no-cudagraphs") of the eager HF-style block
            (cf_compile/ops/mla.py's reference: q_proj, kv_a, norms, complex RoPE, index_copy_ into the
            static cache, kv_b_proj over the whole cache, SDPA with a bool mask, o_proj, residual),
            replayed in a CUDA graph;
  floor     bytes that must move (every weight once, each live latent position [c_kv | k_pe] once, x, out,
            the new slot) / the copy bandwidth measured in the same run.
max_cache_len = cached length, position = cached length - 1. Each graph replays one call per "layer" over
enough layer copies (weights + caches) to exceed twice the L2; time per call = replay time / layers
(median, CUDA events). Before timing, ours is checked against the fp32 reference (dtype band).

Variants (--variants base fast ...): ours timed once per named launcher variant (cf_compile_kernels.mla.VARIANTS).
Phases (--phases): each variant rebuilt with its %globaltimer timeline (-DCF_MLA_PHASES) runs PHASE_RUNS single
launches; per phase the median over CTAs of (stamp - the launch's earliest start), median over launches, and
the step from the previous phase (the *_sync rows are the barrier waits, load imbalance included).

    PYTHONPATH=. python benchmarks/mla.py [--quick] [--no-inductor] [--record] [--inductor-budget S]
        [--variants NAME ...] [--phases] [--batches 1 16] [--seqs 1024 4096] [--rows 1:1024 16:1024] [--dtypes bf16]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results  # noqa: E402
from cta_timeline import format_timeline, reduce_stamps  # noqa: E402
from timing import copy_bandwidth, graph_time_us  # noqa: E402

from cf_compile.ops.mla import mla_decode_reference  # noqa: E402
from cf_compile_kernels import mla as mla_kernels  # noqa: E402
from cf_compile_kernels.mla import KV_LORA_RANK, ROPE_DIM, mla_config, mla_decode  # noqa: E402

# DeepSeek-V2-Lite attention: hidden, heads, nope, rope, v, kv_lora (no q LoRA)
HIDDEN, HEADS, NOPE, V_DIM = 2048, 16, 128, 128
SEQS = (1024, 4096)
BATCHES = (1, 4, 16)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
BANDS = {torch.float16: 2e-3, torch.bfloat16: 1e-2}
EPS = 1e-6
REPEATS = 30
L2_MULTIPLE = 2
MAX_LAYERS = 32
QH = NOPE + ROPE_DIM
LAT = KV_LORA_RANK + ROPE_DIM
PHASE_RUNS = 20  # instrumented single launches per timeline (medians over them)


def make_layer(batch: int, seq: int, dtype: torch.dtype, seed: int) -> dict:
    g = torch.Generator(device="cuda").manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, device="cuda") * scale).to(dtype)

    pos = seq - 1
    inv = 10000.0 ** (-torch.arange(0, ROPE_DIM, 2, device="cuda", dtype=torch.float32) / ROPE_DIM)
    ang = torch.full((batch, 1), float(pos), device="cuda") * inv[None]
    return dict(
        x=rnd(batch, 1, HIDDEN), norm_weight=rnd(HIDDEN, scale=0.1) + 1, norm_eps=EPS, norm_kind="weight",
        q_weights=[rnd(HEADS * QH, HIDDEN, scale=HIDDEN**-0.5)], q_biases=[None], q_norm_weight=None,
        q_norm_eps=0.0, kv_a_weight=rnd(LAT, HIDDEN, scale=HIDDEN**-0.5), kv_a_bias=None,
        kv_norm_weight=rnd(KV_LORA_RANK, scale=0.1) + 1, kv_norm_eps=EPS,
        kv_b_weight=rnd(HEADS * (NOPE + V_DIM), KV_LORA_RANK, scale=KV_LORA_RANK**-0.5), kv_b_bias=None,
        rope_form="complex", cos=None, sin=None, freqs_cis=torch.polar(torch.ones_like(ang), ang).view(batch, 1, 1, -1),
        cache_position=torch.tensor([pos], device="cuda"), k_cache=rnd(batch, 1, seq, KV_LORA_RANK),
        v_cache=rnd(batch, 1, seq, ROPE_DIM),
        attn_mask=(torch.arange(seq, device="cuda") <= pos)[None, None, None, :].expand(batch, 1, 1, seq).contiguous(),
        scale=QH**-0.5, o_weight=rnd(HIDDEN, HEADS * V_DIM, scale=(HEADS * V_DIM) ** -0.5), o_bias=None,
        add_residual=True, num_heads=HEADS, qk_nope_head_dim=NOPE, v_head_dim=V_DIM,
        out=torch.empty(batch, 1, HIDDEN, dtype=dtype, device="cuda"),
    )


def floor_bytes(batch: int, seq: int, esize: int) -> int:
    """Weights once, each live latent position once (c_kv | k_pe), x, out, the new slot."""
    weights = (HEADS * QH * HIDDEN + LAT * HIDDEN + HEADS * (NOPE + V_DIM) * KV_LORA_RANK + HIDDEN * HEADS * V_DIM
               + HIDDEN + KV_LORA_RANK) * esize
    latent = batch * (seq - 1) * LAT * esize
    activations = (2 * batch * HIDDEN + batch * LAT) * esize + batch * seq  # x, out, new slot, mask
    return weights + latent + activations


def _ref_args(layer: dict) -> dict:
    return {k: v for k, v in layer.items() if k != "out"}


def ours(layer: dict, variant: str | None = None, stamps: torch.Tensor | None = None) -> None:
    a = layer
    mla_decode(a["x"], a["norm_weight"], EPS, "weight", a["q_weights"], None, 0.0, a["kv_a_weight"],
               a["kv_norm_weight"], EPS, a["kv_b_weight"], "complex", None, None, a["freqs_real"],
               a["cache_position"], a["k_cache"], a["v_cache"], a["attn_mask"], a["scale"], a["o_weight"], True,
               HEADS, NOPE, V_DIM, a["out"], variant=variant, stamps=stamps)


def phase_timeline(layers: list[dict], variant: str) -> dict:
    """Per phase (mla.PHASES): median over CTAs of the globaltimer stamp minus the launch's earliest start,
    median over PHASE_RUNS launches (rotating the layers so weights come from HBM), in us."""
    ctas = torch.cuda.get_device_properties(0).multi_processor_count
    stamps = torch.zeros(mla_kernels.stamp_elems(ctas), dtype=torch.int64, device="cuda")
    runs = []
    for r in range(PHASE_RUNS + 1):  # the first launch loads the kernel and warms up: not counted
        ours(layers[r % len(layers)], variant, stamps)
        torch.cuda.synchronize()
        if r:
            runs.append(stamps.view(ctas, len(mla_kernels.PHASES)).cpu())
    # The medians over CTAs hide the stragglers: the kernel ends with its LAST CTA (run 3: o_proj rows only on
    # CTAs 0-63, so the median CTA's `end` came 0.2 us after the W_UV barrier). reduce_stamps also gives the last
    # CTA's start and end (max over CTAs, median over runs): start_last, end_last.
    return reduce_stamps(runs, mla_kernels.PHASES)[0]


def format_phases(label: str, timeline: dict) -> str:
    """One line per phase: us since the launch's first CTA start (median over CTAs) and the step."""
    return format_timeline(label, timeline, mla_kernels.PHASES, kind="phases")


def check_ours(layer: dict, dtype: torch.dtype, variant: str | None = None) -> float:
    """Relative error of ours vs the fp32 reference block, on fresh copies of the caches."""
    ref = {k: (v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
           for k, v in _ref_args(layer).items()}
    ref["q_weights"] = [w.float() for w in layer["q_weights"]]
    ref["k_cache"], ref["v_cache"] = layer["k_cache"].float(), layer["v_cache"].float()
    want = mla_decode_reference(**{k: v for k, v in ref.items() if k != "freqs_real"})
    layer["out"].fill_(float("nan"))
    ours(layer, variant)
    torch.cuda.synchronize()
    err = ((layer["out"].float() - want).norm() / want.norm()).item()
    if not err <= BANDS[dtype]:
        raise AssertionError(f"ours is off: relative error {err:.2e} vs the reference block")
    return err


def _batch_seq(text: str) -> tuple[int, int]:
    """--rows item "B:S" -> (batch, cached length)."""
    batch, seq = text.split(":")
    return int(batch), int(seq)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="bf16 batch 1 only")
    ap.add_argument("--no-inductor", action="store_true")
    ap.add_argument("--inductor-budget", type=float, default=150.0, help="seconds of Inductor compiles, then skip")
    ap.add_argument("--record", action="store_true", help="append rows to results.jsonl / RESULTS.md")
    ap.add_argument("--json", default=os.path.join(os.environ.get("OUT", "."), "mla_rows.json"))
    ap.add_argument("--variants", nargs="+", default=[None], choices=[*mla_kernels.VARIANTS, None],
                    help="launcher variants to time (default: DEFAULT_VARIANT)")
    ap.add_argument("--phases", action="store_true", help="also print each variant's per-phase timeline")
    ap.add_argument("--batches", nargs="+", type=int, default=None)
    ap.add_argument("--seqs", nargs="+", type=int, default=None)
    ap.add_argument("--dtypes", nargs="+", choices=tuple(DTYPES), default=None)
    ap.add_argument("--rows", nargs="+", type=_batch_seq, default=None,
                    help="BATCH:SEQ pairs, in this order (instead of --batches x --seqs)")
    args = ap.parse_args()
    torch.manual_seed(0)
    bw, _ = copy_bandwidth()
    props = torch.cuda.get_device_properties(0)
    print(f"copy bandwidth {bw / 1e12:.3f} TB/s, L2 {props.L2_cache_size >> 20} MiB, "
          f"{props.multi_processor_count} SMs", flush=True)
    torch._dynamo.config.recompile_limit = 1024
    torch._dynamo.config.accumulated_recompile_limit = 4096
    compiled = torch.compile(mla_decode_reference, mode="max-autotune-no-cudagraphs", dynamic=False)
    spent, rows, extra = 0.0, [], []  # extra: the non-first variants' rows (json only)
    batches, dtypes = ((1,), ("bf16",)) if args.quick else (BATCHES, tuple(DTYPES))
    batches, dtypes, seqs = args.batches or batches, args.dtypes or dtypes, args.seqs or SEQS
    order = sorted(((dt, b, s) for dt in dtypes for b in batches for s in seqs), key=lambda r: (r[1], r[0] != "bf16"))
    if args.rows:
        order = [(dt, b, s) for b, s in args.rows for dt in dtypes]
    for dtname, batch, seq in order:
        dtype = DTYPES[dtname]
        fb = floor_bytes(batch, seq, dtype.itemsize)
        n_layers = max(1, min(MAX_LAYERS, math.ceil(L2_MULTIPLE * props.L2_cache_size / fb)))
        layers = [make_layer(batch, seq, dtype, seed) for seed in range(n_layers)]
        for layer in layers:
            layer["freqs_real"] = torch.view_as_real(layer["freqs_cis"]).contiguous()
        for variant in args.variants[1:]:  # the extra variants: their own line each, same layers
            try:
                v_err = check_ours(layers[0], dtype, variant)
            except AssertionError as exc:  # a wrong variant is reported, not timed; the others go on
                print(f"v2-lite B={batch:2d} S={seq:4d} {dtname} variant {variant}: WRONG {exc}", flush=True)
                continue
            t_v = graph_time_us([functools.partial(ours, layer, variant) for layer in layers], REPEATS)
            print(f"v2-lite B={batch:2d} S={seq:4d} {dtname} variant {variant:6s}: ours {t_v:7.1f} err {v_err:.1e}",
                  flush=True)
            extra.append({"variant": variant, "batch": batch, "seq": seq, "dtype": dtname, "ours_us": round(t_v, 2),
                          **({"phases": phase_timeline(layers, variant)} if args.phases else {})})
            Path(args.json).write_text(json.dumps(rows + extra, indent=1))
            if args.phases:
                print(format_phases(f"B={batch} S={seq} {dtname} {variant}", extra[-1]["phases"]), flush=True)
        variant = args.variants[0]
        err = check_ours(layers[0], dtype, variant)
        t_ours = graph_time_us([functools.partial(ours, layer, variant) for layer in layers], REPEATS)
        t_ind = None
        if not args.no_inductor and spent < args.inductor_budget:
            start = time.perf_counter()
            try:
                call = [functools.partial(lambda lay: compiled(**{k: v for k, v in _ref_args(lay).items()
                                                                    if k != "freqs_real"}), layer) for layer in layers]
                call[0]()
                spent += time.perf_counter() - start
                t_ind = graph_time_us(call, REPEATS)
            except Exception as exc:  # report, keep the row
                print(f"inductor failed on B={batch} S={seq} {dtname}: {type(exc).__name__}: {exc}", flush=True)
                spent += time.perf_counter() - start
        cfg = mla_config(num_heads=HEADS, qk_nope_head_dim=NOPE, v_head_dim=V_DIM, q_lora_rank=0, batch=batch,
                         num_sms=props.multi_processor_count, max_cache_len=seq, variant=variant)
        floor_us = fb / bw * 1e6
        row = results.make_row(
            "mla", {"model": "deepseek-v2-lite", "batch": batch, "seq": seq, "dtype": dtname, "layers": n_layers,
                    "ctas": cfg["ctas"], "attention_chunks": cfg["attention_chunks"],
                    "variant": variant or mla_kernels.DEFAULT_VARIANT,
                    "shape": {"hidden": HIDDEN, "heads": HEADS, "q_lora_rank": 0, "kv_lora_rank": KV_LORA_RANK,
                              "qk_nope_head_dim": NOPE, "qk_rope_head_dim": ROPE_DIM, "v_head_dim": V_DIM}},
            ours_us=round(t_ours, 2), inductor_us=None if t_ind is None else round(t_ind, 2),
            floor_us=round(floor_us, 2), floor_fraction=round(floor_us / t_ours, 3), rel_err=float(f"{err:.3g}"))
        rows.append(row)
        Path(args.json).write_text(json.dumps(rows + extra, indent=1))  # after every row: a timeout keeps what ran
        print(f"v2-lite B={batch:2d} S={seq:4d} {dtname}: ours {t_ours:7.1f} inductor "
              f"{'-' if t_ind is None else f'{t_ind:7.1f}'} floor {floor_us:6.1f} ({floor_us / t_ours:.2f} of floor) "
              f"err {err:.1e} layers {n_layers} variant {variant or mla_kernels.DEFAULT_VARIANT}", flush=True)
        if args.phases:
            row["phases"] = phase_timeline(layers, variant)
            print(format_phases(f"B={batch} S={seq} {dtname} {variant or mla_kernels.DEFAULT_VARIANT}",
                                row["phases"]), flush=True)
            Path(args.json).write_text(json.dumps(rows + extra, indent=1))
        del layers
        torch.cuda.empty_cache()
    if args.record:
        doc = __doc__.split("\n\n")
        results.append(rows, title="MLA block decode (DeepSeek-V2-Lite)", method=doc[0] + "\n\n" + doc[1],
                       columns=["config.batch", "config.seq", "config.dtype", "ours_us", "inductor_us", "floor_us",
                                "floor_fraction"])


if __name__ == "__main__":
    main()
