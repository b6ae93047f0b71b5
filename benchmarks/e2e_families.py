"""Which fused families pay off inside a whole decode step: the step with each combination of our kernels,
against Inductor, timed in alternating rounds in one run.

    PYTHONPATH=. python3 benchmarks/e2e_families.py --model qwen2.5-0.5b --json families.json

Variants (each compiled with the baseline's max-autotune for what it leaves to Inductor, captured in one plain
CUDA graph, as benchmarks/e2e.py captures Inductor): ``inductor``; ``all`` (every matched block on our kernels);
one variant per family that fuses only that family (``patterns=[family]``, the other blocks entirely Inductor's,
not our reference). The block benchmarks judge a family against Inductor compiling that block alone; here
Inductor compiles the blocks among their real neighbours, which is what a user runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import results  # noqa: E402
from benchmarks.e2e import Session, plain_graph_step  # noqa: E402


def record(row: dict) -> None:
    """One row to results.jsonl (policy_table.py turns each "<family> only" time into a step-scope row) and
    a table line per variant to RESULTS.md."""
    results.append([row], title="Decode step by fused family (benchmarks/e2e_families.py)",
                   method=__doc__.split("\n\n")[2].replace("\n", " "),
                   columns=["config.model", "config.dtype", "config.batch", "inductor_us", "ours_us", "step_us",
                            "over_inductor"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="qwen2.5-0.5b")
    p.add_argument("--families", nargs="+", default=["attention", "ffn"])
    p.add_argument("--prompt", type=int, default=512)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--mode", default="max-autotune-no-cudagraphs")
    p.add_argument("--json", type=Path)
    p.add_argument("--append", type=Path, help="append a --json file's row to results.jsonl/RESULTS.md, then exit")
    args = p.parse_args()
    if args.append:
        record(json.loads(args.append.read_text()))
        return
    session = Session.for_model(args.model, torch.bfloat16, 1, args.prompt, args.prompt + 64 + 8 * args.steps)
    t0 = time.perf_counter()

    def graphed(**kw):
        return plain_graph_step(session.compile(**kw), session)

    steps = {"inductor": graphed(mode=args.mode)}
    print(f"[{time.perf_counter() - t0:5.0f} s] inductor compiled", flush=True)
    ours = {"kernels": "all", "cudagraphs": False, "mode": args.mode}
    steps["all"] = graphed(backend="clusterfusion", options=ours)
    for family in args.families:
        steps[f"{family} only"] = graphed(backend="clusterfusion", options={**ours, "patterns": [family]})
        print(f"[{time.perf_counter() - t0:5.0f} s] {family} only compiled", flush=True)
    times = session.time_interleaved(steps, args.steps, args.rounds)
    config = dict(model=args.model, batch=1, seq=args.prompt, dtype="bf16", steps=args.steps, rounds=args.rounds)
    row = results.make_row("e2e_families", config, ours_us=times["all"], inductor_us=times["inductor"],
                           step_us=times, over_inductor={k: round(times["inductor"] / v, 3) for k, v in times.items()},
                           seconds=round(time.perf_counter() - t0, 1))
    print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
