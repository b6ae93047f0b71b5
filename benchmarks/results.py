"""Shared row writer of every benchmark: JSON lines for machines, a Markdown table for people.

A row is one JSON object with at least `date`, `device`, `bench`, `config` (an object) and times in
microseconds (`ours_us`, plus baselines such as `global_us`, `eager_us`, `inductor_us`).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
JSONL = HERE / "results.jsonl"
MARKDOWN = HERE / "RESULTS.md"
_REQUIRED = ("date", "device", "bench", "config", "ours_us")


def device_name() -> str:
    """The GPU's name as torch reports it (what every row is tagged with)."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    index = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    return f"{props.name} ({props.multi_processor_count} SMs)"


def make_row(bench: str, config: Mapping[str, object], *, ours_us: float | None, **fields: object) -> dict:
    """A row stamped with today's UTC date and the current device."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).date().isoformat(),
        "device": device_name(),
        "bench": bench,
        "config": dict(config),
        "ours_us": ours_us,
        **fields,
    }


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return "-" if value is None else str(value)


def markdown_table(rows: Sequence[Mapping[str, object]], columns: Sequence[str]) -> str:
    """Columns name row fields; "config.x" reaches into the config object."""

    def get(row: Mapping[str, object], column: str) -> object:
        if column.startswith("config."):
            return row["config"].get(column.removeprefix("config."))  # type: ignore[union-attr]
        return row.get(column)

    lines = ["| " + " | ".join(c.removeprefix("config.") for c in columns) + " |"]
    lines.append("|" + "---|" * len(columns))
    lines += ["| " + " | ".join(_cell(get(r, c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def append(
    rows: Sequence[Mapping[str, object]],
    *,
    title: str,
    method: str,
    columns: Sequence[str],
    jsonl: Path = JSONL,
    markdown: Path = MARKDOWN,
) -> None:
    """Append rows to results.jsonl and one titled section (method + table) to RESULTS.md.

    Raises ValueError if a row lacks a required field, before anything is written."""
    for row in rows:
        missing = [k for k in _REQUIRED if k not in row]
        if missing:
            raise ValueError(f"benchmark row lacks {missing}: {row}")
    with jsonl.open("a") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")
    first = rows[0] if rows else {"date": "?", "device": "?"}
    if not markdown.exists():
        markdown.write_text(
            "# Benchmark results\n\nAppended by `benchmarks/results.py`; raw rows in `results.jsonl`. "
            "Times in microseconds.\n"
        )
    with markdown.open("a") as f:
        f.write(f"\n## {title} ({first['date']}, {first['device']})\n\n{method.strip()}\n\n")
        f.write(markdown_table(rows, columns) + "\n")
