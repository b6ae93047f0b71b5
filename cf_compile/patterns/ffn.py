"""The gated FFN of a HF decoder layer, found from its down projection by walking the dataflow.

Anchor: ``down_proj(a * b)``. One factor is ``act(gate)`` (SiLU, GELU-tanh or exact GELU), the other
``up``; gate and up are two linears of one RMSNorm(x), or the two halves (``chunk(2, -1)``) of one
fused gate_up linear (Phi-3). The block extends over ``x + down`` when that is the only use.
"""

from __future__ import annotations

import torch.fx as fx

from cf_compile.fx.idioms import NoMatch, cast_dtype, match_linear, match_rmsnorm, require
from cf_compile.fx.walk import arg, dtype, is_input, is_op, op_name, shape
from cf_compile.patterns.common import (
    BlockMatch,
    NearMiss,
    check_decode_shape,
    check_region_closed,
    int_shape,
    residual_tail,
)

BLOCK = "ffn"
_ACTIVATION_OPS = ("silu", "gelu")
# what a down projection's input can be made of (elementwise); anything else is not an FFN candidate
_DOWN_INPUT_OPS = ("mul", "div", "tanh", "silu", "gelu", "relu", "sigmoid")


def _norm_output_like(x: fx.Node) -> bool:
    """``weight * h`` (a parameter operand) or ``.type_as``: what feeds q/k/v/gate/up/lm_head."""
    if is_op(x, "mul"):
        return any(isinstance(a, fx.Node) and is_input(a) for a in x.args[:2])
    return cast_dtype(x) is not None


def anchors(graph: fx.Graph) -> list[fx.Node]:
    """Linears fed by computed elementwise values: down projections (gated or not). Projections fed by
    a norm (q/k/v/gate/up/lm_head) or by a head merge (o_proj) are not candidates."""
    out = []
    for n in graph.nodes:
        if not is_op(n, "linear") or not isinstance(n.args[0], fx.Node):
            continue
        x = n.args[0]
        if not is_op(x, *_DOWN_INPUT_OPS) or _norm_output_like(x):
            continue
        out.append(n)
    return out


def _activation_kind(node: fx.Node) -> str:
    if is_op(node, "silu"):
        require(not arg(node, 1, "inplace", False), "in-place SiLU")
        return "silu"
    approx = arg(node, 1, "approximate", "none")
    require(approx in ("none", "tanh"), f"GELU approximation {approx!r}")
    return "gelu_tanh" if approx == "tanh" else "gelu"


def _describe(node: fx.Node, depth: int = 2) -> str:
    """``tanh(mul(...)) * 30.0``-style summary of an expression, for near-miss reasons."""
    name = op_name(node) or node.op
    if depth == 0:
        return f"{name}(...)"
    parts = [_describe(a, depth - 1) if isinstance(a, fx.Node) else repr(a) for a in node.args[:2]]
    return f"{name}({', '.join(parts)})"


def _chunk_half(node: fx.Node) -> tuple[fx.Node, int] | None:
    """``linear(...).chunk(2, dim=-1)[i]`` -> (linear, i)."""
    if not is_op(node, "getitem") or not is_op(node.args[0], "chunk"):
        return None
    ch = node.args[0]
    chunks, dim = arg(ch, 1, "chunks"), arg(ch, 2, "dim", 0)
    rank = len(shape(ch.args[0]) or ())
    if chunks != 2 or dim not in (-1, rank - 1):
        return None
    return ch.args[0], node.args[1]


def match(down_node: fx.Node) -> BlockMatch | NearMiss | None:
    x_like = down_node.args[0]
    if is_op(x_like, *_ACTIVATION_OPS):
        return NearMiss(BLOCK, down_node, "ungated MLP (act(fc(x)) -> proj); only gated FFNs are fused",
                        dtype=dtype(down_node))
    s = shape(down_node)
    miss = check_decode_shape(BLOCK, down_node, s[:2] if s else None)
    if miss is not None:
        return miss
    try:
        return _match(down_node)
    except NoMatch as e:
        return NearMiss(BLOCK, down_node, str(e), batch=s[0], dtype=dtype(down_node))


def _match(down_node: fx.Node) -> BlockMatch:
    down = match_linear(down_node, "down_proj")
    prod = down.input
    require(is_op(prod, "mul") and len(prod.args) == 2 and not prod.kwargs,
            f"down_proj input is {_describe(prod)}, not act(gate) * up")
    a, b = prod.args[0], prod.args[1]
    require(isinstance(a, fx.Node) and isinstance(b, fx.Node),
            f"down_proj input is {_describe(prod)}, not act(gate) * up")
    act_node = a if is_op(a, *_ACTIVATION_OPS) else b if is_op(b, *_ACTIVATION_OPS) else None
    require(act_node is not None, f"down_proj input is {_describe(prod)}, not act(gate) * up")
    up_node = b if act_node is a else a
    act = _activation_kind(act_node)
    gate_node = act_node.args[0]
    region = {down_node, prod, act_node}

    gate_half, up_half = _chunk_half(gate_node), _chunk_half(up_node)
    if gate_half or up_half:
        require(gate_half is not None and up_half is not None and gate_half[0] is up_half[0],
                "gate and up are not the two halves of one projection")
        require((gate_half[1], up_half[1]) == (0, 1), "fused gate_up is not ordered [gate | up]")
        lin = match_linear(gate_half[0], "gate_up_proj")
        weights, biases = [lin.weight], [lin.bias]
        region |= {gate_node, up_node, gate_node.args[0], lin.node}
        normed = lin.input
        intermediate = shape(lin.weight)[0] // 2
        fused = True
    else:
        gate, up = match_linear(gate_node, "gate_proj"), match_linear(up_node, "up_proj")
        require(gate.input is up.input, "gate and up project different inputs")
        require(shape(gate.weight) == shape(up.weight), "gate and up weights differ in shape")
        weights, biases = [gate.weight, up.weight], [gate.bias, up.bias]
        region |= {gate.node, up.node}
        normed = gate.input
        intermediate = shape(gate.weight)[0]
        fused = False
    norm = match_rmsnorm(normed)
    region |= set(norm.nodes)
    x = norm.x
    x_shape = int_shape(x, "ffn input")
    require(len(x_shape) == 3 and x_shape[1] == 1, f"ffn input is {x_shape}, not [B, 1, hidden]")
    require(shape(down.weight) == (x_shape[-1], intermediate), "down_proj does not map intermediate -> hidden")
    output, tail = residual_tail(down_node, x)
    region |= set(tail)
    check_region_closed(region, output, "ffn")
    op_args = dict(
        x=x, norm_weight=norm.weight, norm_eps=norm.eps, norm_kind=norm.kind,
        gate_up_weights=weights, gate_up_biases=biases, down_weight=down.weight, down_bias=down.bias,
        act=act, add_residual=is_op(output, "add"),
    )
    return BlockMatch(
        block=BLOCK, anchor=down_node, output=output, nodes=region, op_args=op_args,
        shapes=dict(hidden=x_shape[-1], intermediate=intermediate), dtype=dtype(x), batch=x_shape[0],
        features=dict(activation=act, fused_gate_up=fused, bias=any(b is not None for b in biases + [down.bias]),
                      norm=norm.kind, residual=op_args["add_residual"]),
    )
