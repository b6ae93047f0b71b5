"""The fused gated-FFN op: schema, fake, eager-equivalent reference and kernel dispatch.

RMSNorm -> gate and up projections (separate or one fused weight split by ``chunk(2)``) ->
act(gate) * up -> down projection [-> + residual].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cf_compile.ops.numerics import activation, rms_norm

OP_NAME = "clusterfusion::gated_ffn"


def gated_ffn_reference(
    x: Tensor, norm_weight: Tensor, norm_eps: float, norm_kind: str,
    gate_up_weights: list[Tensor], gate_up_biases: list[Tensor | None],
    down_weight: Tensor, down_bias: Tensor | None, act: str, add_residual: bool,
) -> Tensor:
    """Plain-torch gated FFN with eager's rounding points (runs anywhere; Inductor can trace it)."""
    h = rms_norm(x, norm_weight, norm_eps, norm_kind)
    if len(gate_up_weights) == 1:
        gate, up = F.linear(h, gate_up_weights[0], gate_up_biases[0]).chunk(2, dim=-1)
    else:
        gate = F.linear(h, gate_up_weights[0], gate_up_biases[0])
        up = F.linear(h, gate_up_weights[1], gate_up_biases[1])
    out = F.linear(activation(gate, act) * up, down_weight, down_bias)
    return x + out if add_residual else out


@torch.library.custom_op(OP_NAME, mutates_args=())
def gated_ffn(
    x: Tensor, norm_weight: Tensor, norm_eps: float, norm_kind: str,
    gate_up_weights: list[Tensor], gate_up_biases: list[Tensor | None],
    down_weight: Tensor, down_bias: Tensor | None, act: str, add_residual: bool, impl: str,
) -> Tensor:
    """``impl`` is "kernel" (the cluster kernel; CUDA sm_90+) or "reference" (plain torch)."""
    if impl == "reference":
        return gated_ffn_reference(x, norm_weight, norm_eps, norm_kind, gate_up_weights, gate_up_biases,
                                   down_weight, down_bias, act, add_residual)
    if impl != "kernel":
        raise ValueError(f"{OP_NAME}: unknown impl {impl!r}")
    from cf_compile_kernels import ffn as kernels

    out = torch.empty_like(x)
    kernels.gated_ffn(x, norm_weight, norm_eps, norm_kind, list(gate_up_weights), down_weight, act,
                      add_residual, out)
    return out


@gated_ffn.register_fake
def _(x, norm_weight, norm_eps, norm_kind, gate_up_weights, gate_up_biases, down_weight, down_bias, act,
      add_residual, impl):
    return x.new_empty((*x.shape[:-1], down_weight.shape[0]))
