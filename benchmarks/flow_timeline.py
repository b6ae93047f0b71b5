"""Where a claimed-tile launch spends its time: the -DCF_FLOW_TIMELINE build's stamps, summarised (the FFN's
two-phase queue by `summarise`, any queue of several tile kinds, such as the attention block's, by
`summarise_kinds`).

The kernel writes, per tile, {claimed ns, done ns, SM} and, per CTA, {start ns, end ns, hand-off wait ns}
(csrc/gated_ffn_flow.cu). `summarise` turns one launch's stamps into the few numbers that split its time
beyond the HBM floor: the start-up (first CTA start -> first tile claimed), the gate/up phase and its tail
(first CTA to run out of gate/up tiles -> last gate/up tile done), the hand-off wait, the down phase, the end
tail (median CTA end -> last CTA end) and how evenly the SMs shared the bytes. `flow_timeline` runs the
timeline build over the rotated weight sets of benchmarks/ffn.py and takes the median of each number.
"""

from __future__ import annotations

import dataclasses
import statistics

import torch

from cf_compile_kernels import ffn, ffn_flow

NS_PER_US = 1e3


def summarise(tiles: torch.Tensor, ctas: torch.Tensor, gate_up_tiles: int, gate_up_bytes: float,
              down_bytes: float) -> dict[str, float]:
    """One launch. tiles: int64 [T, 3] {claimed, done, sm}; ctas: int64 [C, 3] {start, end, wait ns};
    the first gate_up_tiles tiles are gate/up tiles of gate_up_bytes each, the rest down tiles of down_bytes.
    Times in us since the first CTA start."""
    t0 = int(ctas[:, 0].min())
    rel = lambda v: (int(v) - t0) / NS_PER_US  # noqa: E731 -- int64 first: globaltimer is ~1e18 ns
    gu, dn = tiles[:gate_up_tiles], tiles[gate_up_tiles:]
    ends = sorted(rel(e) for e in ctas[:, 1])
    per_sm: dict[int, float] = {}
    for i, (_, _, sm) in enumerate(tiles.tolist()):
        per_sm[sm] = per_sm.get(sm, 0.0) + (gate_up_bytes if i < gate_up_tiles else down_bytes)
    loads = sorted(per_sm.values())
    return {
        "first_claim": rel(tiles[:, 0].min()),
        "gate_up_first_idle": rel(dn[:, 0].min()) if len(dn) else float("nan"),
        "gate_up_done": rel(gu[:, 1].max()),
        "wait_median": statistics.median(float(w) for w in ctas[:, 2]) / NS_PER_US,
        "wait_max": float(ctas[:, 2].max()) / NS_PER_US,
        "down_done": rel(dn[:, 1].max()) if len(dn) else float("nan"),
        "end_median": statistics.median(ends),
        "end_max": ends[-1],
        "gate_up_tile_us": statistics.median((d - c) / NS_PER_US for c, d, _ in gu.tolist()),
        "down_tile_us": statistics.median((d - c) / NS_PER_US for c, d, _ in dn.tolist())
        if len(dn) else float("nan"),
        "sm_bytes_min_over_max": loads[0] / loads[-1],
        "sms": float(len(loads)),
    }


def summarise_kinds(tiles: torch.Tensor, ctas: torch.Tensor, kinds: dict[str, int]) -> dict[str, float]:
    """One launch of a queue of several tile kinds (attention_flow: q/k/v, attention, o_proj), `kinds` giving each
    kind's tile count in queue order. Per kind: its first claim, first and last tile done, median tile time; then
    the CTAs' median / max wait on hand-off counters and their median / max end. Times in us since the first CTA
    start."""
    t0 = int(ctas[:, 0].min())
    rel = lambda v: (int(v) - t0) / NS_PER_US  # noqa: E731 -- int64 first: globaltimer is ~1e18 ns
    out: dict[str, float] = {"first_claim": rel(tiles[:, 0].min())}
    start = 0
    for name, count in kinds.items():
        part = tiles[start:start + count]
        start += count
        if not count:
            continue
        out[f"{name}_first_claim"] = rel(part[:, 0].min())
        out[f"{name}_first_done"] = rel(part[:, 1].min())
        out[f"{name}_done"] = rel(part[:, 1].max())
        out[f"{name}_tile_us"] = statistics.median((d - c) / NS_PER_US for c, d, _ in part.tolist())
    ends = sorted(rel(e) for e in ctas[:, 1])
    out["wait_median"] = statistics.median(float(w) for w in ctas[:, 2]) / NS_PER_US
    out["wait_max"] = float(ctas[:, 2].max()) / NS_PER_US
    out["end_median"] = statistics.median(ends)
    out["end_max"] = ends[-1]
    return out


