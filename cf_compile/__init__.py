"""cf-compile: a torch.compile backend fusing decoder blocks into Hopper cluster kernels.

Public API: ``clusterfusion`` (the backend; also registered as the string "clusterfusion"),
``compare`` (accuracy diff against eager), ``reports`` / ``last_report`` (the match reports).
"""

from __future__ import annotations

from typing import Any

from cf_compile.backend import clusterfusion, compilations, register
from cf_compile.report import last_report, reports

register()   # importing the package is enough even where the entry point is not installed

__all__ = ["clusterfusion", "compare", "compilations", "last_report", "reports"]


def __getattr__(name: str) -> Any:
    if name == "compare":     # imported lazily: it pulls in transformers
        from cf_compile.accuracy import compare

        return compare
    raise AttributeError(name)
