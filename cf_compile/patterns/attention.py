"""The attention block of a HF decoder layer, found from its SDPA call by walking the dataflow.

Anchor: ``scaled_dot_product_attention(q, key, value, attn_mask, scale)``. From there:
  q     <- NeoX RoPE <- [transpose] <- [per-head RMSNorm] <- view <- q projection  (or a slice of qkv)
  key   <- [repeat_kv] <- k cache <- index_copy_(2, pos, RoPE(k <- ... <- k projection))
  value <- [repeat_kv] <- v cache <- index_copy_(2, pos, v <- ... <- v projection)
  q/k/v projections read one RMSNorm(x); the SDPA result is merged back to [B, 1, heads*D] and
  goes through o_proj, optionally followed by ``x + o`` (the residual add).
Every condition that fails is a near-miss reason in the report.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from cf_compile.fx.idioms import (
    Linear,
    NoMatch,
    RMSNorm,
    is_layout,
    match_linear,
    match_repeat_kv,
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
    only_user,
    residual_tail,
    verify_layout,
)

BLOCK = "attention"


def _identity_slice(node: fx.Node) -> bool:
    """``t[:, :, :, :n]`` (operator.getitem with slices only) that keeps every element of ``t``."""
    if not (is_op(node, "getitem") and isinstance(node.args[0], fx.Node)):
        return False
    idx = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
    return all(isinstance(i, slice) and i.step in (None, 1) for i in idx) and shape(node) == shape(node.args[0])


def _layer_independent(node: fx.Node) -> fx.Node:
    """The tensor behind a layer's own view of a table every layer shares: HF slices the mask per layer
    (an identity slice at decode) and ``apply_rotary_pos_emb`` unsqueezes cos/sin per layer. Handing every
    layer's op the same node lets Inductor materialise the table once per step; handed each layer's view,
    it recomputed cos, sin and the mask for every op input (two extra kernels per layer, H100 profile
    2026-11-23). The op accepts cos/sin as [B, 1, D] as well as [B, 1, 1, D]."""
    while _identity_slice(node):
        node = node.args[0]
    if is_op(node, "unsqueeze") and arg(node, 1, "dim") == 1 and len(shape(node.args[0]) or ()) == 3:
        return node.args[0]
    return node


def anchors(graph: fx.Graph) -> list[fx.Node]:
    """SDPA calls, and softmaxes over attention scores (eager attention: reported as near-misses,
    never fused). Scores are [B, heads, q, L]; a 2-D MoE router softmax is not attention."""
    return [n for n in graph.nodes if is_op(n, "sdpa") or (is_op(n, "softmax") and len(shape(n) or ()) == 4)]


def _eager_attention_reason(softmax: fx.Node) -> str:
    seen, work, softcap = set(), [softmax.args[0]], False
    while work and len(seen) < 12:
        n = work.pop()
        if not isinstance(n, fx.Node) or n in seen:
            continue
        seen.add(n)
        softcap |= is_op(n, "tanh")
        work.extend(a for a in n.args if isinstance(a, fx.Node))
    what = "with logit soft-capping (tanh) " if softcap else ""
    return f"eager attention (matmul + softmax) {what}instead of SDPA; only SDPA attention is fused"


class _Heads:
    """A projection viewed as heads: linear (or a column slice of a fused linear) -> [B, H, 1, D]."""

    def __init__(self, src: fx.Node, what: str):
        self.nodes: list[fx.Node] = []
        self.norm: RMSNorm | None = None
        chain: list[tuple[str, object]] = []
        n = src
        while True:
            if is_layout(n):
                chain.append(("layout", n))
                self.nodes.append(n)
                n = n.args[0]
                continue
            if self.norm is None and not is_op(n, "linear", "getitem"):
                try:
                    self.norm = match_rmsnorm(n)
                except NoMatch as e:
                    raise NoMatch(f"{what}: between projection and attention: {e}") from None
                chain.append(("norm", self.norm))
                self.nodes.extend(self.norm.nodes)
                n = self.norm.x
                continue
            break
        self.chain = chain[::-1]
        self.col_start, self.col_stop = 0, None
        if is_op(n, "getitem"):
            idx = n.args[1]
            ok = isinstance(idx, tuple) and len(idx) == 2 and idx[0] is Ellipsis and isinstance(idx[1], slice)
            require(ok and idx[1].step in (None, 1), f"{what}: projection slice is not qkv[..., a:b]")
            self.nodes.append(n)
            self.col_start = idx[1].start or 0
            self.col_stop = idx[1].stop
            n = n.args[0]
        self.linear: Linear = match_linear(n, f"{what}_proj")
        out_features = shape(self.linear.weight)[0]
        if self.col_stop is None:
            self.col_stop = out_features
        self.width = self.col_stop - self.col_start
        self.fused = (self.col_start, self.col_stop) != (0, out_features)

    def verify(self, batch: int, head_dim: int, what: str) -> int:
        """Prove the chain is HF's head split; returns the number of heads."""
        require(self.width % head_dim == 0, f"{what}: width {self.width} is not a multiple of head_dim {head_dim}")
        heads = self.width // head_dim
        t = torch.arange(batch * self.width).reshape(batch, 1, self.width)
        for kind, item in self.chain:
            if kind == "norm":
                rows = t.reshape(-1, t.shape[-1])
                contiguous_heads = t.shape[-1] == head_dim and bool((rows[:, 0] % head_dim == 0).all()) and \
                    bool((rows[:, 1:] - rows[:, :-1] == 1).all())
                require(contiguous_heads, f"{what}: per-head norm is not over one head's head_dim values")
                continue
            t = replay(item, t)
        expected = torch.arange(batch * self.width).reshape(batch, 1, heads, head_dim).transpose(1, 2)
        require(tuple(t.shape) == tuple(expected.shape) and torch.equal(t, expected),
                f"{what}: projection is not split into heads as [B, heads, 1, head_dim]")
        return heads


