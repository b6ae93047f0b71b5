"""Quickstart: greedy decoding of a HF causal LM, eager vs ``torch.compile(backend="clusterfusion")``.

    python examples/quickstart.py [--model llama] [--tokens 32] [--device cpu|cuda]

The model is built from its config class with random weights (nothing is downloaded): Llama-3.2-1B
shapes in bf16 on a GPU, a 4-layer hidden-512 Llama-shaped model in fp32 on a CPU (so that the run,
compilation included, stays within a couple of minutes on two cores). The script prints

1. the match report: which attention and FFN blocks were fused, and with which implementation;
2. the accuracy diff, compact: compiled vs eager (and both vs an fp32 copy), per output and per op;
3. time per token of eager and compiled decoding, with compilation timed apart from steady state
   (``--inductor`` adds plain ``backend="inductor"``: what the fusion adds over Inductor alone).

On a machine without a Hopper GPU the fused ops run their plain-torch reference (which Inductor
compiles), so the speed is Inductor's: the kernels need sm_90.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import StaticCache

from cf_compile.accuracy import compare, ensure_backend
from cf_compile.models import build_model, model_names
from cf_compile.report import reports


def kernels_status(device: str) -> tuple[bool, str]:
    """(available, reason) from the kernel package; a missing or broken package is a reason, not a crash."""
    try:
        from cf_compile_kernels import kernels_available
    except Exception as e:
        return False, f"kernel package not importable ({type(e).__name__}: {e})"
    return kernels_available(torch.device(device))


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def decode(model, step, prompt: torch.Tensor, tokens: int, cache_len: int, device: str):
    """Eager prefill, then ``tokens`` greedy decode steps through ``step``; (tokens, seconds per step)."""
    cache = StaticCache(config=model.config, max_cache_len=cache_len)
    out, times = [], []
    with torch.no_grad():
        token = model(prompt, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)
        for _ in range(tokens):
            sync(device)
            start = time.perf_counter()
            logits = step(token, past_key_values=cache, use_cache=True).logits
            token = logits[:, -1:].argmax(-1)
            sync(device)
            times.append(time.perf_counter() - start)
            out.append(token)
    return torch.cat(out, dim=1), times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="llama", choices=model_names())
    parser.add_argument("--tokens", type=int, default=32, help="tokens to generate (default 32)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    parser.add_argument("--inductor", action="store_true", help="also time plain backend='inductor'")
    args = parser.parse_args()
    if args.tokens < 2:
        parser.error("--tokens must be >= 2 (the first compiled step is compilation)")

    ok, why = kernels_status(args.device)
    if not ok:
        print(f"No Hopper kernels here ({why}): the fused ops run their plain-torch reference path.")
    size, dtype = ("full", torch.bfloat16) if args.device == "cuda" else ("small", torch.float32)
    model = build_model(args.model, size, dtype, args.device)
    cfg = model.config
    print(f"{args.model} ({size}): {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters, {str(dtype)[6:]}, {args.device}")
    prompt = torch.randint(0, cfg.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0)).to(args.device)
    cache_len = -(-(prompt.shape[1] + args.tokens + 1) // 64) * 64   # pinned: a new length would recompile

    eager_tokens, eager_times = decode(model, model.forward, prompt, args.tokens, cache_len, args.device)

    torch._dynamo.reset()
    ensure_backend()   # the entry point names the backend once pip-installed; this covers a source checkout
    compiled = torch.compile(model.forward, backend="clusterfusion", options={"report": True})
    tokens, times = decode(model, compiled, prompt, args.tokens, cache_len, args.device)  # step 0 compiles

    differ = (tokens != eager_tokens).any(dim=0).nonzero()
    if len(differ) == 0:
        print(f"greedy tokens: all {args.tokens} identical to eager")
    else:   # random weights give near-tied logits: one flip changes every later token
        print(f"greedy tokens: first {int(differ[0])} of {args.tokens} identical to eager; the calibrated "
              f"diff below says whether that is more than the model's own rounding")
    graphed = any(getattr(r, "cuda_graph", False) for r in reports()[-1:])

    print()
    compare(model, prompt, steps=min(args.tokens, 16), max_cache_len=cache_len, name=args.model).render(compact=True)

    rows = [("eager", eager_times), ("clusterfusion" + (" + CUDA graph" if graphed else ""), times)]
    if args.inductor:
        torch._dynamo.reset()
        rows.append(("inductor (default mode)", decode(model, torch.compile(model.forward, backend="inductor"), prompt,
                                        args.tokens, cache_len, args.device)[1]))
    eager_ms = steady_ms(eager_times)
    print()
    for label, step_times in rows:
        ms = steady_ms(step_times)
        compile_s = "" if label == "eager" else f"  compilation (first step) {step_times[0]:.1f} s"
        print(f"{label:>28}: {ms:8.2f} ms/token ({1e3 / ms:7.1f} tokens/s, {eager_ms / ms:.2f}x eager){compile_s}")


def steady_ms(step_times: list[float]) -> float:
    """Mean of every step but the first (eager: warm-up; compiled: compilation)."""
    return 1e3 * sum(step_times[1:]) / (len(step_times) - 1)


if __name__ == "__main__":
    main()
