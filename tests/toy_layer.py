"""A hand-written HF-style decoder layer whose parts can be swapped for near-miss tests.

The default configuration computes exactly what LlamaDecoderLayer computes for one decode step over
a static cache (so the matcher must fuse it); each knob replaces one idiom with something the
backend must refuse to fuse.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ToyConfig:
    hidden: int = 64
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 16
    intermediate: int = 96
    norm: str = "rms"            # "rms" | "layer"
    rope: str = "neox"           # "neox" | "interleaved" | "partial"
    mask: bool = True            # False: SDPA over the whole cache without a mask
    norm_shared: bool = False    # the normed input is also returned (used outside the block)
    mlp: str = "gated"           # "gated" | "plain" | "softcap" (tanh soft-cap before down_proj)
    eager_attention: bool = False   # matmul + softcap + softmax instead of SDPA


class ToyLayer(nn.Module):
    def __init__(self, cfg: ToyConfig):
        super().__init__()
        self.cfg = cfg
        h, d = cfg.hidden, cfg.head_dim
        self.norm1 = nn.Parameter(torch.rand(h) + 0.5)
        self.norm2 = nn.Parameter(torch.rand(h) + 0.5)
        self.q = nn.Linear(h, cfg.heads * d, bias=False)
        self.k = nn.Linear(h, cfg.kv_heads * d, bias=False)
        self.v = nn.Linear(h, cfg.kv_heads * d, bias=False)
        self.o = nn.Linear(cfg.heads * d, h, bias=False)
        self.gate = nn.Linear(h, cfg.intermediate, bias=False)
        self.up = nn.Linear(h, cfg.intermediate, bias=False)
        self.down = nn.Linear(cfg.intermediate, h, bias=False)

    def _norm(self, x, w):
        if self.cfg.norm == "layer":
            return F.layer_norm(x, (x.shape[-1],), w)
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
        return w * h.to(x.dtype)

    def _rope(self, t, cos, sin):
        if self.cfg.rope == "interleaved":
            x1, x2 = t[..., ::2], t[..., 1::2]
            rot = torch.stack((-x2, x1), dim=-1).flatten(-2)
            return t * cos + rot * sin
        if self.cfg.rope == "partial":
            r = t.shape[-1] // 2
            t_rot, t_pass = t[..., :r], t[..., r:]
            c, s = cos[..., :r], sin[..., :r]
            rot = torch.cat((-t_rot[..., r // 2:], t_rot[..., : r // 2]), dim=-1)
            return torch.cat((t_rot * c + rot * s, t_pass), dim=-1)
        half = t.shape[-1] // 2
        return t * cos + torch.cat((-t[..., half:], t[..., :half]), dim=-1) * sin

    def forward(self, x, cos, sin, cache_position, k_cache, v_cache, mask):
        cfg, b = self.cfg, x.shape[0]
        n = self._norm(x, self.norm1)
        q = self.q(n).view(b, 1, -1, cfg.head_dim).transpose(1, 2)
        k = self.k(n).view(b, 1, -1, cfg.head_dim).transpose(1, 2)
        v = self.v(n).view(b, 1, -1, cfg.head_dim).transpose(1, 2)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
        k_cache.index_copy_(2, cache_position, k)
        v_cache.index_copy_(2, cache_position, v)
        g = cfg.heads // cfg.kv_heads
        seq = k_cache.shape[2]
        kk = k_cache[:, :, None, :, :].expand(b, cfg.kv_heads, g, seq, cfg.head_dim).reshape(b, cfg.heads, seq, -1)
        vv = v_cache[:, :, None, :, :].expand(b, cfg.kv_heads, g, seq, cfg.head_dim).reshape(b, cfg.heads, seq, -1)
        if cfg.eager_attention:
            scores = torch.matmul(q, kk.transpose(2, 3)) * cfg.head_dim ** -0.5
            scores = torch.tanh(scores / 50.0) * 50.0
            scores = scores.masked_fill(~mask, float("-inf"))
            a = torch.matmul(torch.softmax(scores, dim=-1), vv)
        else:
            a = F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask if cfg.mask else None,
                                               scale=cfg.head_dim ** -0.5)
        a = a.transpose(1, 2).reshape(b, 1, -1)
        x = x + self.o(a)
        m = self._norm(x, self.norm2)
        if cfg.mlp == "plain":
            y = self.down(F.gelu(self.gate(m)))
        elif cfg.mlp == "softcap":
            y = self.down(torch.tanh(F.silu(self.gate(m)) * self.up(m) / 30.0) * 30.0)
        else:
            y = self.down(F.silu(self.gate(m)) * self.up(m))
        out = x + y
        return (out, n) if cfg.norm_shared else out


def toy_inputs(cfg: ToyConfig, batch: int = 1, seq: int = 16, pos: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 1, cfg.hidden, generator=g)
    inv = 1.0 / (10000 ** (torch.arange(0, cfg.head_dim, 2).float() / cfg.head_dim))
    freqs = torch.cat([pos * inv, pos * inv])[None, None, :].expand(batch, 1, cfg.head_dim)
    k_cache = torch.randn(batch, cfg.kv_heads, seq, cfg.head_dim, generator=g)
    v_cache = torch.randn(batch, cfg.kv_heads, seq, cfg.head_dim, generator=g)
    mask = (torch.arange(seq) <= pos)[None, None, None, :].expand(batch, 1, 1, seq)
    return [x, freqs.cos(), freqs.sin(), torch.tensor([pos]), k_cache, v_cache, mask]
