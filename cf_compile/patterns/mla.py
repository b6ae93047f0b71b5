"""DeepSeek-V2/V3 multi-head latent attention (MLA), found from its SDPA call by walking the dataflow.

Anchor: an SDPA whose value is a split of ``kv_b_proj`` applied to a whole cache input (the latent
cache, expanded again every decode step). From there (transformers 5.17-5.23, non-absorbed MLA):
  value  <- split(view/transpose(kv_b_proj(k_cache)), [nope, v])[1]
  key    <- new_empty(..) with key[..., :nope].copy_(split[0]) and key[..., nope:].copy_(v_cache.expand)
  k_cache  written by index_copy_(2, pos, view(RMSNorm(split(kv_a_proj_with_mqa(h), [lora, rope])[0])))
  v_cache  written by index_copy_(2, pos, RoPE(view(split(..)[1])))
  q      <- cat(q_nope, RoPE(q_pe)), (q_nope, q_pe) = split(view/transpose(q_proj(h)), [nope, rope])
            where q_proj is one linear (V2-Lite) or q_b_proj(RMSNorm(q_a_proj(h))) (q LoRA, V3)
  h = RMSNorm(x); SDPA -> merge heads -> o_proj [-> x + o].
RoPE is proven per form (its lane pairing by index replay): V2's complex-number form, V3's
interleaved form (even/odd lanes) and NeoX rotate_half; q and k must use the same form and tables.
The softmax scale must be a constant (it carries yarn's mscale^2 when rope scaling is yarn).
Every condition that fails is a near-miss reason in the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx as fx

from cf_compile.fx.idioms import (
    Linear,
    NoMatch,
    RMSNorm,
    cast_dtype,
    is_layout,
    match_linear,
    match_rmsnorm,
    match_rope,
    replay,
    require,
)
from cf_compile.fx.walk import arg, const_float, dtype, is_input, is_op, shape
from cf_compile.patterns.common import (
    BlockMatch,
    NearMiss,
    check_decode_shape,
    check_region_closed,
    int_shape,
    layout_chain_back,
    only_user,
    residual_tail,
    verify_layout,
)

BLOCK = "mla"


# --- small structural helpers ----------------------------------------------------------------------


def _is_split(node: object) -> bool:
    if not isinstance(node, fx.Node):
        return False
    if node.op == "call_function":
        return node.target in (torch.split, torch.Tensor.split)
    return node.op == "call_method" and node.target == "split"


@dataclass
class _Part:
    """``split(src, sizes, dim=-1)[index]``."""

    src: fx.Node
    index: int
    sizes: tuple[int, ...]
    split: fx.Node
    getitem: fx.Node


def _split_part(node: object, what: str) -> _Part:
    require(is_op(node, "getitem") and _is_split(node.args[0]) and isinstance(node.args[1], int),
            f"{what}: not a part of a torch.split")
    sp = node.args[0]
    src = sp.args[0]
    sizes = arg(sp, 1, "split_size_or_sections", sp.kwargs.get("split_size"))
    dim = arg(sp, 2, "dim", 0)
    src_shape = shape(src)
    require(src_shape is not None and dim in (-1, len(src_shape) - 1), f"{what}: split is not along the last dim")
    require(isinstance(sizes, (list, tuple)) and all(isinstance(s, int) for s in sizes)
            and sum(sizes) == src_shape[-1], f"{what}: split sizes {sizes} are not constant sections")
    return _Part(src=src, index=node.args[1], sizes=tuple(sizes), split=sp, getitem=node)


def _lanes(node: fx.Node, width: int) -> torch.Tensor | None:
    """Which last-dim lanes ``src[..., idx]`` keeps, replayed on ``arange(width)``; None if not such a slice."""
    if not is_op(node, "getitem"):
        return None
    idx = node.args[1]
    if not (isinstance(idx, tuple) and len(idx) == 2 and idx[0] is Ellipsis and isinstance(idx[1], slice)):
        return None
    return replay(node, torch.arange(width))


def _cache_shape(node: fx.Node, what: str) -> tuple:
    """[B, 1, L, D] with every dim but the cache length L a concrete int (L turns symbolic when Dynamo
    recompiles for a second ``max_cache_len``)."""
    s = shape(node)
    require(is_input(node) and s is not None and len(s) == 4, f"{what} is not a 4-D graph input")
    require(all(isinstance(d, int) for d in (s[0], s[1], s[3])), f"{what}: symbolic shape {s}")
    return s


def _hint(d: object) -> int:
    return d.node.hint if isinstance(d, torch.SymInt) else d


def _same_dims(a: tuple | None, b: tuple) -> bool:
    """Dim-wise equality that never asks the shape environment (a symbolic comparison would add a guard
    and specialise the graph): ints by value, symbolic dims by their expression."""
    if a is None or len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if isinstance(x, torch.SymInt) or isinstance(y, torch.SymInt):
            if not (isinstance(x, torch.SymInt) and isinstance(y, torch.SymInt) and x.node.expr == y.node.expr):
                return False
        elif x != y:
            return False
    return True


def _before(a: fx.Node, b: fx.Node) -> bool:
    order = {n: i for i, n in enumerate(a.graph.nodes)}
    return order[a] < order[b]


# --- RoPE forms of the DeepSeek models -------------------------------------------------------------


@dataclass
class MlaRope:
    form: str                              # "complex" | "interleave" | "neox"
    src: fx.Node                           # [B, heads, 1, rope_dim] before rotation
    cos: fx.Node | None = None
    sin: fx.Node | None = None
    freqs_cis: fx.Node | None = None
    nodes: list[fx.Node] = field(default_factory=list)

    def tables(self) -> tuple:
        return self.cos, self.sin, self.freqs_cis


def _check_table(t: object, width: int, name: str) -> None:
    ts = shape(t)
    require(isinstance(t, fx.Node) and ts is not None and len(ts) == 4 and ts[1] == 1 and ts[2] == 1
            and ts[3] == width, f"{name} is not [B, 1, 1, {width}] (per-head or partial tables)")


def _complex_rope(out: fx.Node) -> MlaRope:
    """V2: ``view_as_real(view_as_complex(t.float().reshape(.., -1, 2)) * freqs).flatten(3).type_as(t)``."""
    nodes = [out]
    flat = out.args[0]
    require(is_op(flat, "flatten"), "complex RoPE result is not flattened back")
    real = flat.args[0]
    require(isinstance(real, fx.Node) and real.target is torch.view_as_real, "no view_as_real")
    prod = real.args[0]
    require(is_op(prod, "mul") and len(prod.users) == 1, "complex RoPE is not a product")
    cplx, freqs = prod.args
    # operand order matters here: ATen's complex mul is not bitwise commutative (freqs * t rounds
    # differently from t * freqs on CPU), so only HF's order is proven equal to the reference
    require(isinstance(cplx, fx.Node) and cplx.target is torch.view_as_complex,
            "complex RoPE is not view_as_complex(t) * freqs_cis (in this operand order)")
    pairs = cplx.args[0]
    require(is_layout(pairs), "complex RoPE input is not reshaped into lane pairs")
    up = pairs.args[0]
    require(cast_dtype(up) == torch.float32, "complex RoPE is not computed in fp32")
    src = up.args[0]
    require(out.args[1] is src, "complex RoPE result is not cast back to its input's dtype")
    s = shape(src)
    require(s is not None and len(s) == 4 and s[-1] % 2 == 0, "RoPE input is not [B, heads, 1, D]")
    # the pairing: (2j, 2j+1) form complex lane j, and flatten(3) puts them back where they were
    t = torch.arange(torch.Size(s).numel()).reshape(s)
    p = replay(pairs, t)
    require(tuple(p.shape) == (*s[:-1], s[-1] // 2, 2) and torch.equal(p[..., 0], t[..., 0::2])
            and torch.equal(p[..., 1], t[..., 1::2]), "complex RoPE does not pair lanes (2j, 2j+1)")
    require(torch.equal(replay(flat, p), t), "complex RoPE result lanes are not restored in order")
    require(dtype(freqs) == torch.complex64, f"freqs_cis is {dtype(freqs)}, not complex64")
    _check_table(freqs, s[-1] // 2, "freqs_cis")
    nodes += [flat, real, prod, cplx, pairs, up]
    return MlaRope(form="complex", src=src, freqs_cis=freqs, nodes=nodes)


def _interleaved_rope(out: fx.Node) -> MlaRope:
    """V3 ``rope_interleave``: ``cat([t0 * cos - t1 * sin, t1 * cos + t0 * sin], -1)``, t0/t1 = even/odd lanes."""
    parts = out.args[0]
    s = shape(out)
    require(s is not None and arg(out, 1, "dim", 0) in (-1, len(s) - 1), "RoPE cat is not on the last dim")
    lo, hi = parts
    require(is_op(lo, "sub") and is_op(hi, "add"), "not cat(a - b, c + d) (interleaved RoPE)")
    products = [lo.args[0], lo.args[1], hi.args[0], hi.args[1]]
    require(all(is_op(p, "mul") and len(p.users) == 1 for p in products), "RoPE terms are not products")
    width = s[-1]
    half = width // 2

    def pairs(p: fx.Node) -> list[tuple[fx.Node, fx.Node]]:
        a, b = p.args
        return [(a, b), (b, a)]

    # IEEE mul and add commute exactly, so only which operand is which matters, not their order
    for t0, cos in pairs(lo.args[0]):
        for t1, sin in pairs(lo.args[1]):
            want = [{t1, cos}, {t0, sin}]
            got = [set(hi.args[0].args), set(hi.args[1].args)]
            if got != want and got != want[::-1]:
                continue
            if not (is_op(t0, "getitem") and is_op(t1, "getitem") and t0.args[0] is t1.args[0]):
                continue
            src = t0.args[0]
            ss = shape(src)
            if ss is None or len(ss) != 4 or ss[-1] != width:
                continue
            l0, l1 = _lanes(t0, width), _lanes(t1, width)
            if l0 is None or l1 is None or not (torch.equal(l0, torch.arange(0, width, 2))
                                                and torch.equal(l1, torch.arange(1, width, 2))):
                continue
            for table, name in ((cos, "cos"), (sin, "sin")):
                _check_table(table, half, name)
            require(cos is not sin, "cos and sin are the same tensor")
            return MlaRope(form="interleave", src=src, cos=cos, sin=sin,
                           nodes=[out, lo, hi, *products, t0, t1])
    raise NoMatch("cat(a - b, c + d) is not t0*cos - t1*sin, t1*cos + t0*sin on the even/odd lanes "
                  "(not interleaved RoPE)")


def match_mla_rope(out: object, what: str) -> MlaRope:
    """Recognise the RoPE producing ``out`` in any of DeepSeek's three forms, or raise NoMatch naming the
    form tried (chosen by the result's outermost op) and the condition that failed."""
    require(isinstance(out, fx.Node), f"{what}: RoPE result is not a graph value")
    if out.op == "call_method" and out.target == "type_as":
        form, recognise = "complex", _complex_rope
    elif is_op(out, "cat") and len(out.args[0]) == 2 and is_op(out.args[0][0], "sub"):
        form, recognise = "interleaved", _interleaved_rope
    else:
        form, recognise = "NeoX", _neox_rope
    try:
        return recognise(out)
    except NoMatch as e:
        raise NoMatch(f"{what}: not a proven RoPE form (tried {form}: {e})") from None


def _neox_rope(out: fx.Node) -> MlaRope:
    r = match_rope(out, "rope")
    return MlaRope(form="neox", src=r.src, cos=r.cos, sin=r.sin, nodes=r.nodes)


# --- the block -------------------------------------------------------------------------------------


def _latent_expansion(value: object) -> tuple[_Part, Linear, list[fx.Node]] | None:
    """value = split(layout(kv_b_proj(cache)))[1] -> (part, kv_b linear, layout chain); else None."""
    try:
        part = _split_part(value, "value")
    except NoMatch:
        return None
    lin_out, chain = layout_chain_back(part.src)
    if not is_op(lin_out, "linear") or not is_input(lin_out.args[0]):
        return None
    try:
        return part, match_linear(lin_out, "kv_b_proj"), chain
    except NoMatch:
        return None


def anchors(graph: fx.Graph) -> list[fx.Node]:
    """SDPA calls whose value is ``kv_b_proj`` applied to a whole cache input (MLA's latent expansion)."""
    return [n for n in graph.nodes if is_op(n, "sdpa") and len(n.args) >= 3
            and _latent_expansion(n.args[2]) is not None]


def match(sdpa: fx.Node) -> BlockMatch | NearMiss | None:
    if _latent_expansion(sdpa.args[2]) is None:
        return None
    q_shape = shape(sdpa.args[0])
    miss = check_decode_shape(BLOCK, sdpa, (q_shape[0], q_shape[2]) if q_shape and len(q_shape) == 4 else None)
    if miss is not None:
        return miss
    try:
        return _match(sdpa)
    except NoMatch as e:
        return NearMiss(BLOCK, sdpa, str(e), batch=q_shape[0], dtype=dtype(sdpa.args[0]))


def _cache_write(cache: fx.Node, reader: fx.Node, what: str) -> fx.Node:
    writes = [u for u in cache.users if u.op == "call_method" and u.target == "index_copy_"]
    require(len(writes) == 1, f"{what} cache is not written by one index_copy_ at the cache position")
    w = writes[0]
    require(w.args[0] is cache and w.args[1] in (2, -2), f"{what} cache: write is not along the sequence dim")
    require(_before(w, reader), f"{what} cache: read before this step's write")
    return w


def _key_assembly(key: object, nope: int, heads_src: fx.Node, width: int, what: str = "key"
                  ) -> tuple[dict[str, fx.Node], list[fx.Node]]:
    """``key = t.new_empty(..); key[..., :n].copy_(k_nope); key[..., n:].copy_(k_rot)`` -> pieces, nodes."""
    require(isinstance(key, fx.Node) and key.op == "call_method" and key.target == "new_empty",
            f"{what}: not assembled by new_empty + slice copy_ (HF's expand_kv)")
    require(key.args[0] is heads_src and not key.kwargs, f"{what}: new_empty is not of the expanded latent")
    nodes, pieces = [key], {}
    for u in key.users:
        if is_op(u, "sdpa"):
            continue
        lanes = _lanes(u, width)
        cp = only_user(u)
        require(lanes is not None and cp is not None and cp.op == "call_method" and cp.target == "copy_"
                and cp.args[0] is u and len(cp.args) == 2 and not cp.kwargs and not cp.users,
                f"{what}: '{u.name}' is not a lane-slice copy_ into the keys")
        nodes += [u, cp]
        pieces[(int(lanes[0]), int(lanes[-1]) + 1, len(lanes))] = cp
    require(len(nodes) == 5 and set(pieces) == {(0, nope, nope), (nope, width, width - nope)},
            f"{what}: lane copies {sorted(pieces)} are not [:{nope}] and [{nope}:]")
    return {"nope": pieces[(0, nope, nope)].args[1], "rope": pieces[(nope, width, width - nope)].args[1]}, nodes


def _match(sdpa: fx.Node) -> BlockMatch:
    q, key, value = sdpa.args[0], sdpa.args[1], sdpa.args[2]
    mask = arg(sdpa, 3, "attn_mask")
    require(const_float(arg(sdpa, 4, "dropout_p", 0.0)) == 0.0, "attention dropout")
    require(arg(sdpa, 5, "is_causal", False) is False, "is_causal=True")
    scale = sdpa.kwargs.get("scale", arg(sdpa, 6, "scale"))
    require(scale is None or const_float(scale) is not None, "softmax scale is not a constant")
    require(not sdpa.kwargs.get("enable_gqa", False), "enable_gqa")
    require(mask is not None, "no attention mask: SDPA would attend over the whole static cache")
    require(isinstance(mask, fx.Node) and dtype(mask) == torch.bool, "attention mask is not a bool mask")

    # value: the latent cache expanded by kv_b_proj
    kv_part, kv_b, kv_chain = _latent_expansion(value)
    require(kv_part.index == 1 and len(kv_part.sizes) == 2, "value is not the second part of split(kv_b_proj)")
    nope, v_dim = kv_part.sizes
    k_cache = kv_b.input
    batch, one, cache_len, lora = _cache_shape(k_cache, "latent cache")
    length = _hint(cache_len)       # a concrete length for the layout proofs (they hold for any length)
    require(one == 1, f"latent cache has {one} heads, not 1")
    kv_width = shape(kv_b.weight)[0]
    require(kv_width % (nope + v_dim) == 0, "kv_b_proj rows are not heads x (nope + v)")
    heads = kv_width // (nope + v_dim)
    n = batch * length * kv_width
    verify_layout(kv_chain, torch.arange(n).reshape(batch, 1, length, kv_width),
                  torch.arange(n).reshape(batch, length, heads, nope + v_dim).transpose(1, 2), "kv_b_proj output")
    key_shape = shape(key)
    require(key_shape is not None and isinstance(key_shape[-1], int), "keys: unknown or symbolic head dim")
    pieces, key_nodes = _key_assembly(key, nope, kv_part.src, key_shape[-1])
    k_nope = _split_part(pieces["nope"], "key lanes [:nope]")
    require(k_nope.split is kv_part.split and k_nope.index == 0, "key lanes [:nope] are not split(kv_b_proj)[0]")
    k_rot = pieces["rope"]
    require(is_op(k_rot, "expand") and is_input(k_rot.args[0]), "key rope lanes are not the rope cache expanded")
    v_cache = k_rot.args[0]
    require(v_cache is not k_cache, "latent and rope caches are the same tensor")
    vb, v_one, v_len, rope_dim = _cache_shape(v_cache, "rope cache")
    require(_same_dims((vb, v_one, v_len), (batch, 1, cache_len)), "rope cache layout differs from the latent cache's")
    require(_same_dims(shape(k_rot), (batch, heads, cache_len, rope_dim)), "rope cache is not expanded over the heads")
    require(_same_dims(key_shape, (batch, heads, cache_len, nope + rope_dim)), f"keys are not [B, {heads}, L, nope + rope]")
    copies = [u for u in key_nodes if u.op == "call_method" and u.target == "copy_"]
    require(all(_before(c, sdpa) for c in copies), "keys are written after attention reads them")

    # the two cache writes of this step
    k_write = _cache_write(k_cache, kv_b.node, "latent")
    v_write = _cache_write(v_cache, k_rot, "rope")
    pos = k_write.args[2]
    require(v_write.args[2] is pos, "latent and rope caches are written at different positions")
    require(shape(pos) == (1,) and dtype(pos) == torch.int64, f"cache position is {shape(pos)}, not one int64 index")

    # new latent: view(RMSNorm(split(kv_a_proj_with_mqa(h))[0]))
    c_out, c_chain = layout_chain_back(k_write.args[3])
    try:
        kv_norm: RMSNorm = match_rmsnorm(c_out)
    except NoMatch as e:
        raise NoMatch(f"kv_a_layernorm: {e}") from None
    require(kv_norm.kind == "weight", "kv_a_layernorm has a (1 + weight) factor")
    verify_layout(c_chain, torch.arange(batch * lora).reshape(batch, 1, lora),
                  torch.arange(batch * lora).reshape(batch, 1, 1, lora), "new latent")
    c_part = _split_part(kv_norm.x, "latent")
    require(c_part.index == 0 and c_part.sizes == (lora, rope_dim),
            f"latent is not split(kv_a_proj_with_mqa, [{lora}, {rope_dim}])[0]")
    kv_a = match_linear(c_part.src, "kv_a_proj_with_mqa")

    # new shared rope key: RoPE(view(split(..)[1]))
    k_rope = match_mla_rope(v_write.args[3], "k")
    kp_out, kp_chain = layout_chain_back(k_rope.src)
    kp_part = _split_part(kp_out, "k_pe")
    require(kp_part.split is c_part.split and kp_part.index == 1, "k_pe is not split(kv_a_proj_with_mqa)[1]")
    verify_layout(kp_chain, torch.arange(batch * rope_dim).reshape(batch, 1, rope_dim),
                  torch.arange(batch * rope_dim).reshape(batch, 1, 1, rope_dim), "k_pe")

    # query: cat(q_nope, RoPE(q_pe)) from one head split of the q projection
    require(is_op(q, "cat") and len(q.args[0]) == 2 and arg(q, 1, "dim", 0) in (-1, 3),
            "query is not cat(q_nope, q_rope) on the last dim")
    q_nope_node, q_rope_out = q.args[0]
    q_rope = match_mla_rope(q_rope_out, "q")
    require(q_rope.form == k_rope.form, f"q uses {q_rope.form} RoPE, k uses {k_rope.form}")
    require(all(a is b for a, b in zip(q_rope.tables(), k_rope.tables(), strict=True)),
            "q and k are rotated with different tables")
    qp_part = _split_part(q_rope.src, "q_pe")
    qn_part = _split_part(q_nope_node, "q_nope")
    require(qp_part.split is qn_part.split and (qn_part.index, qp_part.index) == (0, 1)
            and qp_part.sizes == (nope, rope_dim), f"query is not split(q, [{nope}, {rope_dim}]) in order")
    q_out, q_chain = layout_chain_back(qp_part.src)
    q_lin = match_linear(q_out, "q projection")
    q_width = heads * (nope + rope_dim)
    require(shape(q_lin.weight)[0] == q_width, f"q projection has {shape(q_lin.weight)[0]} rows, not {q_width}")
    verify_layout(q_chain, torch.arange(batch * q_width).reshape(batch, 1, q_width),
                  torch.arange(batch * q_width).reshape(batch, 1, heads, nope + rope_dim).transpose(1, 2), "query")

    # h = RMSNorm(x) feeds kv_a and the q projection (directly, or via q_a_proj -> RMSNorm -> q_b_proj)
    h = kv_a.input
    norm = match_rmsnorm(h)
    q_nodes: list[fx.Node] = [q_lin.node]
    q_norm: RMSNorm | None = None
    if q_lin.input is h:
        q_weights, q_biases = [q_lin.weight], [q_lin.bias]
    else:
        try:
            q_norm = match_rmsnorm(q_lin.input)
        except NoMatch as e:
            raise NoMatch(f"q path: q projection reads neither the normed input nor q_a_layernorm ({e})") from None
        require(q_norm.kind == "weight", "q_a_layernorm has a (1 + weight) factor")
        q_a = match_linear(q_norm.x, "q_a_proj")
        require(q_a.input is h, "q_a_proj and kv_a_proj_with_mqa read different inputs")
        q_weights, q_biases = [q_a.weight, q_lin.weight], [q_a.bias, q_lin.bias]
        q_nodes += [q_a.node, *q_norm.nodes]

    x = norm.x
    x_shape = int_shape(x, "attention input")
    hidden = x_shape[-1]
    require(len(x_shape) == 3 and x_shape[:2] == (batch, 1), f"attention input is {x_shape}, not [{batch}, 1, hidden]")
    mask_shape = shape(mask)
    require(mask_shape is not None and len(mask_shape) == 4 and mask_shape[1:3] == (1, 1)
            and _same_dims(mask_shape[3:], (cache_len,)) and mask_shape[0] in (1, batch), f"mask shape {mask_shape} is not [B, 1, 1, L]")

    # output: SDPA -> merge heads -> o_proj -> [dropout(p=0)] -> [x + o]
    chain, o = [], sdpa
    while only_user(o) is not None and is_layout(only_user(o)):
        o = only_user(o)
        chain.append(o)
    require(len(o.users) == 1, "attention output has several users")
    o_lin = match_linear(next(iter(o.users)), "o_proj")
    require(o_lin.input is o, "o_proj does not read the merged attention output")
    m = batch * heads * v_dim
    verify_layout(chain, torch.arange(m).reshape(batch, heads, 1, v_dim), torch.arange(m).reshape(batch, 1, heads * v_dim),
                  "attention output")
    require(shape(o_lin.weight)[0] == hidden, "o_proj does not return to the hidden size")
    output, tail = residual_tail(o_lin.node, x)

    region = set(norm.nodes) | set(q_nodes) | set(q_chain) | {qp_part.split, qp_part.getitem, qn_part.getitem, q} \
        | set(q_rope.nodes) | {kv_a.node, c_part.split, c_part.getitem, kp_part.getitem} | set(kv_norm.nodes) \
        | set(c_chain) | set(kp_chain) | set(k_rope.nodes) | {k_write, v_write, kv_b.node} | set(kv_chain) \
        | {kv_part.split, kv_part.getitem, k_nope.getitem, k_rot} | set(key_nodes) | {sdpa, o_lin.node} \
        | set(chain) | set(tail)
    for cache in (k_cache, v_cache):
        outside = [u for u in cache.users if u not in region]
        if outside:
            raise NoMatch(f"cache '{cache.name}' is also read or written outside the block ('{outside[0].name}')")
    check_region_closed(region, output, "mla")

    op_args = dict(
        x=x, norm_weight=norm.weight, norm_eps=norm.eps, norm_kind=norm.kind,
        q_weights=q_weights, q_biases=q_biases, q_norm_weight=q_norm.weight if q_norm else None,
        q_norm_eps=q_norm.eps if q_norm else 0.0,
        kv_a_weight=kv_a.weight, kv_a_bias=kv_a.bias, kv_norm_weight=kv_norm.weight, kv_norm_eps=kv_norm.eps,
        kv_b_weight=kv_b.weight, kv_b_bias=kv_b.bias,
        rope_form=q_rope.form, cos=q_rope.cos, sin=q_rope.sin, freqs_cis=q_rope.freqs_cis,
        cache_position=pos, k_cache=k_cache, v_cache=v_cache, attn_mask=mask,
        scale=const_float(scale) if scale is not None else None,
        o_weight=o_lin.weight, o_bias=o_lin.bias, add_residual=is_op(output, "add"),
        num_heads=heads, qk_nope_head_dim=nope, v_head_dim=v_dim,
    )
    biases = [*q_biases, kv_a.bias, kv_b.bias, o_lin.bias]
    return BlockMatch(
        block=BLOCK, anchor=sdpa, output=output, nodes=region, op_args=op_args,
        shapes=dict(hidden=hidden, heads=heads, q_lora_rank=shape(q_weights[0])[0] if q_norm else 0,
                    kv_lora_rank=lora, qk_nope_head_dim=nope, qk_rope_head_dim=rope_dim, v_head_dim=v_dim),
        dtype=dtype(x), batch=batch,
        features=dict(q_lora=q_norm is not None, rope=q_rope.form, scale=op_args["scale"],
                      bias=any(b is not None for b in biases), norm=norm.kind, residual=op_args["add_residual"],
                      mask_dtype=str(dtype(mask)).replace("torch.", "")),
    )


__all__ = ["BLOCK", "MlaRope", "anchors", "match", "match_mla_rope"]
