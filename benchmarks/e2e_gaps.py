"""Where a compiled decode step's time goes besides its kernels: host time per call, GPU span vs busy, gaps.

    PYTHONPATH=. python3 benchmarks/e2e_gaps.py --model llama3-8b --json gaps.json

benchmarks/e2e.py times a step between two CUDA events around back-to-back calls; when that time exceeds the
sum of the step's kernel times, the difference is idle GPU time, and this script says where it is. Per
variant (ours through its lean CUDA-graph runner; ours compiled without it and captured in one plain graph,
as e2e.py captures Inductor; optionally ours with only attention matched, and Inductor, in that plain graph):
  step_us     e2e.py's measurement (median over repeats of --steps back-to-back calls)
  host_us     host time of one call without any synchronisation (what the CPU needs to enqueue a step);
              when it exceeds the GPU's time per step, the GPU waits for the host
  span_us     first kernel start to last kernel end of one profiled step (CUPTI, graph replays included)
  busy_us     union of the step's kernel intervals; span - busy = idle between the step's kernels
  gaps        the largest idle intervals inside a step, each with the kernels before and after it
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.e2e import Session, plain_graph_step  # noqa: E402

PROFILED_STEPS = 4
TOP_GAPS = 8
STEP_SEPARATION_S = 0.005  # idle between profiled steps, far longer than any gap inside one


def host_us(step, session: Session, calls: int) -> float:
    """Mean host time per call of ``calls`` back-to-back calls, no synchronisation inside the loop."""
    cache, tok = session.warmed(step)
    with torch.no_grad():
        t0 = time.perf_counter()
        for _ in range(calls):
            step(tok, past_key_values=cache, use_cache=True)
        host = (time.perf_counter() - t0) / calls * 1e6
        torch.cuda.synchronize()
    return host


def split_steps(events: list[tuple[float, float, str]], n: int) -> list[list[tuple[float, float, str]]]:
    """Kernel intervals (sorted by start) of n steps -> one list per step, cut at the n - 1 largest gaps (the
    profiled steps are separated by a synchronisation and a sleep, longer than any gap inside a step)."""
    ends, end = [], float("-inf")
    for _, e, _ in events:
        end = max(end, e)
        ends.append(end)
    gaps = sorted(((events[i + 1][0] - ends[i], i) for i in range(len(events) - 1)), reverse=True)
    cuts = sorted(i for _, i in gaps[: n - 1])
    steps, lo = [], 0
    for c in [*cuts, len(events) - 1]:
        steps.append(events[lo: c + 1])
        lo = c + 1
    return steps


def step_stats(evs: list[tuple[float, float, str]]) -> dict:
    """Span, busy time (union of the intervals), idle time and the largest gaps of one step."""
    busy, end, idle = 0.0, evs[0][0], []
    for k, (s, e, name) in enumerate(evs):
        if s > end:
            idle.append((round(s - end, 2), evs[k - 1][2], name))
        busy += max(0.0, e - max(s, end))
        end = max(end, e)
    return {"kernels": len(evs), "span_us": round(end - evs[0][0], 1), "busy_us": round(busy, 1),
            "idle_us": round(sum(g for g, _, _ in idle), 1), "gaps": sorted(idle, reverse=True)[:TOP_GAPS]}


def timeline(step, session: Session) -> dict:
    """Kernel intervals of PROFILED_STEPS calls: the median step's span, busy time and largest gaps."""
    cache, tok = session.warmed(step)
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(PROFILED_STEPS):
            step(tok, past_key_values=cache, use_cache=True)
            torch.cuda.synchronize()
            time.sleep(STEP_SEPARATION_S)
    events = sorted((e.time_range.start, e.time_range.end, e.name[:70]) for e in prof.events()
                    if e.device_type == torch.autograd.DeviceType.CUDA)
    if len(events) < PROFILED_STEPS:
        return {"error": f"{len(events)} device activities recorded"}
    per_step = [step_stats(evs) for evs in split_steps(events, PROFILED_STEPS)]
    median = sorted(per_step, key=lambda s: s["span_us"])[len(per_step) // 2]
    return {**median, "spans_us": [s["span_us"] for s in per_step]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="llama3-8b")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    p.add_argument("--prompt", type=int, default=512)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--mode", default="max-autotune-no-cudagraphs")
    p.add_argument("--inductor", action="store_true", help="also Inductor in a plain CUDA graph")
    p.add_argument("--kernels", nargs="+", default=["auto"], choices=["auto", "all"],
                   help="clusterfusion's kernels option; each value gets both ours variants")
    p.add_argument("--attention-only", action="store_true",
                   help="also ours with only the attention family matched (patterns=['attention']: the FFN stays "
                        "Inductor's own code, not our reference), in a plain graph")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    session = Session.for_model(args.model, dtype, 1, args.prompt, args.prompt + 64 + 8 * args.steps)
    compiled = session.compile

    variants = {}
    for kernels in args.kernels:
        opts = {"mode": args.mode, "kernels": kernels}
        tag = "" if kernels == "auto" else f", kernels={kernels}"
        variants[f"ours (lean runner{tag})"] = lambda o=opts: compiled(backend="clusterfusion", options=o)
        variants[f"ours (plain graph{tag})"] = lambda o=opts: plain_graph_step(
            compiled(backend="clusterfusion", options={**o, "cudagraphs": False}), session)
    if args.attention_only:
        variants["ours attention only (plain graph)"] = lambda: plain_graph_step(compiled(
            backend="clusterfusion", options={"mode": args.mode, "patterns": ["attention"], "cudagraphs": False}),
            session)
    if args.inductor:
        variants["inductor (plain graph)"] = lambda: plain_graph_step(compiled(mode=args.mode), session)
    rows = []
    for label, make in variants.items():
        t0 = time.perf_counter()
        try:
            step = make()
            row = {"variant": label, "model": args.model,
                   "step_us": round(session.time_step(step, args.steps, args.repeats), 1),
                   "host_us": round(statistics.median(host_us(step, session, args.steps) for _ in range(3)), 1),
                   **timeline(step, session)}
        except Exception as exc:  # keep the other variants
            row = {"variant": label, "model": args.model, "error": f"{type(exc).__name__}: {exc}"[:300]}
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
