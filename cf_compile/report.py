"""The match report: one record per block candidate of each compiled graph, as a rich table or JSON.

Records are produced while the pass runs (count first, report second); rendering never re-reads a graph.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FUSED, NEAR_MISS, SKIPPED = "fused", "near-miss", "skipped"


@dataclass
class BlockRecord:
    graph: int                    # index of the compiled graph in this process
    layer: int                    # order of the block among its kind in the graph (decoder layer)
    block: str                    # "attention" | "ffn"
    status: str                   # fused | near-miss | skipped
    reason: str = ""              # why not fused; or why the kernel was not used
    module: str = ""              # HF module path, for people
    shapes: dict[str, int] = field(default_factory=dict)
    dtype: str = ""
    batch: int | None = None
    implementation: str = ""      # "kernel" | "reference (inlined)" | "reference (op)" | "Inductor (block as traced)"
    kernel_config: dict[str, Any] = field(default_factory=dict)
    features: dict[str, Any] = field(default_factory=dict)


@dataclass
class GraphReport:
    graph: int
    records: list[BlockRecord] = field(default_factory=list)
    cuda_graph: bool = False      # replayed through the lean CUDA-graph runner

    def coverage(self) -> str:
        """E.g. "32/32 attention, 32/32 FFN"."""
        parts = []
        for block, label in (("attention", "attention"), ("ffn", "FFN"), ("mla", "MLA")):
            rows = [r for r in self.records if r.block == block]
            if rows:
                parts.append(f"{sum(r.status == FUSED for r in rows)}/{len(rows)} {label}")
        return ", ".join(parts) if parts else "no attention or FFN blocks found"

    def fused(self, block: str | None = None) -> list[BlockRecord]:
        return [r for r in self.records if r.status == FUSED and (block is None or r.block == block)]

    def to_json(self) -> list[dict[str, Any]]:
        return [asdict(r) for r in self.records]

    def render(self, console: Any = None) -> None:
        from rich.console import Console
        from rich.table import Table

        console = console or Console(width=None if Console().is_terminal else 160)
        # a fallback reason shared by every fused block (e.g. "no CUDA device") is said once, below
        fused_reasons = {r.reason for r in self.records if r.status == FUSED}
        shared = next(iter(fused_reasons)) if len(fused_reasons) == 1 and len(self.fused()) > 1 else ""
        table = Table(title=f"clusterfusion: graph {self.graph} - {self.coverage()}", show_lines=False,
                      caption=f"every fused block: {self.fused()[0].implementation}, because {shared}"
                      if shared else None)
        for col in ("layer", "block", "status", "shapes", "dtype", "batch", "impl", "kernel config / reason"):
            table.add_column(col, overflow="fold")
        style = {FUSED: "green", NEAR_MISS: "yellow", SKIPPED: "dim"}
        for r in self.records:
            shapes = " ".join(f"{k}={v}" for k, v in r.shapes.items())
            reason = "" if shared and r.status == FUSED else r.reason
            detail = reason or " ".join(f"{k}={v}" for k, v in r.kernel_config.items())
            table.add_row(str(r.layer), r.block, f"[{style.get(r.status, '')}]{r.status}", shapes, r.dtype,
                          "" if r.batch is None else str(r.batch), r.implementation, detail)
        console.print(table)


_REPORTS: list[GraphReport] = []


def new_graph_report() -> GraphReport:
    rep = GraphReport(graph=len(_REPORTS))
    _REPORTS.append(rep)
    return rep


def reports() -> list[GraphReport]:
    """Every graph report of this process, oldest first."""
    return list(_REPORTS)


def last_report() -> GraphReport | None:
    return _REPORTS[-1] if _REPORTS else None


def clear_reports() -> None:
    _REPORTS.clear()


def emit(report: GraphReport, destination: bool | str) -> None:
    """Print (True) or append to a JSON file (a path: the file holds a list of records of all graphs)."""
    if destination is True:
        report.render()
    elif isinstance(destination, str) and destination:
        path = Path(destination)
        rows = json.loads(path.read_text()) if path.exists() and path.stat().st_size else []
        rows.extend(report.to_json())
        path.write_text(json.dumps(rows, indent=1, default=str))
