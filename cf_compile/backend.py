"""``torch.compile(model, backend="clusterfusion")``: options -> rewrite -> Inductor.

Registered as a ``torch_dynamo_backends`` entry point (pyproject.toml), so the string works
without importing this package. Everything the pass does not fuse reaches Inductor's
``compile_fx`` untouched, with the Inductor mode the user asked for.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from cf_compile.cudagraph import LeanCUDAGraph, can_capture, static_input_positions
from cf_compile.fx.walk import is_mutating
from cf_compile.options import Options
from cf_compile.report import GraphReport, emit, new_graph_report
from cf_compile.rewrite import rewrite

log = logging.getLogger("cf_compile")


@dataclass
class FusedRegion:
    """A fused block, by node names of ``Compilation.original`` (names survive deepcopy)."""

    record: Any                 # BlockRecord
    block: str
    node_names: frozenset[str]
    output_name: str
    op_args: dict[str, Any]     # fx.Nodes replaced by NodeRef(name)


@dataclass(frozen=True)
class NodeRef:
    name: str


@dataclass
class Compilation:
    """What one backend call saw and did; kept for the accuracy tool and for debugging."""

    report: GraphReport
    options: Options
    original: fx.GraphModule | None = None   # the Dynamo graph before the rewrite (when kept)
    regions: list[FusedRegion] | None = None
    last_inputs: list[Any] | None = None     # inputs of the latest call, mutated ones cloned before it


_COMPILATIONS: list[Compilation] = []
_KEEP_ORIGINALS = False


def compilations() -> list[Compilation]:
    return list(_COMPILATIONS)


def keep_original_graphs(keep: bool) -> bool:
    """Ask the backend to keep each graph as it was before the rewrite (used by the accuracy tool);
    returns the previous setting so callers can restore it."""
    global _KEEP_ORIGINALS
    previous, _KEEP_ORIGINALS = _KEEP_ORIGINALS, keep
    return previous


def _by_name(value: Any) -> Any:
    return fx.node.map_arg(value, lambda n: NodeRef(n.name))


def _inductor_patches(options: Options) -> dict[str, Any]:
    patches: dict[str, Any] = {}
    if options.mode not in (None, "default"):
        from torch._inductor import list_mode_options

        patches.update(list_mode_options(options.mode))
    patches.update(options.inductor)
    return patches


def clusterfusion(gm: fx.GraphModule, example_inputs: Sequence[Any], **kwargs: Any) -> Callable:
    """The Dynamo backend. ``kwargs`` may hold ``mode`` and ``options`` (from torch.compile)."""
    options = Options.parse(kwargs.get("options"), mode=kwargs.get("mode"))
    report = new_graph_report()
    comp = Compilation(report=report, options=options)
    if _KEEP_ORIGINALS:
        comp.original = copy.deepcopy(gm)
    mutated = _mutated_inputs(gm)   # before the rewrite: the caches' index_copy_ calls are still visible
    matches = rewrite(gm, options, report)
    if _KEEP_ORIGINALS:
        comp.regions = [FusedRegion(record=rec, block=m.block, node_names=frozenset(n.name for n in m.nodes),
                                    output_name=m.output.name, op_args=_by_name(m.op_args)) for m, rec in matches]
    _COMPILATIONS.append(comp)
    if options.report:
        emit(report, options.report)
    log.info("clusterfusion graph %d: %s", report.graph, report.coverage())
    from torch._inductor.compile_fx import compile_fx

    compiled = compile_fx(gm, example_inputs, config_patches=_inductor_patches(options))
    if _use_cuda_graph(options, report, example_inputs):
        static = static_input_positions(example_inputs, mutated)
        compiled = LeanCUDAGraph(compiled, static, len(example_inputs))
        report.cuda_graph = True
    if not _KEEP_ORIGINALS:
        return compiled
    return _recording(compiled, comp, mutated)


def _use_cuda_graph(options: Options, report: GraphReport, example_inputs: Sequence[Any]) -> bool:
    """``cudagraphs="auto"``: decode graphs we fused on CUDA, unless Inductor already graphs them."""
    if options.cudagraphs is False or options.mode == "reduce-overhead":
        return False
    ok, why = can_capture(example_inputs)
    if not ok:
        if options.cudagraphs is True:
            log.warning("clusterfusion: no CUDA graph for graph %d: %s", report.graph, why)
        return False
    return options.cudagraphs is True or bool(report.fused())


def _mutated_inputs(gm: fx.GraphModule) -> set[int]:
    """Positions of graph inputs that an in-place call (``x.add_``) or a mutating op's schema writes."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    mutated: set[Any] = set()
    for n in gm.graph.nodes:
        if not is_mutating(n):
            continue
        schema = getattr(n.target, "_schema", None)
        if schema is None:          # in-place method or function: it writes its first operand
            mutated.update(n.args[:1])
            continue
        for i, a in enumerate(schema.arguments):
            if a.alias_info is not None and a.alias_info.is_write:
                mutated.add(n.args[i] if i < len(n.args) else n.kwargs.get(a.name))
    return {i for i, p in enumerate(placeholders) if p in mutated}


def _recording(compiled: Callable, comp: Compilation, mutated: set[int]) -> Callable:
    """Keep each call's inputs (graph inputs it mutates are cloned first) for the accuracy tool."""

    def record(args: Sequence[Any]) -> None:
        comp.last_inputs = [a.clone() if i in mutated and isinstance(a, torch.Tensor) else a
                            for i, a in enumerate(args)]

    def run(*args: Any) -> Any:
        record(args)
        return compiled(*args)

    return run


def register() -> None:
    """Register the string backend without relying on the entry point (a checkout on PYTHONPATH
    that was never pip-installed has none). Idempotent: a name already resolvable is left alone."""
    from torch._dynamo.backends.registry import _BACKENDS, _COMPILER_FNS, register_backend

    if "clusterfusion" in _COMPILER_FNS or _BACKENDS.get("clusterfusion") is not None:
        return    # registered, or torch is loading our entry point right now and registers it itself
    register_backend(name="clusterfusion")(clusterfusion)
