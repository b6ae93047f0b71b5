"""``model.generate`` with the clusterfusion backend: the zero-code integration, as a user writes it.

    python examples/generate.py [--model llama] [--size tiny|small|full] [--tokens 32] [--device cpu|cuda]

``generate`` compiles the decode step itself when the cache is a StaticCache; ``compile_config`` names
the backend. Prefill stays eager. Random weights, nothing downloaded (``cf_compile.models``).
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import CompileConfig

from cf_compile.accuracy import ensure_backend
from cf_compile.models import build_model, model_names


def timed_generate(model, prompt: torch.Tensor, tokens: int, **kwargs) -> tuple[torch.Tensor, float]:
    if prompt.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=tokens, min_new_tokens=tokens,
                         do_sample=False, cache_implementation="static", pad_token_id=0, **kwargs)
    if prompt.is_cuda:
        torch.cuda.synchronize()
    return out[:, prompt.shape[1]:], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="llama", choices=model_names())
    parser.add_argument("--size", default=None, choices=("tiny", "small", "full"),
                        help="default: full on cuda, small on cpu")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    args = parser.parse_args()
    size = args.size or ("full" if args.device == "cuda" else "small")
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    model = build_model(args.model, size, dtype, args.device)
    prompt = torch.randint(0, model.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
    prompt = prompt.to(args.device)

    # mode=None: a custom backend gets Inductor's default mode (HF's default is "reduce-overhead", and
    # torch.compile refuses mode= together with options=); fullgraph=True: a graph break is an error.
    compile_config = CompileConfig(backend="clusterfusion", mode=None, fullgraph=True, options={"report": True})
    # HF compiles the decode step only on CUDA unless told otherwise (a private flag, transformers 5.x):
    # on a CPU this is what makes the example compile at all.
    compile_config._compile_all_devices = True
    ensure_backend()   # the entry point names the backend once pip-installed; this covers a source checkout

    eager, eager_s = timed_generate(model, prompt, args.tokens, disable_compile=True)
    compiled, first_s = timed_generate(model, prompt, args.tokens, compile_config=compile_config)  # compiles
    compiled, steady_s = timed_generate(model, prompt, args.tokens, compile_config=compile_config)

    same = (compiled == eager).float().mean().item()
    print(f"{args.model} ({size}, {str(dtype)[6:]}, {args.device}): {args.tokens} greedy tokens, "
          f"{same:.0%} identical to eager generate")
    print(f"eager generate:    {1e3 * eager_s / args.tokens:8.2f} ms/token (prefill included)")
    print(f"compiled generate: {1e3 * steady_s / args.tokens:8.2f} ms/token (prefill included; "
          f"first call with compilation {first_s:.1f} s)")


if __name__ == "__main__":
    main()
