"""Eager-equivalent building blocks of the reference implementations.

Each function performs the same torch operations, in the same order and dtypes, as the Hugging Face
module it stands for, so that the reference path rounds exactly where eager rounds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NORM_KINDS = ("weight", "unit_offset")
ACTIVATIONS = ("silu", "gelu_tanh", "gelu")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, kind: str) -> torch.Tensor:
    """LlamaRMSNorm ("weight") or GemmaRMSNorm ("unit_offset"); statistics in fp32."""
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    if kind == "weight":
        return weight * h.to(x.dtype)
    if kind == "unit_offset":
        return (h * (1.0 + weight.float())).type_as(x)
    raise ValueError(f"unknown norm kind {kind!r}; expected one of {NORM_KINDS}")


def rotate_half(t: torch.Tensor) -> torch.Tensor:
    half = t.shape[-1] // 2
    return torch.cat((-t[..., half:], t[..., :half]), dim=-1)


def neox_rope(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return t * cos + rotate_half(t) * sin


def activation(x: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "silu":
        return F.silu(x)
    if kind == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    if kind == "gelu":
        return F.gelu(x)
    raise ValueError(f"unknown activation {kind!r}; expected one of {ACTIVATIONS}")


def repeat_kv(cache: torch.Tensor, groups: int) -> torch.Tensor:
    """HF's repeat_kv: [B, KVH, L, D] -> [B, KVH * groups, L, D] (query head h reads kv head h // groups)."""
    if groups == 1:
        return cache
    b, kvh, seq, d = cache.shape
    return cache[:, :, None, :, :].expand(b, kvh, groups, seq, d).reshape(b, kvh * groups, seq, d)
