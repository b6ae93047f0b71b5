"""What a block pattern returns: a proven match (operands of the fused op) or a near-miss."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx

from cf_compile.fx.idioms import NoMatch, is_dropout_noop, is_layout, replay, require
from cf_compile.fx.walk import dtype, is_op, shape

MAX_DECODE_BATCH = 16


@dataclass
class BlockMatch:
    """A region proven equivalent to one fused op call with ``op_args``."""

    block: str                      # "attention" | "ffn"
    anchor: fx.Node                 # SDPA / down projection: orders and names the block
    output: fx.Node                 # the node whose value the fused op produces
    nodes: set[fx.Node]             # every node the op replaces (erased after the rewrite)
    op_args: dict[str, Any]         # keyword arguments of the op (fx.Nodes or constants)
    shapes: dict[str, int]
    dtype: torch.dtype
    batch: int
    features: dict[str, Any] = field(default_factory=dict)   # bias, fused weights, norm kind, ...


@dataclass
class NearMiss:
    block: str
    anchor: fx.Node
    reason: str
    status: str = "near-miss"       # or "skipped" (not a decode graph: left alone by design)
    shapes: dict[str, int] = field(default_factory=dict)
    dtype: torch.dtype | None = None
    batch: int | None = None


def check_decode_shape(block: str, anchor: fx.Node, x_shape: tuple | None) -> NearMiss | None:
    """Only [B, 1, ...] activations with 1 <= B <= 16 are decode steps we rewrite."""
    if x_shape is None or len(x_shape) < 2:
        return NearMiss(block, anchor, "unknown activation shape")
    b, q_len = x_shape[0], x_shape[1]
    if not isinstance(q_len, int) or not isinstance(b, int):
        return NearMiss(block, anchor, f"symbolic batch/query length {tuple(x_shape[:2])}", status="skipped")
    if q_len != 1:
        return NearMiss(block, anchor, f"prefill-shaped graph (query length {q_len}); only decode steps are fused",
                        status="skipped", batch=b)
    if not 1 <= b <= MAX_DECODE_BATCH:
        return NearMiss(block, anchor, f"batch {b} outside 1..{MAX_DECODE_BATCH}", batch=b)
    return None


def check_region_closed(region: set[fx.Node], output: fx.Node, what: str) -> None:
    """Every value computed inside the region, but the output, must be used only inside it."""
    for n in region:
        if n is output:
            continue
        outside = [u for u in n.users if u not in region]
        if outside:
            raise NoMatch(f"{what}: intermediate '{n.name}' is also used outside the block by '{outside[0].name}'")


def layout_chain_back(node: fx.Node) -> tuple[fx.Node, list[fx.Node]]:
    """Walk back through pure layout ops; return (first non-layout node, chain in forward order)."""
    chain = []
    while is_layout(node):
        chain.append(node)
        node = node.args[0]
    return node, chain[::-1]


def verify_layout(chain: list[fx.Node], start: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """Prove a chain of view/reshape/transpose ops is the expected index permutation by replaying it
    on an index tensor (exact: layout ops only move elements)."""
    t = start
    for n in chain:
        t = replay(n, t)
    require(tuple(t.shape) == tuple(expected.shape) and torch.equal(t, expected),
            f"{what}: layout {tuple(start.shape)} -> {tuple(t.shape)} is not the head split/merge HF uses")


def int_shape(node: fx.Node, what: str) -> tuple[int, ...]:
    s = shape(node)
    require(s is not None and all(isinstance(d, int) for d in s), f"{what}: symbolic or unknown shape {s}")
    return s


def only_user(node: fx.Node) -> fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def residual_tail(o_node: fx.Node, x: fx.Node) -> tuple[fx.Node, list[fx.Node]]:
    """Extend a block over ``dropout(p=0)`` and ``x + o`` when o is used only there.

    Returns (the block's output node, the extra nodes it covers)."""
    tail, n = [], o_node
    while only_user(n) is not None and is_dropout_noop(only_user(n)):
        n = only_user(n)
        tail.append(n)
    add = only_user(n)
    if add is not None and is_op(add, "add") and len(add.args) == 2 and not add.kwargs and set(add.args) == {n, x} \
            and shape(add) == shape(x) and dtype(add) == dtype(x):
        return add, tail + [add]
    return (tail[-1], tail) if tail else (o_node, tail)


__all__ = ["BlockMatch", "NearMiss", "NoMatch", "check_decode_shape", "check_region_closed",
           "layout_chain_back", "verify_layout", "int_shape", "MAX_DECODE_BATCH", "only_user", "residual_tail"]
