"""A lean CUDA-graph runner for compiled decode steps.

Why not ``mode="reduce-overhead"``: CUDA-graph trees re-check hundreds of static inputs and manage
pools per call, 0.7-1.8 ms of host work per decode step on HF models (shared/notes/anchors.md), more
than fusion wins. A decode step's inputs are of two kinds:

* static: parameters, buffers and the tensors the step mutates (KV caches, cache counters). Their
  addresses are baked into the graph; a change of address, shape or dtype means re-capture (the
  graph would otherwise read stale memory).
* per-step: token ids, positions, masks. They are copied into the graph's own input buffers.

Per call the host work is, in the steady state, one ``data_ptr`` comparison per static input against the
previous call (in C++ where torch has ``_tensors_data_ptrs_at_indices_equal``, as CUDA-graph trees use; a
Python map otherwise), a copy per per-step input and one ``replay``.
Shapes, dtypes and strides of every input are Dynamo's guards: a call that reaches this runner has the
shapes it was compiled for, so only addresses can move (a new cache from generate(), parameters moved by
``load_state_dict(assign=True)``); any change of object or address falls back to the full layout check.
The first call of a layout runs the compiled step directly (it warms up lazy initialisation: kernel
compiles, scratch buffers, cuBLAS handles) and the second one captures.

Outputs are copied out of the graph's buffers (a few microseconds for the logits), so results kept
across steps stay valid. Limits (README): at most ``MAX_LAYOUTS`` layouts are kept per compiled
graph (oldest dropped); capture requires every tensor input on one CUDA device.
"""

from __future__ import annotations

import logging
import operator
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils._pytree import tree_map

log = logging.getLogger("cf_compile")

MAX_LAYOUTS = 4
_CAPTURES = 0


def captures() -> int:
    """CUDA graphs captured by every runner of this process (tests check re-capture with it)."""
    return _CAPTURES


class _Captured:
    def __init__(self, graph: torch.cuda.CUDAGraph, inputs: list[Any], outputs: Any):
        self.graph, self.inputs, self.outputs = graph, inputs, outputs