def summarise_steps(tiles: torch.Tensor, ctas: torch.Tensor, marks: torch.Tensor, kinds: dict[str, int],
                    steps: dict[str, tuple[str, ...]]) -> dict[str, float]:
    """One launch's step marks (attention_flow.PHASE_STEPS: per tile kind, the steps a timeline build marks in
    order; marks: int64 [T, PHASE_MARKS], 0 where a tile has no such step). Per kind and step: the median time
    from the previous step (the claim for the first) over the tiles that marked it, and the last tile's mark, in us
    since the first CTA start."""
    t0 = int(ctas[:, 0].min())
    out: dict[str, float] = {}
    start = 0
    for name, count in kinds.items():
        rows, stamps = marks[start:start + count], tiles[start:start + count]
        start += count
        prev = stamps[:, 0]
        for k, step in enumerate(steps.get(name, ())):
            have = rows[:, k] > 0
            if not bool(have.any()):
                continue
            key = f"{name} {step}"
            out[f"{key} (step us)"] = statistics.median(
                (int(a) - int(b)) / NS_PER_US for a, b in zip(rows[have, k].tolist(), prev[have].tolist(), strict=True))
            out[f"{key} (last at)"] = (int(rows[have, k].max()) - t0) / NS_PER_US
            prev = torch.where(have, rows[:, k], prev)
    return out


def flow_timeline(x: torch.Tensor, sets: list[dict], tuning: ffn.Tuning, runs: int, eps: float) -> dict:
    """Median over `runs` timeline launches (after one warm-up) of each summarise() number."""
    tuning = dataclasses.replace(tuning, phases=True, kernel="flow")
    hidden, batch = x.shape[-1], x.shape[0]
    inter = sets[0]["down"].shape[-1]
    plan = ffn_flow.plan(hidden, inter, x.dtype, batch, x.device, tuning.flow())
    stamps = torch.zeros(plan.stamp_elems(), dtype=torch.int64, device=x.device)
    counts = ffn_flow.tile_counts(hidden, inter, plan.rpw, plan.gu_wpr, plan.down_wpr)
    gate_up_tiles = counts["gate_up_tiles"]
    elem = x.element_size()
    gate_up_bytes = 2.0 * counts["gate_up_units_per_tile"] * hidden * elem
    down_bytes = float(counts["down_rows_per_tile"] * inter * elem)
    out = torch.empty_like(x)
    summaries = []
    for r in range(runs + 1):
        s = sets[r % len(sets)]
        ffn.gated_ffn(x, s["norm_weight"], eps, "weight", [s["gate"], s["up"]], s["down"], "silu", True, out,
                      tuning=tuning, stamps=stamps)
        torch.cuda.synchronize()
        if r:
            st = stamps.view(-1, ffn_flow.STAMP_WORDS).cpu()
            summaries.append(summarise(st[: plan.tiles], st[plan.tiles:], gate_up_tiles, gate_up_bytes,
                                       down_bytes))
    return {k: round(statistics.median(s[k] for s in summaries), 2) for k in summaries[0]}


def format_flow_timeline(label: str, summary: dict) -> str:
    return f"flow timeline {label} (us since the first CTA start; medians over launches): " + ", ".join(
        f"{k} {v}" for k, v in summary.items()
    )


PHASE_DONE_KEYS = ("qkv_done", "attention_done", "o_proj_done")


def step_lines(lines: list[str]) -> list[str]:
    """The timeline lines of a device run ("<label> ... : key value, ..."; the device scripts prefix each with
    their build's name), cut to each kind's last completion and the step times (summarise_steps)."""
    out = []
    for line in lines:
        head, _, rest = line.partition(": ")
        keep = [kv for kv in rest.strip().split(", ") if "(step us)" in kv or kv.split(" ")[0] in PHASE_DONE_KEYS]
        out.append(f"{head.split(' (us since')[0]} | " + ", ".join(keep).replace(" (step us)", ""))
    return out


if __name__ == "__main__":  # python benchmarks/flow_timeline.py <timelines.txt>: the step lines of a device run
    import sys

    print("\n".join(step_lines(open(sys.argv[1]).read().splitlines())))
