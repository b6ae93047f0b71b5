"""The fused multi-head latent attention (MLA) block op of DeepSeek-V2/V3: schema, fake, reference.

HF's decode step (transformers 5.17-5.23) keeps the *compressed* latent in the StaticCache and expands
it again every step (non-absorbed MLA):

    h = RMSNorm(x)
    q = q_proj(h)  |  q_b_proj(RMSNorm(q_a_proj(h)))          -> [B, H, 1, nope + rope] -> q_nope, q_pe
    c_kv, k_pe = split(kv_a_proj_with_mqa(h), [lora, rope])
    k_cache[:, :, pos] = RMSNorm(c_kv)            (keys:   [B, 1, L, kv_lora_rank])
    v_cache[:, :, pos] = RoPE(k_pe)               (values: [B, 1, L, rope_dim], the shared roped key)
    k_nope, v = split(kv_b_proj(k_cache) as [B, H, L, nope + v_dim])   (all L positions, every step)
    key = new_empty(); key[..., :nope] = k_nope; key[..., nope:] = v_cache expanded over heads
    o_proj(SDPA(cat(q_nope, RoPE(q_pe)), key, v, mask, scale)) [+ x]

Complex tensors never cross the op boundary: Inductor cannot lower a mutating custom op that takes
one (its auto_functionalized_v2 node is skipped by the pattern pass and compilation fails), so the
rewrite inserts :func:`mla_decode_call`, which passes V2's ``freqs_cis`` as its real view
``[B, 1, 1, rope/2, 2]``; the op views it back as complex, bit for bit the same table.

The op keeps HF's cache names ``k_cache``/``v_cache`` (``keys``/``values`` of the cache layer, here
the latent and the roped shared key) so that tools reading caches by those names (the accuracy
tool's cache-slot check) see them. RoPE comes in three forms, each reproduced op for op:

  * ``"complex"`` (V2): ``view_as_real(view_as_complex(t.float().reshape(.., -1, 2)) * freqs_cis)
    .flatten(3).type_as(t)``, with ``freqs_cis`` ``[B, 1, 1, rope/2]`` complex;
  * ``"interleave"`` (V3, ``rope_interleave``): ``cat(t0 * c - t1 * s, t1 * c + t0 * s)`` on the
    even/odd lanes, with ``cos``/``sin`` ``[B, 1, 1, rope/2]``;
  * ``"neox"`` (V3 without ``rope_interleave``): ``t * cos + rotate_half(t) * sin``, ``[B, 1, 1, rope]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cf_compile.ops.numerics import neox_rope, rms_norm

OP_NAME = "clusterfusion::mla_decode"
ROPE_FORMS = ("complex", "interleave", "neox")


def rope(t: Tensor, form: str, cos: Tensor | None, sin: Tensor | None, freqs_cis: Tensor | None) -> Tensor:
    """Rotate the rope lanes of ``t`` ([B, heads, q_len, rope_dim]) exactly as the HF form ``form`` does."""
    if form == "complex":
        tc = torch.view_as_complex(t.float().reshape(*t.shape[:-1], -1, 2))
        return torch.view_as_real(tc * freqs_cis).flatten(3).type_as(t)
    if form == "interleave":
        t0, t1 = t[..., 0::2], t[..., 1::2]
        return torch.cat([t0 * cos - t1 * sin, t1 * cos + t0 * sin], dim=-1)
    if form == "neox":
        return neox_rope(t, cos, sin)
    raise ValueError(f"{OP_NAME}: unknown rope form {form!r}; expected one of {ROPE_FORMS}")


def mla_decode_reference(
    x: Tensor, norm_weight: Tensor, norm_eps: float, norm_kind: str,
    q_weights: list[Tensor], q_biases: list[Tensor | None], q_norm_weight: Tensor | None, q_norm_eps: float,
    kv_a_weight: Tensor, kv_a_bias: Tensor | None, kv_norm_weight: Tensor, kv_norm_eps: float,
    kv_b_weight: Tensor, kv_b_bias: Tensor | None,
    rope_form: str, cos: Tensor | None, sin: Tensor | None, freqs_cis: Tensor | None,
    cache_position: Tensor, k_cache: Tensor, v_cache: Tensor, attn_mask: Tensor | None, scale: float | None,
    o_weight: Tensor, o_bias: Tensor | None, add_residual: bool,
    num_heads: int, qk_nope_head_dim: int, v_head_dim: int,
) -> Tensor:
    """Plain-torch MLA block doing HF's operations in HF's order and dtypes (so it rounds where eager
    rounds); mutates ``k_cache`` (latent) and ``v_cache`` (roped shared key) at ``cache_position``."""
    batch, q_len = x.shape[0], x.shape[1]
    kv_lora_rank, rope_dim = k_cache.shape[-1], v_cache.shape[-1]
    nope = qk_nope_head_dim
    h = rms_norm(x, norm_weight, norm_eps, norm_kind)
    if len(q_weights) == 1:
        q = F.linear(h, q_weights[0], q_biases[0])
    else:
        q_a = rms_norm(F.linear(h, q_weights[0], q_biases[0]), q_norm_weight, q_norm_eps, "weight")
        q = F.linear(q_a, q_weights[1], q_biases[1])
    q = q.view(batch, q_len, -1, nope + rope_dim).transpose(1, 2)
    q_nope, q_pe = torch.split(q, [nope, rope_dim], dim=-1)

    kv_a = F.linear(h, kv_a_weight, kv_a_bias)
    c_kv, k_pe = torch.split(kv_a, [kv_lora_rank, rope_dim], dim=-1)
    c_kv = rms_norm(c_kv, kv_norm_weight, kv_norm_eps, "weight").view(batch, 1, q_len, kv_lora_rank)
    k_pe = k_pe.view(batch, 1, q_len, rope_dim)
    q_pe = rope(q_pe, rope_form, cos, sin, freqs_cis)
    k_pe = rope(k_pe, rope_form, cos, sin, freqs_cis)
    k_cache.index_copy_(2, cache_position, c_kv)
    v_cache.index_copy_(2, cache_position, k_pe)
    query = torch.cat((q_nope, q_pe), dim=-1)

    cache_len = k_cache.shape[2]
    kv = F.linear(k_cache, kv_b_weight, kv_b_bias).view(batch, cache_len, -1, nope + v_head_dim).transpose(1, 2)
    k_nope, value = torch.split(kv, [nope, v_head_dim], dim=-1)
    key = kv.new_empty(*kv.shape[:-1], nope + rope_dim)
    key[..., :nope].copy_(k_nope)
    key[..., nope:].copy_(v_cache.expand(-1, num_heads, -1, -1))
    o = F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=0.0, scale=scale,
                                       is_causal=False)
    o = o.transpose(1, 2).reshape(batch, q_len, num_heads * v_head_dim)
    o = F.linear(o, o_weight, o_bias)
    return x + o if add_residual else o


@torch.library.custom_op(OP_NAME, mutates_args=("k_cache", "v_cache"))
def mla_decode(
    x: Tensor, norm_weight: Tensor, norm_eps: float, norm_kind: str,
    q_weights: list[Tensor], q_biases: list[Tensor | None], q_norm_weight: Tensor | None, q_norm_eps: float,
    kv_a_weight: Tensor, kv_a_bias: Tensor | None, kv_norm_weight: Tensor, kv_norm_eps: float,
    kv_b_weight: Tensor, kv_b_bias: Tensor | None,
    rope_form: str, cos: Tensor | None, sin: Tensor | None, freqs_cis: Tensor | None,
    cache_position: Tensor, k_cache: Tensor, v_cache: Tensor, attn_mask: Tensor | None, scale: float | None,
    o_weight: Tensor, o_bias: Tensor | None, add_residual: bool,
    num_heads: int, qk_nope_head_dim: int, v_head_dim: int, impl: str,
) -> Tensor:
    """``impl`` is "reference" (plain torch, any device) or "kernel" (cf_compile_kernels.mla; CUDA sm_90+).
    ``freqs_cis`` is the real view of the complex table (see :func:`mla_decode_call`)."""
    freqs = torch.view_as_complex(freqs_cis) if freqs_cis is not None else None
    args = (x, norm_weight, norm_eps, norm_kind, q_weights, q_biases, q_norm_weight, q_norm_eps,
            kv_a_weight, kv_a_bias, kv_norm_weight, kv_norm_eps, kv_b_weight, kv_b_bias,
            rope_form, cos, sin, freqs, cache_position, k_cache, v_cache, attn_mask, scale,
            o_weight, o_bias, add_residual, num_heads, qk_nope_head_dim, v_head_dim)
    if impl == "reference":
        return mla_decode_reference(*args)
    if impl != "kernel":
        raise ValueError(f"{OP_NAME}: unknown impl {impl!r}")
    if any(b is not None for b in (*q_biases, kv_a_bias, kv_b_bias, o_bias)):
        raise ValueError(f"{OP_NAME}: the MLA kernel takes no projection biases (the rewrite checks this first)")
    from cf_compile_kernels import mla as kernels

    out = torch.empty_like(x)
    kernels.mla_decode(
        x, norm_weight, norm_eps, norm_kind, list(q_weights), q_norm_weight, q_norm_eps, kv_a_weight,
        kv_norm_weight, kv_norm_eps, kv_b_weight, rope_form, cos, sin, freqs_cis, cache_position, k_cache,
        v_cache, attn_mask, scale, o_weight, add_residual, num_heads, qk_nope_head_dim, v_head_dim, out,
    )
    return out


@mla_decode.register_fake
def _(x, norm_weight, norm_eps, norm_kind, q_weights, q_biases, q_norm_weight, q_norm_eps,
      kv_a_weight, kv_a_bias, kv_norm_weight, kv_norm_eps, kv_b_weight, kv_b_bias,
      rope_form, cos, sin, freqs_cis, cache_position, k_cache, v_cache, attn_mask, scale,
      o_weight, o_bias, add_residual, num_heads, qk_nope_head_dim, v_head_dim, impl):
    return x.new_empty((*x.shape[:-1], o_weight.shape[0]))


def mla_decode_call(*, freqs_cis: Tensor | None = None, impl: str, **kwargs) -> Tensor:
    """The call the rewrite inserts for the opaque op (and the accuracy tool makes): the reference's
    keyword arguments, with a complex ``freqs_cis`` handed over as its real view."""
    real = torch.view_as_real(freqs_cis) if freqs_cis is not None and freqs_cis.is_complex() else freqs_cis
    return torch.ops.clusterfusion.mla_decode.default(freqs_cis=real, impl=impl, **kwargs)