class LeanCUDAGraph:
    """Wrap ``fn(*inputs)``; ``static`` holds the input positions whose addresses the graph may keep."""

    def __init__(self, fn: Callable, static: set[int], num_inputs: int):
        self.fn = fn
        self.static = sorted(static)
        self.copied = [i for i in range(num_inputs) if i not in static]
        self.layouts: OrderedDict[tuple, _Captured | None] = OrderedDict()
        self.pool = torch.cuda.graph_pool_handle()
        self.warmed: set[tuple] = set()
        # the previous call's static-input addresses and the graph it replayed: the steady-state decode loop
        # passes the same tensors every step. The graph reads addresses, and Dynamo's guards fixed shapes,
        # dtypes and strides, so equal addresses are all a replay needs (no reference to an input is kept).
        self.last_ptrs: list[int] = []
        self.last_ptrs_at: list[int | None] = [None] * num_inputs  # the same, at the inputs' positions
        self.last: _Captured | None = None
        # torch's C++ check of data pointers at given positions (CUDA builds; the per-tensor Python
        # ``data_ptr`` calls of a ~350-input decode step cost ~250 us of host time on the H100 machine)
        self._ptrs_equal: Callable[[list, list, list], bool] | None = getattr(
            torch._C, "_tensors_data_ptrs_at_indices_equal", None)
        # the static inputs as a tuple in one C call (itemgetter of a single index returns the bare item)
        self._pick_static = (operator.itemgetter(*self.static) if len(self.static) > 1
                             else lambda args: tuple(args[i] for i in self.static))

    def _layout(self, args: Sequence[Any], static_ptrs: list[int]) -> tuple[tuple, tuple]:
        """(addresses of the static inputs -- ``static_ptrs``, from _static_ptrs --, every input's
        shape/dtype/stride or value): a graph is valid for one layout; the second part alone is what a
        warm-up depends on."""
        shapes = [(args[i].shape, args[i].dtype) for i in self.static]
        for i in self.copied:
            a = args[i]
            shapes.append((a.shape, a.dtype, a.stride()) if isinstance(a, torch.Tensor) else a)
        return tuple(static_ptrs), tuple(shapes)

    def _static_ptrs(self, args: Sequence[Any]) -> list[int]:
        """Addresses of the static inputs (all tensors): a C-level map, no per-input Python bytecode."""
        return list(map(torch.Tensor.data_ptr, self._pick_static(args)))

    def _unmoved(self, args: Sequence[Any]) -> bool:
        """Every static input is where the last replayed graph reads it (the steady state's only check)."""
        if self._ptrs_equal is not None:
            return self._ptrs_equal(list(args), self.last_ptrs_at, self.static)
        return self._static_ptrs(args) == self.last_ptrs

    def __call__(self, *args: Any) -> Any:
        if self.last is not None and self._unmoved(args):
            return self._replay(self.last, args)
        ptrs = self._static_ptrs(args)
        key = self._layout(args, ptrs)
        if key not in self.layouts:
            self.layouts[key] = None
            while len(self.layouts) > MAX_LAYOUTS:
                self.layouts.popitem(last=False)
            shapes = key[1]
            if shapes not in self.warmed:
                # first sight of these shapes: run for real (warm-up: kernel compiles, scratch, cuBLAS
                # handles), capture next time. A new cache of known shapes (generate() re-allocates
                # HF's internal static cache on every call) needs no warm-up: capture at once.
                self.warmed.add(shapes)
                return self.fn(*args)
        captured = self.layouts[key]
        if captured is None:
            captured = self.layouts[key] = self._capture(args)
        self.layouts.move_to_end(key)
        self.last, self.last_ptrs = captured, ptrs
        for i, ptr in zip(self.static, ptrs, strict=True):
            self.last_ptrs_at[i] = ptr
        return self._replay(captured, args)

    def _replay(self, captured: _Captured, args: Sequence[Any]) -> Any:
        for i in self.copied:
            dst = captured.inputs[i]
            if isinstance(dst, torch.Tensor):
                dst.copy_(args[i])
        captured.graph.replay()
        # hand out copies: a caller that keeps a step's logits (generate(output_scores=True)) must not
        # see them overwritten by the next replay; a [B, 1, vocab] copy costs microseconds
        return tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, captured.outputs)

    def _capture(self, args: Sequence[Any]) -> _Captured:
        inputs = list(args)
        for i in self.copied:
            if isinstance(args[i], torch.Tensor):
                inputs[i] = args[i].clone()
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize()
        with torch.cuda.graph(graph, pool=self.pool):
            outputs = self.fn(*inputs)
        global _CAPTURES
        _CAPTURES += 1
        log.info("clusterfusion: captured decode step CUDA graph #%d of this process", _CAPTURES)
        return _Captured(graph, inputs, outputs)


def static_input_positions(example_inputs: Sequence[Any], mutated: set[int]) -> set[int]:
    """Parameters and mutated inputs keep their addresses; buffers that are not parameters are
    recognised as tensors Dynamo marked static (``_dynamo_static_input_type``) when available."""
    static = set(mutated)
    for i, t in enumerate(example_inputs):
        if isinstance(t, torch.nn.Parameter) or getattr(t, "_dynamo_static_input_type", None) is not None:
            static.add(i)
    return {i for i in static if isinstance(example_inputs[i], torch.Tensor)}  # an address to keep


def can_capture(example_inputs: Sequence[Any]) -> tuple[bool, str]:
    """Only all-CUDA steps on one device, with concrete shapes."""
    devices = {t.device for t in example_inputs if isinstance(t, torch.Tensor)}
    if not devices or any(d.type != "cuda" for d in devices):
        return False, "not every input is on CUDA"
    if len(devices) > 1:
        return False, "inputs on several devices"
    if any(isinstance(a, torch.SymInt) for a in example_inputs):
        return False, "symbolic shapes"
    return True, ""