def _cache_write(cache: fx.Node, sdpa: fx.Node, what: str) -> fx.Node:
    writes = [u for u in cache.users if u.op == "call_method" and u.target == "index_copy_"]
    if len(writes) != 1:
        ops = sorted({str(u.target if u.op == "call_method" else getattr(u.target, "__name__", u.target))
                      for u in cache.users})
        raise NoMatch(f"{what} cache is not written by one index_copy_ at the cache position "
                      f"(its uses: {', '.join(ops)}; e.g. a full sliding-window cache rolls instead)")
    w = writes[0]
    require(w.args[0] is cache and w.args[1] in (2, -2), f"{what} cache: write is not along the sequence dim")
    order = {n: i for i, n in enumerate(sdpa.graph.nodes)}
    require(order[w] < order[sdpa], f"{what} cache: written after attention reads it")
    return w


def match(sdpa: fx.Node) -> BlockMatch | NearMiss:
    if is_op(sdpa, "softmax"):
        s = shape(sdpa)
        if s is not None and len(s) == 4 and s[2] != 1:
            return NearMiss(BLOCK, sdpa, f"prefill-shaped graph (query length {s[2]})", status="skipped")
        return NearMiss(BLOCK, sdpa, _eager_attention_reason(sdpa), dtype=dtype(sdpa))
    q, key, value = sdpa.args[0], sdpa.args[1], sdpa.args[2]
    q_shape = shape(q)
    miss = check_decode_shape(BLOCK, sdpa, (q_shape[0], q_shape[2]) if q_shape and len(q_shape) == 4 else None)
    if miss is not None:
        return miss
    try:
        return _match(sdpa, q, key, value)
    except NoMatch as e:
        return NearMiss(BLOCK, sdpa, str(e), batch=q_shape[0], dtype=dtype(q))


