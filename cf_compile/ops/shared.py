"""``clusterfusion::shared_input``: one realised copy of a per-step table that every fused op reads.

Inductor hands an extern kernel (our fused ops) an input that is still an unrealised computation by copying
it into a fresh buffer for that kernel alone (``ExternKernel.require_exact_strides`` -> ``copy_input``): the
24 attention ops of a Qwen2.5-0.5B step recomputed the step's cos, sin and mask 24 times, two extra
Triton kernels per layer (H100 profile, 2026-11-23). The rewrite routes each such table through this op
once per graph; its output is a realised buffer with fixed strides, which every fused op then reads as is.
"""

from __future__ import annotations

import torch
from torch import Tensor

OP_NAME = "clusterfusion::shared_input"


@torch.library.custom_op(OP_NAME, mutates_args=())
def shared_input(t: Tensor) -> Tensor:
    """A contiguous copy of ``t`` (a custom op's output may not alias its input)."""
    return t.clone(memory_format=torch.contiguous_format)


@shared_input.register_fake
def _(t: Tensor) -> Tensor:
    return t.new_empty(t.shape)
