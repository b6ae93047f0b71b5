"""Small, shared predicates over Dynamo (torch-level) FX graphs.

Dynamo records the same operation under several spellings (``operator.mul``, ``torch.mul``,
``Tensor.mul``); the patterns only ever ask "what does this node compute", so every spelling is
mapped to one canonical name here, once.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F

_FUNCTION_NAMES: dict[Any, str] = {
    operator.mul: "mul",
    operator.add: "add",
    operator.sub: "sub",
    operator.neg: "neg",
    operator.truediv: "div",
    operator.getitem: "getitem",
    torch.mul: "mul",
    torch.add: "add",
    torch.neg: "neg",
    torch.rsqrt: "rsqrt",
    torch.cat: "cat",
    torch.concat: "cat",
    torch.pow: "pow",
    torch.mean: "mean",
    torch.reshape: "reshape",
    torch.transpose: "transpose",
    torch.unsqueeze: "unsqueeze",
    torch.chunk: "chunk",
    torch.tanh: "tanh",
    torch.softmax: "softmax",
    F.softmax: "softmax",
    torch.matmul: "matmul",
    torch.addmm: "addmm",
    F.layer_norm: "layer_norm",
    torch.layer_norm: "layer_norm",
    F.relu: "relu",
    torch.relu: "relu",
    torch.sigmoid: "sigmoid",
    torch._C._nn.linear: "linear",
    F.linear: "linear",
    F.silu: "silu",
    torch.nn.functional.gelu: "gelu",
    torch._C._nn.gelu: "gelu",
    F.dropout: "dropout",
    F.scaled_dot_product_attention: "sdpa",
    torch._C._nn.scaled_dot_product_attention: "sdpa",
}
_METHOD_ALIASES = {"__mul__": "mul", "__add__": "add", "__neg__": "neg", "concat": "cat"}


def op_name(node: fx.Node) -> str | None:
    """Canonical name of what ``node`` computes, or None for placeholders/outputs/unknown calls."""
    if node.op == "call_function":
        return _FUNCTION_NAMES.get(node.target)
    if node.op == "call_method":
        return _METHOD_ALIASES.get(node.target, node.target)
    return None


def is_op(node: Any, *names: str) -> bool:
    return isinstance(node, fx.Node) and op_name(node) in names


def arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    """Positional-or-keyword argument of a call node."""
    if index < len(node.args):
        return node.args[index]
    return node.kwargs.get(name, default)


def val(node: Any) -> Any:
    """The example value Dynamo recorded for a node (a fake tensor, SymInt, ...), or the constant."""
    if isinstance(node, fx.Node):
        return node.meta.get("example_value", node.meta.get("val"))
    return node


def shape(node: Any) -> tuple[int, ...] | None:
    v = val(node)
    if isinstance(v, torch.Tensor):
        return tuple(v.shape)
    return None


def dtype(node: Any) -> torch.dtype | None:
    v = val(node)
    return v.dtype if isinstance(v, torch.Tensor) else None


def is_input(node: Any) -> bool:
    """A graph input (parameters and buffers are graph inputs in Dynamo graphs)."""
    return isinstance(node, fx.Node) and node.op in ("placeholder", "get_attr")


def is_mutating(node: fx.Node) -> bool:
    """In-place calls (``add_``, ``index_copy_``) and custom ops that declare mutation."""
    if node.op == "call_method" and isinstance(node.target, str):
        return node.target.endswith("_") and not node.target.endswith("__")
    if node.op == "call_function":
        schema = getattr(node.target, "_schema", None)
        if schema is not None and schema.is_mutable:
            return True
        name = getattr(node.target, "__name__", "")
        return name.endswith("_") and not name.endswith("__")
    return False


def binary_operands(node: fx.Node) -> tuple[Any, Any]:
    return node.args[0], node.args[1]


def other_operand(node: fx.Node, known: Any) -> Any:
    a, b = binary_operands(node)
    return b if a is known else a


def const_float(x: Any) -> float | None:
    if isinstance(x, bool):
        return None
    if isinstance(x, (int, float)):
        return float(x)
    return None


def users_outside(nodes: Iterable[fx.Node], region: set[fx.Node]) -> list[fx.Node]:
    """Users of ``nodes`` that are not part of ``region``."""
    out = []
    for n in nodes:
        out.extend(u for u in n.users if u not in region)
    return out


def module_path(node: fx.Node) -> str:
    """The innermost HF module a node came from ("model.layers.3.self_attn"); for reports only."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return str(path).replace("L['self'].", "").replace("L__self___", "")