def _match(sdpa: fx.Node, q: fx.Node, key: fx.Node, value: fx.Node) -> BlockMatch:
    mask = arg(sdpa, 3, "attn_mask")
    dropout = arg(sdpa, 4, "dropout_p", 0.0)
    is_causal = arg(sdpa, 5, "is_causal", False)
    scale = sdpa.kwargs.get("scale", arg(sdpa, 6, "scale"))
    enable_gqa = sdpa.kwargs.get("enable_gqa", False)
    require(const_float(dropout) == 0.0, f"attention dropout {dropout}")
    require(is_causal is False, "is_causal=True")
    require(scale is None or const_float(scale) is not None, "softmax scale is not a constant")
    require(mask is not None, "no attention mask: SDPA would attend over the whole static cache")
    require(isinstance(mask, fx.Node) and dtype(mask) == torch.bool,
            f"attention mask is {dtype(mask) if isinstance(mask, fx.Node) else type(mask).__name__}, not a bool mask")

    require(not is_op(key, "new_empty"), "multi-head latent attention (keys rebuilt from a latent cache each "
            "step): fused by the 'mla' pattern family")
    # key / value: the static caches, possibly through repeat_kv
    k_cache, k_groups, k_rep = match_repeat_kv(key)
    v_cache, v_groups, v_rep = match_repeat_kv(value)
    require(is_input(k_cache) and is_input(v_cache) and k_cache is not v_cache, "key/value are not two cache inputs")
    k_write = _cache_write(k_cache, sdpa, "key")
    v_write = _cache_write(v_cache, sdpa, "value")
    pos = k_write.args[2]
    require(v_write.args[2] is pos, "key and value are written at different positions")
    pos_shape = shape(pos)
    require(pos_shape == (1,) and dtype(pos) == torch.int64, f"cache position is {pos_shape}, not one int64 index")

    # q / k: NeoX RoPE from one cos/sin pair
    rq = match_rope(q, "q")
    rk = match_rope(k_write.args[3], "k")
    require(rq.cos is rk.cos and rq.sin is rk.sin, "q and k are rotated with different cos/sin")
    qh, kh, vh = _Heads(rq.src, "q"), _Heads(rk.src, "k"), _Heads(v_write.args[3], "v")
    require(qh.norm is None or kh.norm is not None, "q has a per-head norm but k has none")
    require(kh.norm is None or qh.norm is not None, "k has a per-head norm but q has none")
    if qh.norm is not None:
        require(qh.norm.eps == kh.norm.eps, "q and k norms use different eps")
        require(qh.norm.kind == kh.norm.kind, "q and k norms are of different kinds")
    require(qh.linear.input is kh.linear.input is vh.linear.input, "q, k and v project different inputs")
    norm = match_rmsnorm(qh.linear.input)

    x = norm.x
    x_shape = int_shape(x, "attention input")
    batch, hidden = x_shape[0], x_shape[-1]
    require(len(x_shape) == 3 and x_shape[1] == 1, f"attention input is {x_shape}, not [B, 1, hidden]")
    kc_shape = shape(k_cache)
    require(kc_shape is not None and len(kc_shape) == 4 and shape(v_cache) is not None, "caches are not 4-D")
    head_dim = kc_shape[3]
    num_kv_heads = kc_shape[1]
    require(isinstance(head_dim, int) and isinstance(num_kv_heads, int), "symbolic cache heads/head_dim")
    require(kc_shape[0] == batch, f"cache batch {kc_shape[0]} differs from activation batch {batch}")
    require(tuple(shape(v_cache)[i] for i in (0, 1, 3)) == (batch, num_kv_heads, head_dim),
            "value cache layout differs from key cache layout")
    num_heads = qh.verify(batch, head_dim, "q")
    require(kh.verify(batch, head_dim, "k") == num_kv_heads, "k heads differ from the key cache heads")
    require(vh.verify(batch, head_dim, "v") == num_kv_heads, "v heads differ from the value cache heads")
    require(num_heads % num_kv_heads == 0, f"{num_heads} query heads not a multiple of {num_kv_heads} kv heads")
    groups = num_heads // num_kv_heads
    if enable_gqa:
        require(k_groups == v_groups == 1, "enable_gqa together with repeat_kv")
    else:
        require(k_groups == v_groups == groups, f"repeat_kv repeats {k_groups}x, heads need {groups}x")
    mask_shape = shape(mask)
    require(mask_shape is not None and len(mask_shape) == 4 and mask_shape[1] == 1 and mask_shape[2] == 1
            and mask_shape[0] in (1, batch), f"mask shape {mask_shape} is not [B, 1, 1, L]")

    # projections: three linears, or one fused qkv linear cut into [q | k | v]
    fused = qh.fused or kh.fused or vh.fused
    if fused:
        require(qh.linear.node is kh.linear.node is vh.linear.node, "q/k/v slices come from different linears")
        q_end, k_end = num_heads * head_dim, (num_heads + num_kv_heads) * head_dim
        require((qh.col_start, qh.col_stop, kh.col_start, kh.col_stop, vh.col_start, vh.col_stop)
                == (0, q_end, q_end, k_end, k_end, k_end + num_kv_heads * head_dim),
                "fused qkv is not split as [q | k | v]")
        qkv_weights, qkv_biases = [qh.linear.weight], [qh.linear.bias]
        linears = [qh.linear.node]
    else:
        require(len({qh.linear.node, kh.linear.node, vh.linear.node}) == 3, "q/k/v share a projection")
        qkv_weights = [qh.linear.weight, kh.linear.weight, vh.linear.weight]
        qkv_biases = [qh.linear.bias, kh.linear.bias, vh.linear.bias]
        linears = [qh.linear.node, kh.linear.node, vh.linear.node]

    # output: SDPA -> merge heads -> o_proj -> [dropout(p=0)] -> [x + o]
    chain, n = [], sdpa
    while is_layout(only_user(n)):
        n = only_user(n)
        chain.append(n)
    require(only_user(n) is not None, "attention output has several users")
    o_lin = match_linear(only_user(n), "o_proj")
    require(o_lin.input is n, "o_proj does not read the merged attention output")
    start = torch.arange(batch * num_heads * head_dim).reshape(batch, num_heads, 1, head_dim)
    verify_layout(chain, start, torch.arange(batch * num_heads * head_dim).reshape(batch, 1, num_heads * head_dim),
                  "attention output")
    require(shape(o_lin.weight)[0] == hidden, "o_proj does not return to the hidden size")
    output, tail = residual_tail(o_lin.node, x)

    region = set(norm.nodes) | set(linears) | set(qh.nodes) | set(kh.nodes) | set(vh.nodes) | set(rq.nodes) \
        | set(rk.nodes) | {k_write, v_write, sdpa, o_lin.node} | set(k_rep) | set(v_rep) | set(chain) | set(tail)
    for cache in (k_cache, v_cache):
        outside = [u for u in cache.users if u not in region]
        if outside:
            raise NoMatch(f"cache '{cache.name}' is also read or written outside the block ('{outside[0].name}')")
    check_region_closed(region, output, "attention")

    op_args = dict(
        x=x, norm_weight=norm.weight, norm_eps=norm.eps, norm_kind=norm.kind,
        qkv_weights=qkv_weights, qkv_biases=qkv_biases,
        q_norm_weight=qh.norm.weight if qh.norm else None, k_norm_weight=kh.norm.weight if kh.norm else None,
        qk_norm_eps=qh.norm.eps if qh.norm else 0.0, qk_norm_kind=qh.norm.kind if qh.norm else "weight",
        cos=_layer_independent(rq.cos), sin=_layer_independent(rq.sin), cache_position=pos, k_cache=k_cache,
        v_cache=v_cache, attn_mask=_layer_independent(mask), scale=const_float(scale) if scale is not None else None,
        o_weight=o_lin.weight, o_bias=o_lin.bias, add_residual=is_op(output, "add"),
    )
    return BlockMatch(
        block=BLOCK, anchor=sdpa, output=output, nodes=region, op_args=op_args,
        shapes=dict(hidden=hidden, heads=num_heads, kv_heads=num_kv_heads, head_dim=head_dim),
        dtype=dtype(x), batch=batch,
        features=dict(qkv_bias=any(b is not None for b in qkv_biases), fused_qkv=fused,
                      qk_norm=qh.norm is not None, qk_norm_kind=qh.norm.kind if qh.norm else "",
                      o_bias=o_lin.bias is not None, norm=norm.kind,
                      residual=op_args["add_residual"], mask_dtype=str(dtype(mask)).replace("torch.", "")),
    )
