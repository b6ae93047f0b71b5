"""Where the host time of one compiled decode step goes (the lean runner's step costs ~750-880 us of CPU at
Llama-3-8B against ~100 us for replaying the same graph directly; e2e_gaps.py, H100, 2026-11-24).

    PYTHONPATH=. python3 benchmarks/host_profile.py --model qwen2.5-0.5b --json host.json

Per variant, host time per call (back-to-back calls, no synchronisation; the GPU runs behind) and a cProfile
of the same calls, top entries by own time:
  ours            torch.compile(backend="clusterfusion") with its lean CUDA-graph runner (the default)
  ours, no guards the same call with Dynamo's guard evaluation skipped (torch.compiler.set_stance(...,
                  skip_guard_eval_unsafe=True)): the difference is what the guards cost
  inductor (RO)   torch.compile(mode="reduce-overhead"), for comparison
Predictions (to test, not measured): guards ~40% of ours' host time, AOTAutograd's runtime wrappers over the
~300 lifted parameters ~40%, the lean runner itself (identity check, input copies, replay) <= 60 us.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import pstats
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.e2e import Session  # noqa: E402
from benchmarks.e2e_gaps import host_us  # noqa: E402

TOP_ENTRIES = 25


def profile(step, session: Session, calls: int) -> list[str]:
    """The top cProfile entries (own time) of ``calls`` back-to-back calls from a warmed cache, as pstats
    prints them."""
    cache, tok = session.warmed(step)
    prof = cProfile.Profile()
    with torch.no_grad():
        prof.enable()
        for _ in range(calls):
            step(tok, past_key_values=cache, use_cache=True)
        prof.disable()
    torch.cuda.synchronize()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(TOP_ENTRIES)
    return [line for line in out.getvalue().splitlines() if line.strip()][-TOP_ENTRIES - 1:]


def measure(label: str, step, session: Session, calls: int, no_guards: bool = False) -> dict:
    """Host time per call (median of three e2e_gaps.host_us runs) and the profile, optionally with Dynamo's
    guard evaluation skipped."""
    stance = (torch.compiler.set_stance("default", skip_guard_eval_unsafe=True) if no_guards
              else contextlib.nullcontext())
    with stance:
        host = [host_us(step, session, calls) for _ in range(3)]
        top = profile(step, session, calls)
    row = {"variant": label, "host_us": round(sorted(host)[1], 1), "host_runs_us": [round(h, 1) for h in host],
           "top_by_own_time": top}
    print(json.dumps({k: v for k, v in row.items() if k != "top_by_own_time"}), flush=True)
    print("\n".join(top), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="qwen2.5-0.5b")
    p.add_argument("--prompt", type=int, default=512)
    p.add_argument("--calls", type=int, default=50)
    p.add_argument("--no-inductor", action="store_true", help="skip the reduce-overhead comparison")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    session = Session.for_model(args.model, torch.bfloat16, 1, args.prompt, args.prompt + 8 + 2 * args.calls)
    rows = []
    ours = session.compile(backend="clusterfusion")
    rows.append(measure("ours", ours, session, args.calls))
    rows.append(measure("ours, no guards", ours, session, args.calls, no_guards=True))
    if not args.no_inductor:
        rows.append(measure("inductor (RO)", session.compile(mode="reduce-overhead"), session, args.calls))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
