"""Hugging Face decoder models by name, with random weights: the shapes of real checkpoints, no downloads.

The CLI, the examples and the tests all build their models here, so "llama3-8b" means the same shapes
everywhere. ``size="full"`` copies the real checkpoint's config (hidden, heads, KV heads, head_dim,
intermediate, vocab, RoPE, eps, biases, tied embeddings); ``size="tiny"`` keeps the block *structure*
that the pattern matcher and the kernels care about (GQA or not, qkv bias, q/k norm, norm kind,
activation, fused projections, RoPE type) at hidden 128 and 2 layers, with head_dim 64 so the tiny
models still fit the Hopper kernels' supported head dims on a GPU. ``size="small"`` is the same
structure at hidden 512 and 4 layers: big enough that a CPU demo spends its time in the blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

Size = Literal["tiny", "small", "full"]
SIZES = ("tiny", "small", "full")

# Reduced sizes: the structure of the checkpoint (see config_kwargs), these dimensions.
REDUCED = {
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, head_dim=64,
                 vocab_size=512),
    "small": dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=8,
                  head_dim=64, vocab_size=8192),
}


@dataclass(frozen=True)
class ModelSpec:
    """One named model: its HF config class, the checkpoint it copies, and that checkpoint's config."""

    config_class: str
    checkpoint: str                  # for people: whose config.json ``full`` copies (never downloaded)
    full: dict[str, Any]
    reduced: dict[str, Any] = field(default_factory=dict)   # extra overrides for the tiny and small sizes


_LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}

SPECS: dict[str, ModelSpec] = {
    "llama2-7b": ModelSpec("LlamaConfig", "meta-llama/Llama-2-7b-hf", dict(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, head_dim=128, vocab_size=32000, max_position_embeddings=4096,
        rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False)),
    "llama3-8b": ModelSpec("LlamaConfig", "meta-llama/Meta-Llama-3-8B", dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, vocab_size=128256, max_position_embeddings=8192,
        rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        tie_word_embeddings=False)),
    "llama3.2-1b": ModelSpec("LlamaConfig", "meta-llama/Llama-3.2-1B", dict(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, vocab_size=128256, max_position_embeddings=131072,
        rms_norm_eps=1e-5, rope_parameters=_LLAMA3_ROPE, tie_word_embeddings=True)),
    "qwen2.5-0.5b": ModelSpec("Qwen2Config", "Qwen/Qwen2.5-0.5B", dict(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, tie_word_embeddings=True)),
    "qwen2-7b": ModelSpec("Qwen2Config", "Qwen/Qwen2-7B", dict(
        hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, vocab_size=152064, max_position_embeddings=32768, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, tie_word_embeddings=False)),
    "qwen3-8b": ModelSpec("Qwen3Config", "Qwen/Qwen3-8B", dict(
        hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=40960,
        rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        attention_bias=False, tie_word_embeddings=False)),
    "qwen3-0.6b": ModelSpec("Qwen3Config", "Qwen/Qwen3-0.6B", dict(
        hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
        num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=40960,
        rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        attention_bias=False, tie_word_embeddings=True)),
    "mistral-7b": ModelSpec("MistralConfig", "mistralai/Mistral-7B-v0.3", dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, vocab_size=32768, max_position_embeddings=32768,
        rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        sliding_window=None, tie_word_embeddings=False)),
    "phi3-mini": ModelSpec("Phi3Config", "microsoft/Phi-3-mini-4k-instruct", dict(
        hidden_size=3072, intermediate_size=8192, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096,
        original_max_position_embeddings=4096, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, sliding_window=2047,
        bos_token_id=1, eos_token_id=32000, pad_token_id=32000, tie_word_embeddings=False),
        reduced=dict(pad_token_id=0, eos_token_id=2)),     # special tokens inside the reduced vocab
    "gemma-2b": ModelSpec("GemmaConfig", "google/gemma-2b", dict(
        hidden_size=2048, intermediate_size=16384, num_hidden_layers=18, num_attention_heads=8,
        num_key_value_heads=1, head_dim=256, vocab_size=256000, max_position_embeddings=8192,
        rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        hidden_act="gelu_pytorch_tanh", tie_word_embeddings=True)),
    "deepseek-v2-lite": ModelSpec("DeepseekV2Config", "deepseek-ai/DeepSeek-V2-Lite", dict(
        hidden_size=2048, intermediate_size=10944, moe_intermediate_size=1408, num_hidden_layers=27,
        num_attention_heads=16, num_key_value_heads=16, n_routed_experts=64, n_shared_experts=2,
        num_experts_per_tok=6, first_k_dense_replace=1, kv_lora_rank=512, q_lora_rank=None,
        qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, head_dim=64, vocab_size=102400,
        max_position_embeddings=163840, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=False),
        # reduced sizes keep MLA (latent 64, nope 32, rope 16, v 32) and a dense MLP in every layer
        reduced=dict(kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32, head_dim=16,
                  first_k_dense_replace=99, n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2,
                  moe_intermediate_size=64)),
}

