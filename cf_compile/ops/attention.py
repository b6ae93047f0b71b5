"""The fused attention-block op: schema, fake, eager-equivalent reference and kernel dispatch.

One call does what a HF decoder layer does between the residual stream and the next residual add:
RMSNorm -> q/k/v projections (+bias) -> optional per-head q/k RMSNorm (Qwen3) -> NeoX RoPE ->
static-cache write at ``cache_position`` -> repeat_kv -> SDPA(mask, scale) -> o_proj (+bias)
[-> + residual]. The caches are mutated in place (``mutates_args``), exactly like HF's
``index_copy_`` on the StaticCache tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cf_compile.ops.numerics import neox_rope, repeat_kv, rms_norm

OP_NAME = "clusterfusion::attention_decode"


def head_counts(qkv_weights: list[Tensor], k_cache: Tensor) -> tuple[int, int, int]:
    """(query heads, kv heads, head_dim) from the projection weights and the cache layout."""
    num_kv_heads, head_dim = k_cache.shape[1], k_cache.shape[3]
    if len(qkv_weights) == 1:
        q_rows = qkv_weights[0].shape[0] - 2 * num_kv_heads * head_dim
    else:
        q_rows = qkv_weights[0].shape[0]
    return q_rows // head_dim, num_kv_heads, head_dim


def attention_decode_reference(
    x: Tensor, norm_weight: Tensor, norm_eps: float, norm_kind: str,
    qkv_weights: list[Tensor], qkv_biases: list[Tensor | None],
    q_norm_weight: Tensor | None, k_norm_weight: Tensor | None, qk_norm_eps: float, qk_norm_kind: str,
    cos: Tensor, sin: Tensor, cache_position: Tensor, k_cache: Tensor, v_cache: Tensor,
    attn_mask: Tensor | None, scale: float | None, o_weight: Tensor, o_bias: Tensor | None,
    add_residual: bool,
) -> Tensor:
    """Plain-torch attention block with eager's rounding points (runs on any device; Inductor can trace it)."""
    batch, q_len = x.shape[0], x.shape[1]
    num_heads, num_kv_heads, head_dim = head_counts(qkv_weights, k_cache)
    h = rms_norm(x, norm_weight, norm_eps, norm_kind)
    if len(qkv_weights) == 1:
        qkv = F.linear(h, qkv_weights[0], qkv_biases[0])
        q_end, k_end = num_heads * head_dim, (num_heads + num_kv_heads) * head_dim
        q, k, v = qkv[..., :q_end], qkv[..., q_end:k_end], qkv[..., k_end:]
    else:
        q = F.linear(h, qkv_weights[0], qkv_biases[0])
        k = F.linear(h, qkv_weights[1], qkv_biases[1])
        v = F.linear(h, qkv_weights[2], qkv_biases[2])
    q = q.view(batch, q_len, -1, head_dim)
    k = k.view(batch, q_len, -1, head_dim)
    v = v.view(batch, q_len, -1, head_dim)
    if q_norm_weight is not None:
        q = rms_norm(q, q_norm_weight, qk_norm_eps, qk_norm_kind)
    if k_norm_weight is not None:
        k = rms_norm(k, k_norm_weight, qk_norm_eps, qk_norm_kind)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if cos.dim() == 3:   # [B, 1, D], the layer-independent table (patterns/attention.py): as HF unsqueezes it
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    q = neox_rope(q, cos, sin)
    k = neox_rope(k, cos, sin)
    k_cache.index_copy_(2, cache_position, k)
    v_cache.index_copy_(2, cache_position, v)
    groups = num_heads // num_kv_heads
    o = F.scaled_dot_product_attention(
        q, repeat_kv(k_cache, groups), repeat_kv(v_cache, groups),
        attn_mask=attn_mask, dropout_p=0.0, scale=scale, is_causal=False,
    )
    o = o.transpose(1, 2).reshape(batch, q_len, num_heads * head_dim)
    o = F.linear(o, o_weight, o_bias)
    return x + o if add_residual else o


@torch.library.custom_op(OP_NAME, mutates_args=("k_cache", "v_cache"))
def attention_decode(
    x: Tensor, norm_weight: Tensor, norm_eps: float, norm_kind: str,
    qkv_weights: list[Tensor], qkv_biases: list[Tensor | None],
    q_norm_weight: Tensor | None, k_norm_weight: Tensor | None, qk_norm_eps: float, qk_norm_kind: str,
    cos: Tensor, sin: Tensor, cache_position: Tensor, k_cache: Tensor, v_cache: Tensor,
    attn_mask: Tensor | None, scale: float | None, o_weight: Tensor, o_bias: Tensor | None,
    add_residual: bool, impl: str,
) -> Tensor:
    """``impl`` is "kernel" (the cluster kernel; CUDA sm_90+) or "reference" (plain torch)."""
    args = (x, norm_weight, norm_eps, norm_kind, qkv_weights, qkv_biases, q_norm_weight, k_norm_weight,
            qk_norm_eps, qk_norm_kind, cos, sin, cache_position, k_cache, v_cache, attn_mask, scale, o_weight,
            o_bias, add_residual)
    if impl == "reference":
        return attention_decode_reference(*args)
    if impl != "kernel":
        raise ValueError(f"{OP_NAME}: unknown impl {impl!r}")
    if q_norm_weight is not None and qk_norm_kind != "weight":
        raise ValueError(f"{OP_NAME}: the kernel has no per-head {qk_norm_kind!r} norm (Gemma3's 1 + w)")
    from cf_compile_kernels import attention as kernels

    head_dim = k_cache.shape[3]
    out = torch.empty_like(x)
    kernels.attention_decode(
        x, norm_weight, norm_eps, norm_kind, list(qkv_weights), list(qkv_biases), q_norm_weight,
        k_norm_weight, qk_norm_eps, cos, sin, cache_position, k_cache, v_cache, attn_mask,
        scale if scale is not None else head_dim ** -0.5, o_weight, o_bias, add_residual, out,
    )
    return out


@attention_decode.register_fake
def _(x, norm_weight, norm_eps, norm_kind, qkv_weights, qkv_biases, q_norm_weight, k_norm_weight,
      qk_norm_eps, qk_norm_kind, cos, sin, cache_position, k_cache, v_cache, attn_mask, scale, o_weight,
      o_bias, add_residual, impl):
    return x.new_empty((*x.shape[:-1], o_weight.shape[0]))
