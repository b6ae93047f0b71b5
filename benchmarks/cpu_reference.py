"""Where no cluster kernel runs (CPU, pre-Hopper GPUs): is a rewritten graph as fast as Inductor's?

The backend's choice there is to inline the reference implementation into the graph so Inductor
compiles it like the original code. This benchmark measures that choice against Inductor on the
untouched graph, and against the alternative (an opaque op calling plain torch, kernels="reference").
Decode step of a small random Llama (fp32, batch 1), median of many steps, wall clock.

    python -m benchmarks.cpu_reference [--layers 4] [--hidden 512] [--steps 40] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import transformers

from benchmarks import results


def decode_step_us(model, cfg, step_fn, steps: int, prompt: int = 64, max_cache_len: int = 256) -> float:
    cache = transformers.StaticCache(config=cfg, max_cache_len=max_cache_len)
    ids = torch.randint(0, cfg.vocab_size, (1, prompt))
    times = []
    with torch.no_grad():
        nxt = model(ids, past_key_values=cache).logits[:, -1:].argmax(-1)
        for i in range(steps + 5):
            t0 = time.perf_counter()
            nxt = step_fn(nxt, past_key_values=cache).logits[:, -1:].argmax(-1)
            if i >= 5:     # the first calls compile
                times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    cfg = transformers.LlamaConfig(vocab_size=1024, hidden_size=a.hidden, intermediate_size=int(a.hidden * 2.6875),
                                   num_hidden_layers=a.layers, num_attention_heads=8, num_key_value_heads=4)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()

    def compiled(**kw):
        torch._dynamo.reset()
        return torch.compile(model.forward, fullgraph=True, **kw)

    variants = {
        "eager": model.forward,
        "inductor": compiled(backend="inductor"),
        "ours": compiled(backend="clusterfusion"),
        "opaque": compiled(backend="clusterfusion", options={"kernels": "reference"}),
    }
    # round robin, best median per variant: a busy 2-core machine skews one long run per variant
    best = {k: float("inf") for k in variants}
    for _ in range(a.rounds):
        for name, fn in variants.items():
            best[name] = min(best[name], decode_step_us(model, cfg, fn, a.steps))
    eager, inductor, ours, opaque = (best[k] for k in ("eager", "inductor", "ours", "opaque"))
    config = dict(model="llama-small", hidden=a.hidden, layers=a.layers, batch=1, seq=64, dtype="float32",
                  threads=torch.get_num_threads())
    row = results.make_row("cpu-reference", config, ours_us=ours, inductor_us=inductor, eager_us=eager,
                           reference_op_us=opaque)
    results.append([row], title="Reference path on CPU: inlined reference vs Inductor (benchmarks/cpu_reference.py)",
                   method="Decode step of a random small Llama, fp32, batch 1, 64 cached tokens; wall-clock median "
                          f"of {a.steps} steps after 5 warm-up steps, best of {a.rounds} round-robin rounds. ours = clusterfusion with kernels='auto' "
                          "(no kernel on CPU: reference inlined and compiled by Inductor); reference_op = "
                          "kernels='reference' (opaque op running plain torch).",
                   columns=["config.model", "config.hidden", "config.layers", "config.threads", "eager_us",
                            "inductor_us", "ours_us", "reference_op_us"])
    print(f"eager {eager:.0f} us | inductor {inductor:.0f} us | clusterfusion (inlined reference) {ours:.0f} us "
          f"({ours / inductor:.2f}x Inductor) | opaque reference op {opaque:.0f} us ({opaque / inductor:.2f}x)")


if __name__ == "__main__":
    main()