# Family names pick one representative checkpoint ("llama" is the quickstart's GPU model).
ALIASES = {"llama": "llama3.2-1b", "llama2": "llama2-7b", "llama3": "llama3-8b", "qwen2": "qwen2-7b",
           "qwen2.5": "qwen2.5-0.5b", "qwen3": "qwen3-8b", "mistral": "mistral-7b", "phi3": "phi3-mini",
           "gemma": "gemma-2b", "deepseek": "deepseek-v2-lite", "deepseek-v2": "deepseek-v2-lite"}

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def model_names() -> list[str]:
    """Every accepted name, aliases included, sorted."""
    return sorted({*SPECS, *ALIASES})


def resolve(name: str) -> str:
    """Canonical spec name for ``name`` (case-insensitive); ValueError listing the choices otherwise."""
    key = name.lower()
    key = ALIASES.get(key, key)
    if key not in SPECS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(model_names())}")
    return key


def config_kwargs(name: str, size: Size = "tiny") -> dict[str, Any]:
    """The config keyword arguments of ``name`` at ``size`` (the table the config is built from)."""
    spec = SPECS[resolve(name)]
    kwargs = dict(spec.full)
    if size == "full":
        return kwargs
    if size not in REDUCED:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    dims = REDUCED[size]
    heads = dims["num_attention_heads"]
    # MHA stays MHA; GQA/MQA keeps the smallest KV head count that is still grouped
    kv_heads = heads if kwargs["num_key_value_heads"] == kwargs["num_attention_heads"] else max(1, heads // 4)
    kwargs.update(dims, num_key_value_heads=kv_heads)
    if spec.config_class in ("Qwen2Config", "Phi3Config"):
        kwargs.pop("head_dim")   # these configs derive head_dim = hidden / heads (64 here as well)
    kwargs.update(spec.reduced)
    return kwargs


def build_config(name: str, size: Size = "tiny") -> Any:
    """A ``transformers`` config object for ``name`` at ``size``."""
    import transformers

    spec = SPECS[resolve(name)]
    return getattr(transformers, spec.config_class)(**config_kwargs(name, size))


def head_dim(config: Any) -> int:
    """Attention head width of an HF config: its ``head_dim`` when set, else hidden / heads (Qwen2, Phi-3)."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def build_model(name: str, size: Size = "tiny", dtype: torch.dtype | str = torch.float32,
                device: torch.device | str = "cpu", seed: int = 0) -> Any:
    """A causal LM with random weights (seeded), in eval mode, on ``device`` in ``dtype``; ``size`` is
    "tiny", "small" or "full" (module docstring).

    Weights are created directly on ``device`` (a full-size model would take minutes to initialise on
    the CPU and then copy); ``device="meta"`` gives the shapes without memory.
    """
    from transformers import AutoModelForCausalLM

    if isinstance(dtype, str):
        dtype = parse_dtype(dtype)
    config = build_config(name, size)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def parse_dtype(name: str) -> torch.dtype:
    """"bf16" | "fp16" | "fp32" (or a torch dtype name such as "bfloat16") -> torch.dtype."""
    if name in DTYPES:
        return DTYPES[name]
    value = getattr(torch, name, None)
    if isinstance(value, torch.dtype):
        return value
    raise ValueError(f"unknown dtype {name!r}; choose from {', '.join(DTYPES)}")
