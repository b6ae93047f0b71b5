"""Custom ops for the fused blocks (namespace ``clusterfusion``); importing registers them."""

from cf_compile.ops.attention import attention_decode, attention_decode_reference
from cf_compile.ops.ffn import gated_ffn, gated_ffn_reference

__all__ = ["attention_decode", "attention_decode_reference", "gated_ffn", "gated_ffn_reference"]
