"""Per-CTA %globaltimer timelines (benchmarks/mla.py --phases, benchmarks/attention.py --timeline): the reduction of
the stamps to one table and its printing, shared by both benchmarks.

A launch's stamps are [CTAs, stamps] int64 ns (0: the CTA never set that stamp, e.g. a wait only the last
arriver reaches). Per stamp: the median over the CTAs that set it of (stamp - the launch's earliest start),
then the median over launches; the last CTA's start and end (max over CTAs, median over launches) beside it.
"""

from __future__ import annotations

import torch

NS_PER_US = 1e3


def reduce_stamps(runs: list[torch.Tensor], names: tuple[str, ...]) -> tuple[dict, dict]:
    """(timeline, set_ctas): timeline[name] = median over runs of the median over CTAs of the stamp (us since
    the run's earliest start; None when no CTA set it), plus "start_last" / "end_last" (max over CTAs, median
    over runs) of the first and last stamp; set_ctas[name] = CTAs that set the stamp (largest over runs)."""
    med_runs, last_runs, counts = [], [], [0] * len(names)
    for st in runs:
        st = st.cpu().view(-1, len(names))
        isset = st != 0
        # int64 differences first: globaltimer counts ns since an epoch (~1e18), past double precision
        rel = (st - st[:, 0][isset[:, 0]].min()).double() / NS_PER_US
        med, last = [], []
        for i in range(len(names)):
            col = rel[isset[:, i], i]
            counts[i] = max(counts[i], int(col.numel()))
            med.append(col.median() if col.numel() else torch.tensor(float("nan"), dtype=torch.float64))
            last.append(col.max() if col.numel() else torch.tensor(float("nan"), dtype=torch.float64))
        med_runs.append(torch.stack(med))
        last_runs.append(torch.stack(last))
    med = torch.stack(med_runs).nanmedian(dim=0).values
    last = torch.stack(last_runs).nanmedian(dim=0).values

    def us(v: torch.Tensor) -> float | None:
        return None if torch.isnan(v) else round(float(v), 2)

    timeline = {name: us(med[i]) for i, name in enumerate(names)}
    timeline["start_last"] = us(last[0])  # CTA launch skew
    timeline["end_last"] = us(last[len(names) - 1])  # first CTA start -> last CTA end
    return timeline, dict(zip(names, counts, strict=True))


def format_timeline(label: str, timeline: dict, names: tuple[str, ...], kind: str = "phases",
                    set_ctas: dict | None = None, ctas: int | None = None) -> str:
    """One line per stamp: us since the launch's first CTA start (median over CTAs) and the step from the
    previous stamp that was set ("-": no CTA set it); with set_ctas/ctas, "(n of N CTAs)" where not every CTA
    set it. Then the last CTA's start and end."""
    lines = [f"{kind} {label} (us since launch start, median over CTAs; +step)"]
    prev = 0.0
    for name in names:
        t = timeline[name]
        if t is None:
            lines.append(f"  {name:12s} {'-':>8s}")
            continue
        line = f"  {name:12s} {t:8.2f}  +{t - prev:6.2f}"
        if set_ctas is not None and ctas is not None and set_ctas[name] < ctas:
            line += f"  ({set_ctas[name]} of {ctas} CTAs)"
        lines.append(line)
        prev = t
    if timeline.get("end_last") is not None and timeline.get("end") is not None:
        lines.append(f"  last CTA: start {timeline['start_last']:.2f}, end {timeline['end_last']:.2f} "
                     f"(+{timeline['end_last'] - timeline['end']:.2f} after the median CTA's end)")
    return "\n".join(lines)
