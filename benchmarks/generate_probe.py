"""Why generate() per token differs from the decode step: what each compiled graph of a generate() call got.

    PYTHONPATH=. python3 benchmarks/generate_probe.py --model qwen2.5-0.5b --tokens 32

For each backend (clusterfusion, Inductor reduce-overhead) through HF's ``compile_config``: the graphs Dynamo
compiled (their non-parameter inputs: shape, device), whether the lean CUDA-graph runner took them (and why
not), CUDA graphs captured, ms per new token (a generation of N tokens minus one of 1), and the host time of the
decode loop against its GPU time (torch profiler over one generation: busy kernel time per token).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    import transformers

    from benchmarks.e2e import generate_runner, ms_per_new_token
    from cf_compile import backend as cf_backend
    from cf_compile.cudagraph import captures
    from cf_compile.models import build_model
    from cf_compile.report import reports

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="qwen2.5-0.5b")
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--prompt", type=int, default=64)
    args = p.parse_args()
    model = build_model(args.model, "full", dtype=torch.bfloat16, device="cuda")
    cfg = model.config
    ids = torch.randint(0, cfg.vocab_size, (1, args.prompt), device="cuda")
    graphs: list[dict] = []
    real_backend = cf_backend.clusterfusion

    def spy(gm, example_inputs, **kw):
        graphs.append({"inputs": [(tuple(a.shape), str(a.device)) if isinstance(a, torch.Tensor) else type(a).__name__
                                  for a in example_inputs if not isinstance(a, torch.nn.Parameter)][:16],
                       "can_capture": cf_backend.can_capture(example_inputs)})
        return real_backend(gm, example_inputs, **kw)

    for label, backend, mode in [("ours", spy, None), ("inductor", "inductor", "reduce-overhead")]:
        torch._dynamo.reset()
        graphs.clear()
        cache = transformers.StaticCache(config=cfg, max_cache_len=args.prompt + args.tokens + 8)
        cc = transformers.CompileConfig(backend=backend, fullgraph=True, mode=mode)
        run = generate_runner(model, ids, cache, cc)
        c0 = captures()
        ms = ms_per_new_token(run, args.tokens, tries=3)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            run(args.tokens)
        busy = sum(e.device_time for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
        row = {"backend": label, "ms_per_token": round(ms, 3),
               "gpu_busy_ms_per_token": round(busy / 1e3 / args.tokens, 3),
               "graphs": len(graphs), "captures": captures() - c0}
        if label == "ours":
            row["graph_inputs"] = graphs
            row["cuda_graph_per_report"] = [bool(r.cuda_graph) for r in reports()[-len(graphs):]] if graphs else []
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
