"""The backend's documented options, parsed and validated once per compile.

Given through ``torch.compile(model, backend="clusterfusion", options={...})``:

=============  ==================================  =================================================
option         values (default first)              meaning
=============  ==================================  =================================================
report         False | True | "path.json"          print the match table / write it as JSON
patterns       ("attention", "ffn", "mla")         which block families to fuse
kernels        "auto" | "all" | "reference"        auto: cluster kernels where supported (sm_90+)
                                                   and measured faster than Inductor, else the
                                                   reference decomposed for Inductor; all: every
                                                   supported kernel; reference: opaque op running
                                                   plain torch
strict         False | True                        raise on a near-miss instead of leaving it alone
mode           None | an Inductor mode             e.g. "max-autotune-no-cudagraphs" (``mode=`` and
                                                   ``options=`` cannot both be given to torch.compile)
inductor       {}                                  extra Inductor config patches
cudagraphs     "auto" | True | False               auto: replay fused CUDA decode steps through one
                                                   lean CUDA graph (cudagraph.py); not with
                                                   mode="reduce-overhead", which brings its own
=============  ==================================  =================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PATTERN_FAMILIES = ("attention", "ffn", "mla")
KERNEL_CHOICES = ("auto", "all", "reference")


@dataclass(frozen=True)
class Options:
    report: bool | str = False
    patterns: tuple[str, ...] = PATTERN_FAMILIES
    kernels: str = "auto"
    strict: bool = False
    mode: str | None = None
    inductor: dict[str, Any] = field(default_factory=dict)
    cudagraphs: bool | str = "auto"

    @classmethod
    def parse(cls, options: dict[str, Any] | None = None, mode: str | None = None) -> Options:
        opts = dict(options or {})
        unknown = set(opts) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"clusterfusion: unknown option(s) {sorted(unknown)}; "
                             f"known: {sorted(cls.__dataclass_fields__)}")
        if mode is not None:
            if opts.get("mode") not in (None, mode):
                raise ValueError(f"clusterfusion: mode given twice ({mode!r} and {opts['mode']!r})")
            opts["mode"] = mode
        patterns = opts.get("patterns", PATTERN_FAMILIES)
        if isinstance(patterns, str):
            patterns = (patterns,)
        patterns = tuple(patterns)
        bad = [p for p in patterns if p not in PATTERN_FAMILIES]
        if bad:
            raise ValueError(f"clusterfusion: unknown pattern family {bad}; choose from {PATTERN_FAMILIES}")
        opts["patterns"] = patterns
        if opts.get("kernels", "auto") not in KERNEL_CHOICES:
            raise ValueError(f"clusterfusion: kernels={opts['kernels']!r}; choose from {KERNEL_CHOICES}")
        if not isinstance(opts.get("report", False), (bool, str)):
            raise ValueError("clusterfusion: report must be True/False or a JSON file path")
        if not isinstance(opts.get("inductor", {}), dict):
            raise ValueError("clusterfusion: inductor must be a dict of Inductor config patches")
        if opts.get("cudagraphs", "auto") not in ("auto", True, False):
            raise ValueError(f"clusterfusion: cudagraphs={opts['cudagraphs']!r}; choose 'auto', True or False")
        return cls(**opts)
