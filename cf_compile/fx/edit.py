"""Graph surgery: swap a proven region for one call, then drop what only the region used."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.fx as fx

from cf_compile.fx.walk import is_mutating


def _operand_nodes(value: Any) -> list[fx.Node]:
    out: list[fx.Node] = []
    fx.node.map_arg(value, out.append)
    return out


def replace_region(graph: fx.Graph, region: set[fx.Node], output: fx.Node, target: Callable,
                   kwargs: dict[str, Any]) -> fx.Node:
    """Insert ``target(**kwargs)`` right before ``output``, route ``output``'s users to it and erase
    the region. Inserting at the output keeps every operand defined before its use; the region's
    in-place cache writes move there too, which is safe because the patterns proved no node outside
    the region touches those caches."""
    with graph.inserting_before(output):
        new = graph.call_function(target, args=(), kwargs=kwargs)
    new.meta.update({k: v for k, v in output.meta.items() if k in ("example_value", "val", "nn_module_stack",
                                                                   "stack_trace", "source_fn_stack")})
    output.replace_all_uses_with(new)
    operands = set()
    for node in region:
        operands.update(_operand_nodes((node.args, node.kwargs)))
    order = {n: i for i, n in enumerate(graph.nodes)}
    for node in sorted(region, key=order.__getitem__, reverse=True):
        assert not node.users, f"region node {node.name} still has users {list(node.users)}"
        graph.erase_node(node)
    prune_dead(graph, operands - region)
    return new


def prune_dead(graph: fx.Graph, candidates: set[fx.Node]) -> None:
    """Erase pure nodes left without users (cos/sin unsqueezes of a fused layer, ...). In-place calls
    and placeholders are never erased: ``graph.eliminate_dead_code()`` would drop ``add_``/``index_copy_``."""
    work = list(candidates)
    while work:
        node = work.pop()
        if getattr(node, "_erased", False) or node.users or node.op in ("placeholder", "output", "get_attr"):
            continue
        if node.op not in ("call_function", "call_method") or is_mutating(node):
            continue
        operands = _operand_nodes((node.args, node.kwargs))
        graph.erase_node(node)
        work.extend(operands)
