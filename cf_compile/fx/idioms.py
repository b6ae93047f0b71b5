"""Recognisers for the idioms Hugging Face decoder layers are made of.

Each recogniser takes the node that *produces* an idiom's result, walks its dataflow backwards and
either returns what it proved (operands, constants, the nodes it covers) or raises :class:`NoMatch`
with the condition that failed. The block patterns in ``cf_compile/patterns`` compose these; a
``NoMatch`` reason ends up verbatim in the match report.

Idioms and where they come from (transformers 5.17-5.23):
  * RMSNorm, "weight" kind: LlamaRMSNorm (also Mistral, Qwen2/3, Phi-3, Qwen3's q/k norms):
    ``w * (x.float() * rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)``
  * RMSNorm, "unit_offset" kind: GemmaRMSNorm: ``(norm(x.float()) * (1.0 + w.float())).type_as(x)``
  * NeoX RoPE: ``q * cos + rotate_half(q) * sin`` with ``rotate_half = cat(-q[..., D/2:], q[..., :D/2])``;
    Phi-3 wraps it as ``cat([rope(q[..., :rot]), q[..., rot:]])`` (full rotary: an empty pass part).
  * repeat_kv: ``kv[:, :, None].expand(B, KVH, G, L, D).reshape(B, KVH * G, L, D)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx

from cf_compile.fx.walk import arg, const_float, dtype, is_input, is_op, op_name, other_operand, shape, val


class NoMatch(Exception):
    """A condition of an idiom did not hold; ``str(exc)`` is the reason shown in the report."""


def require(cond: bool, reason: str) -> None:
    if not cond:
        raise NoMatch(reason)


# --- casts -----------------------------------------------------------------------------------------

_CAST_METHODS = {"float": torch.float32, "half": torch.float16, "bfloat16": torch.bfloat16}


def cast_dtype(node: Any) -> torch.dtype | None:
    """The dtype a pure dtype cast converts to (``.to(dtype)``, ``.float()``, ``.type_as(t)``), else None."""
    if not isinstance(node, fx.Node) or node.op != "call_method":
        return None
    if node.target in _CAST_METHODS and len(node.args) == 1 and not node.kwargs:
        return _CAST_METHODS[node.target]
    if node.target == "type_as":
        return dtype(node.args[1])
    if node.target == "to":
        rest = list(node.args[1:]) + [v for k, v in node.kwargs.items() if k == "dtype"]
        extra = {k for k in node.kwargs if k not in ("dtype", "device", "copy", "non_blocking")}
        dtypes = [a for a in rest if isinstance(a, torch.dtype)]
        if extra or not dtypes:
            return None
        if any(not isinstance(a, (torch.dtype, torch.device, str)) for a in rest):
            return None
        return dtypes[0]
    return None


def strip_casts(node: Any, covered: list[fx.Node]) -> Any:
    while cast_dtype(node) is not None:
        covered.append(node)
        node = node.args[0]
    return node


# --- RMSNorm ---------------------------------------------------------------------------------------


@dataclass
class RMSNorm:
    x: fx.Node                # the normalised input, in the model dtype
    weight: fx.Node
    eps: float
    kind: str                 # "weight" | "unit_offset"
    out_dtype: torch.dtype
    nodes: list[fx.Node] = field(default_factory=list)


def _rms_core(node: Any, covered: list[fx.Node]) -> tuple[fx.Node, float]:
    """``h * rsqrt(mean(h^2, -1, keepdim) + eps)`` -> (h, eps); h must be fp32."""
    require(is_op(node, "mul"), "norm: expected x * rsqrt(...)")
    a, b = node.args[0], node.args[1]
    rs, h = (b, a) if is_op(b, "rsqrt") else (a, b)
    require(is_op(rs, "rsqrt"), "norm: no rsqrt (not an RMSNorm)")
    add = rs.args[0]
    require(is_op(add, "add"), "norm: rsqrt input is not mean + eps")
    mean = add.args[0] if is_op(add.args[0], "mean") else add.args[1]
    eps = const_float(other_operand(add, mean))
    require(is_op(mean, "mean") and eps is not None, "norm: rsqrt input is not mean(x^2) + constant eps")
    dims = arg(mean, 1, "dim")
    keep = arg(mean, 2, "keepdim", False)
    h_shape = shape(h)
    require(h_shape is not None, "norm: unknown input shape")
    last = len(h_shape) - 1
    dims = dims if isinstance(dims, (list, tuple)) else [dims]
    require(keep is True and len(dims) == 1 and dims[0] in (-1, last), "norm: mean is not over the last dim with keepdim")
    pw = mean.args[0]
    require(is_op(pw, "pow") and pw.args[0] is h and const_float(pw.args[1]) == 2.0,
            "norm: mean input is not the square of the normalised tensor")
    require(dtype(h) == torch.float32, f"norm: statistics computed in {dtype(h)}, not fp32")
    covered.extend([node, rs, add, mean, pw])
    return h, eps


def match_rmsnorm(out: Any) -> RMSNorm:
    """Recognise an RMSNorm whose result is ``out`` (either kind), or raise NoMatch."""
    require(isinstance(out, fx.Node), "norm: not a graph value")
    require(not is_op(out, "layer_norm"), "norm: LayerNorm (mean-centred), not RMSNorm")
    covered: list[fx.Node] = []
    if cast_dtype(out) is not None and out.target == "type_as":
        # Gemma: (core * (1 + w.float())).type_as(x)
        covered.append(out)
        prod = out.args[0]
        require(is_op(prod, "mul"), "norm: type_as input is not a product")
        a, b = prod.args
        offset = a if is_op(a, "add") else b
        core = other_operand(prod, offset)
        require(is_op(offset, "add"), "norm: no (1 + weight) factor")
        one = [x for x in offset.args if const_float(x) is not None]
        wcast = [x for x in offset.args if isinstance(x, fx.Node)]
        require(len(one) == 1 and one[0] == 1.0 and len(wcast) == 1, "norm: offset factor is not (1 + weight)")
        w = strip_casts(wcast[0], covered)
        require(is_input(w) and shape(w) is not None and len(shape(w)) == 1, "norm: weight is not a 1-D parameter")
        covered.extend([prod, offset])
        h, eps = _rms_core(core, covered)
        x = strip_casts(h, covered)
        require(dtype(out) == dtype(x), "norm: output dtype differs from input dtype")
        return RMSNorm(x=x, weight=w, eps=eps, kind="unit_offset", out_dtype=dtype(out), nodes=covered)
    # Llama: w * core.to(x.dtype)
    require(is_op(out, "mul"), "norm: not weight * normalised(x)")
    a, b = out.args
    w = a if is_input(a) else b
    casted = other_operand(out, w)
    require(is_input(w) and shape(w) is not None and len(shape(w)) == 1, "norm: weight is not a 1-D parameter")
    covered.append(out)
    core = strip_casts(casted, covered)
    h, eps = _rms_core(core, covered)
    x = strip_casts(h, covered)
    require(x is not h or dtype(x) == torch.float32, "norm: statistics are not computed in fp32")
    require(dtype(casted) == dtype(x), f"norm: normalised value cast to {dtype(casted)}, not the input dtype {dtype(x)}")
    return RMSNorm(x=x, weight=w, eps=eps, kind="weight", out_dtype=dtype(out), nodes=covered)


# --- linear ----------------------------------------------------------------------------------------


@dataclass
class Linear:
    node: fx.Node
    input: fx.Node
    weight: fx.Node
    bias: fx.Node | None


def match_linear(node: Any, what: str) -> Linear:
    require(is_op(node, "linear"), f"{what}: not a linear projection")
    x, w = node.args[0], node.args[1]
    b = arg(node, 2, "bias")
    require(is_input(w) and len(shape(w) or ()) == 2, f"{what}: weight is not a 2-D parameter")
    require(b is None or (is_input(b) and len(shape(b) or ()) == 1), f"{what}: bias is not a 1-D parameter")
    return Linear(node=node, input=x, weight=w, bias=b)


# --- layout chains ---------------------------------------------------------------------------------

_LAYOUT_METHODS = {"view", "reshape", "transpose", "permute", "contiguous", "unsqueeze", "squeeze", "flatten"}


def is_layout(node: Any) -> bool:
    return isinstance(node, fx.Node) and op_name(node) in _LAYOUT_METHODS


def _concrete(x: Any) -> Any:
    if isinstance(x, fx.Node):
        x = val(x)
    if isinstance(x, torch.SymInt):
        return x.node.hint
    if isinstance(x, (list, tuple)):
        return type(x)(_concrete(v) for v in x)
    return x


def replay(node: fx.Node, x: torch.Tensor) -> torch.Tensor:
    """Apply the layout op ``node`` to a real tensor (its first operand replaced by ``x``)."""
    args = [_concrete(a) for a in node.args[1:]]
    kwargs = {k: _concrete(v) for k, v in node.kwargs.items()}
    if node.op == "call_method":
        return getattr(x, node.target)(*args, **kwargs)
    return node.target(x, *args, **kwargs)


def is_dropout_noop(node: Any) -> bool:
    if not is_op(node, "dropout"):
        return False
    p = arg(node, 1, "p", 0.5)
    training = arg(node, 2, "training", True)
    return p == 0.0 or training is False


def is_full_slice(node: Any) -> bool:
    """``t[..., :n]`` (or a getitem of only full slices) that keeps the whole tensor."""
    if not is_op(node, "getitem") or not isinstance(node.args[0], fx.Node):
        return False
    idx = node.args[1]
    if not isinstance(idx, tuple) or any(not (i is Ellipsis or isinstance(i, slice)) for i in idx):
        return False
    if any(isinstance(i, slice) and i.step not in (None, 1) for i in idx):
        return False
    if any(isinstance(i, slice) and i.start not in (None, 0) for i in idx):
        return False
    return shape(node) == shape(node.args[0])


# --- NeoX RoPE -------------------------------------------------------------------------------------


@dataclass
class Rope:
    src: fx.Node          # [B, heads, 1, D] before rotation
    cos: fx.Node
    sin: fx.Node
    nodes: list[fx.Node] = field(default_factory=list)


def _slice_of(node: Any, src: fx.Node | None, start: int | None, stop: int | None) -> bool:
    if not is_op(node, "getitem") or (src is not None and node.args[0] is not src):
        return False
    idx = node.args[1]
    if not (isinstance(idx, tuple) and len(idx) == 2 and idx[0] is Ellipsis and isinstance(idx[1], slice)):
        return False
    s = idx[1]
    return (s.start in ((None, 0) if start in (None, 0) else (start,))) and s.stop == stop and s.step in (None, 1)


def match_rope(out: Any, what: str) -> Rope:
    """Recognise NeoX (rotate_half) RoPE producing ``out``; raise NoMatch for other forms."""
    covered: list[fx.Node] = []
    node = out
    # Phi-3 style partial-rotary wrapper: cat([rope(q[..., :R]), q[..., R:]], -1)
    if is_op(node, "cat"):
        parts = node.args[0]
        dim = arg(node, 1, "dim", 0)
        out_shape = shape(node)
        require(out_shape is not None and dim in (-1, len(out_shape) - 1), f"{what}: rope output is a cat over a non-last dim")
        empty = [p for p in parts if (shape(p) or (1,))[-1] == 0]
        full = [p for p in parts if (shape(p) or (1,))[-1] != 0]
        require(len(full) == 1, f"{what}: partial rotary (only part of head_dim is rotated)")
        covered.append(node)
        covered.extend(empty)
        node = full[0]
    if not is_op(node, "add"):
        base = node
        while is_layout(base) or is_op(base, "getitem", "split", "chunk"):
            base = base.args[0]
        require(not is_op(base, "linear", "addmm", "matmul"), f"{what}: no rotary embedding (absolute or no positions)")
        raise NoMatch(f"{what}: not q*cos + rotate_half(q)*sin (not NeoX RoPE)")
    m1, m2 = node.args
    require(is_op(m1, "mul") and is_op(m2, "mul"), f"{what}: RoPE terms are not products")

    def rotated(term: fx.Node) -> tuple[fx.Node, fx.Node] | None:
        for cand in term.args:
            if is_op(cand, "cat"):
                return cand, other_operand(term, cand)
        return None

    r1, r2 = rotated(m1), rotated(m2)
    require((r1 is None) != (r2 is None), f"{what}: no single rotate_half term (interleaved or other RoPE form)")
    rot_term, plain_term = (m1, m2) if r1 else (m2, m1)
    cat, sin = r1 or r2
    parts = cat.args[0]
    require(isinstance(parts, (list, tuple)) and len(parts) == 2 and is_op(parts[1], "getitem"),
            f"{what}: rotate_half is not cat(-x2, x1)")
    src = parts[1].args[0]
    require(src in plain_term.args, f"{what}: the cos term and rotate_half read different tensors")
    cos = other_operand(plain_term, src)
    # peel full-width slices (Phi-3's q_rot = q[..., :D])
    base = src
    while is_full_slice(base):
        covered.append(base)
        base = base.args[0]
    src_shape = shape(base)
    require(src_shape is not None and len(src_shape) == 4, f"{what}: RoPE input is not [B, heads, q_len, D]")
    d = src_shape[-1]
    half = d // 2
    require(d % 2 == 0, f"{what}: odd head_dim")
    cdim = arg(cat, 1, "dim", 0)
    require(len(parts) == 2 and cdim in (-1, 3), f"{what}: rotate_half is not a 2-way cat on the last dim")
    neg, x1 = parts
    require(is_op(neg, "neg"), f"{what}: rotate_half does not negate the second half first")
    x2 = neg.args[0]
    require(_slice_of(x1, src, 0, half) and _slice_of(x2, src, half, None),
            f"{what}: rotate_half halves are not src[..., :D/2] and src[..., D/2:] of the same tensor")
    for t, name in ((cos, "cos"), (sin, "sin")):
        ts = shape(t)
        require(ts is not None and len(ts) == 4 and ts[-1] == d and ts[1] == 1 and ts[2] == 1,
                f"{what}: {name} is not [B, 1, 1, head_dim] (partial rotary or per-head tables)")
    covered.extend([node, m1, m2, cat, neg, x1, x2])
    return Rope(src=base, cos=cos, sin=sin, nodes=covered)


# --- repeat_kv -------------------------------------------------------------------------------------


def match_repeat_kv(node: Any) -> tuple[fx.Node, int, list[fx.Node]]:
    """``cache[:, :, None].expand(..).reshape(..)`` -> (cache, groups, nodes); a bare cache is groups=1."""
    if is_input(node):
        return node, 1, []
    require(is_op(node, "reshape", "view"), "repeat_kv: key/value is neither the cache nor repeat_kv(cache)")
    ex = node.args[0]
    require(is_op(ex, "expand"), "repeat_kv: no expand")
    gi = ex.args[0]
    full = slice(None, None, None)
    require(is_op(gi, "getitem") and gi.args[1] == (full, full, None, full, full),
            "repeat_kv: not cache[:, :, None, :, :]")
    cache = gi.args[0]
    cs, es, rs = shape(cache), shape(ex), shape(node)
    require(cs is not None and es is not None and rs is not None and len(cs) == 4, "repeat_kv: unknown shapes")
    b, kvh, seq, d = cs
    g = es[2]
    require(es == (b, kvh, g, seq, d) and rs == (b, kvh * g, seq, d), "repeat_kv: expand/reshape shapes do not repeat heads")
    return cache, g, [node, ex, gi]
