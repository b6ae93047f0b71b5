"""HF decode step end to end: eager vs Inductor (two ways) vs clusterfusion vs the HBM floor, one run.

    PYTHONPATH=. python3 benchmarks/e2e.py --models qwen2.5-0.5b llama3.2-1b --rows-out rows.json
    python3 benchmarks/e2e.py --append rows.json     # on the CPU machine: rows -> results.jsonl/RESULTS.md

Per model (random weights from its config, static cache, prompt of --prompt tokens prefilled eagerly):
  eager            model.forward, one token per call
  reduce_overhead  torch.compile(mode="reduce-overhead") (CUDA-graph trees)
  inductor         torch.compile(mode="max-autotune-no-cudagraphs"), captured once in a plain CUDA graph
                   and replayed (`inductor_plain_graph_us`; usually the strongest Inductor form). The row's
                   `inductor_us` is the stronger of it and reduce_overhead (at batch 4 reduce-overhead won)
  ours             torch.compile(backend="clusterfusion") with its lean CUDA-graph runner
Decode step time: --steps calls back to back between two CUDA events (host work included, so launch
gaps and host overhead count), per call; median of --repeats such loops. `inductor_us` and `ours_us` are
then measured again in alternating rounds (each variant early and late alike: a later measurement in a run
came out 5-7% slower on the H100), which gives the row's figures; the first, sequential ones are kept in
`sequential_us`. The cache position moves
forward by one per call from --prompt. Floor: every parameter byte read once (the embedding: one row
per token) + the KV cache up to the position, over the device-to-device copy bandwidth measured here.
Kernels per step: torch.profiler over one un-graphed step of ours and of Inductor. Greedy agreement:
--agree tokens of greedy decoding, ours and Inductor each against eager in the same dtype.
generate(): model.generate with compile_config (Inductor: HF's default reduce-overhead; ours:
backend="clusterfusion"), time per new token from two generation lengths.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import results  # noqa: E402
from benchmarks.timing import copy_bandwidth  # noqa: E402

COLUMNS = ["config.model", "config.dtype", "config.batch", "eager_us", "reduce_overhead_us",
           "inductor_plain_graph_us", "inductor_us", "ours_us", "floor_us", "inductor_over_ours", "floor_over_ours",
           "ours_kernels", "inductor_kernels",
           "agree_ours", "agree_inductor", "generate_inductor_ms_per_token", "generate_ours_ms_per_token"]


def floor_bytes(model, cfg, batch: int, position: int) -> int:
    emb = model.get_input_embeddings().weight
    params = sum(p.numel() * p.element_size() for p in model.parameters() if p is not emb)
    params += batch * emb.shape[1] * emb.element_size()
    if model.get_output_embeddings().weight is emb:        # tied: the LM head reads it in full
        params += emb.numel() * emb.element_size()
    from cf_compile.models import head_dim

    kv = 2 * cfg.num_hidden_layers * batch * cfg.num_key_value_heads * head_dim(cfg) * position * emb.element_size()
    return params + kv


class Session:
    """One model, fresh static cache per variant, prefilled eagerly."""

    def __init__(self, model, cfg, batch: int, prompt: int, max_cache_len: int):
        import transformers

        self.model, self.cfg, self.batch, self.prompt = model, cfg, batch, prompt
        self.max_cache_len = max_cache_len
        self.transformers = transformers
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, cfg.vocab_size, (batch, prompt), generator=g).cuda()

    @classmethod
    def for_model(cls, name: str, dtype: torch.dtype, batch: int, prompt: int, max_cache_len: int) -> Session:
        """A full-size model of cf_compile.models (random weights, built on the GPU) and its session."""
        from cf_compile.models import build_config, build_model

        model = build_model(name, "full", dtype=dtype, device="cuda")
        return cls(model, build_config(name, "full"), batch, prompt, max_cache_len)

    def compile(self, **kw):
        """torch.compile of the model's forward from a clean Dynamo state (each variant compiles its own graph;
        a step compiled earlier through Dynamo would recompile on its next call, a plain graph never does)."""
        torch._dynamo.reset()
        return torch.compile(self.model.forward, fullgraph=True, **kw)

    def fresh(self):
        cache = self.transformers.StaticCache(config=self.cfg, max_cache_len=self.max_cache_len)
        with torch.no_grad():
            logits = self.model(self.ids, past_key_values=cache, use_cache=True).logits
        return cache, logits[:, -1:].argmax(-1)

    def warmed(self, step, calls: int = 3):
        """A fresh cache at the prompt position, then ``calls`` steps (compiles, captures) and a sync."""
        cache, tok = self.fresh()
        with torch.no_grad():
            for _ in range(calls):
                step(tok, past_key_values=cache, use_cache=True)
        torch.cuda.synchronize()
        return cache, tok

    def time_step(self, step, steps: int, repeats: int) -> float:
        """Every variant walks the same positions: prompt + 3 warm-up steps, then repeats x steps."""
        cache, tok = self.warmed(step)
        with torch.no_grad():
            times = []
            for _ in range(repeats):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(steps):
                    step(tok, past_key_values=cache, use_cache=True)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) * 1e3 / steps)
        return statistics.median(times)

    def time_interleaved(self, steps_by_label: dict, steps: int, rounds: int) -> dict[str, float]:
        """time_step of every variant in turn, ``rounds`` times, each round starting one variant later; the
        median per variant. Back-to-back decode steps heat the GPU: on the H100 the later of two sequential
        measurements in one run came out 5-7% slower (Llama-3-8B, 2026-11-23), more than the difference being
        measured, so the row's figures come from rounds in which every variant runs early and late alike."""
        labels = list(steps_by_label)
        times: dict[str, list[float]] = {label: [] for label in labels}
        for r in range(rounds):
            for label in labels[r % len(labels):] + labels[: r % len(labels)]:
                times[label].append(self.time_step(steps_by_label[label], steps, 1))
        return {label: statistics.median(t) for label, t in times.items()}

    def greedy(self, step, tokens: int) -> torch.Tensor:
        cache, tok = self.fresh()
        out = []
        with torch.no_grad():
            for _ in range(tokens):
                out.append(tok)
                tok = step(tok, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)
        return torch.cat(out, 1)


def plain_graph_step(step, session: Session):
    """Capture ``step`` once in a plain CUDA graph over its own static cache and token buffer."""
    cache, tok = session.fresh()
    static_tok = tok.clone()
    with torch.no_grad():
        for _ in range(2):              # warm-up (and compile) outside the graph
            step(static_tok, past_key_values=cache, use_cache=True)
        cache, _ = session.fresh()      # the graph's own cache, at the prompt position
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = step(static_tok, past_key_values=cache, use_cache=True)

    def replay(tok, past_key_values=None, use_cache=True):
        # the graph owns its cache: the benchmark only needs the decode work, one token per call
        static_tok.copy_(tok)
        graph.replay()
        return out

    return replay


def step_kernels(step, session: Session, times: dict | None = None) -> Counter:
    """Device activities (kernels, memcpy, memset) of one un-graphed decode step, by name; ``times``, when
    given, receives each name's summed device time in microseconds (where the step's time goes)."""
    cache, tok = session.warmed(step, calls=1)
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        step(tok, past_key_values=cache, use_cache=True)
        torch.cuda.synchronize()
    names: Counter = Counter()
    for e in prof.events():
        if e.device_type != torch.autograd.DeviceType.CUDA:
            continue
        names[e.name[:60]] += 1
        if times is not None:   # FunctionEvent.device_time (torch >= 2.4), in microseconds
            times[e.name[:60]] = times.get(e.name[:60], 0.0) + float(getattr(e, "device_time", 0.0))
    return names


def time_breakdown(times: dict, top: int = 10) -> dict:
    """The busy time of a step (sum of its device activities) and its ``top`` activities by time."""
    ranked = sorted(times.items(), key=lambda kv: -kv[1])
    return {"busy_us": round(sum(times.values()), 1),
            "top_us": {name: round(us, 1) for name, us in ranked[:top]}}


def copies(names: Counter) -> int:
    """Copy activities of a step (memcpy nodes and copy kernels): a fused step must not copy a KV cache."""
    return sum(n for name, n in names.items() if "memcpy" in name.lower() or "copy" in name.lower())


def generate_runner(model, ids: torch.Tensor, cache, compile_config) -> Callable[[int], float]:
    """run(n): seconds of one ``model.generate`` of exactly n new tokens (greedy, HF's ``compile_config``) from
    ``cache`` reset in place -- a caller-owned StaticCache, as a serving loop keeps one: HF's internal static
    cache re-allocates its tensors on every generate() call, and a CUDA graph (ours or Inductor's) must then be
    captured again per call."""
    import time

    def run(n: int) -> float:
        cache.reset()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, past_key_values=cache,
                       compile_config=compile_config)
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    return run


def ms_per_new_token(run: Callable[[int], float], tokens: int, tries: int) -> float:
    """Decode time per new token: the best generation of ``tokens`` new tokens minus the best of 1 (prefill
    and first step), over tokens - 1 (after one untimed generation: compile and capture)."""
    run(tokens)
    long, short = min(run(tokens) for _ in range(tries)), min(run(1) for _ in range(tries))
    return (long - short) / (tokens - 1) * 1e3


def generate_ms_per_token(session: Session, backend: str, tokens: int) -> float:
    """``model.generate`` with HF's own compile (``compile_config``; Inductor: its reduce-overhead) through
    generate_runner, per new token (ms_per_new_token)."""
    cc = session.transformers.CompileConfig(backend=backend, fullgraph=True,
                                            mode="reduce-overhead" if backend == "inductor" else None)
    cache = session.transformers.StaticCache(config=session.cfg, max_cache_len=session.max_cache_len)
    torch._dynamo.reset()
    return ms_per_new_token(generate_runner(session.model, session.ids, cache, cc), tokens, tries=2)


def agreement(a: torch.Tensor, b: torch.Tensor) -> str:
    same = (a == b).all(0)
    first = int((~same).nonzero()[0]) if not bool(same.all()) else len(same)
    return f"{int(same.sum())}/{len(same)} (first diff {first})" if first < len(same) else f"{len(same)}/{len(same)}"


def bench_model(name: str, args, bandwidth: float) -> dict:
    from cf_compile.report import last_report

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    session = Session.for_model(name, dtype, args.batch, args.prompt, args.prompt + 64 + args.agree + 8 * args.steps)
    model, cfg, compiled = session.model, session.cfg, session.compile
    log = {}
    import time
    t_start = time.perf_counter()

    def stage(what: str, value: object = "") -> None:
        """One line per finished stage (a run cut by its time limit still shows how far it got and what it saw)."""
        print(f"[{name} {time.perf_counter() - t_start:6.0f} s] {what} {value}", flush=True)

    eager_us = session.time_step(model.forward, max(4, args.steps // 8), 3)
    ro = compiled(mode="reduce-overhead")
    stage("eager_us", f"{eager_us:.0f}")
    reduce_overhead_us = session.time_step(ro, args.steps, args.repeats)
    stage("reduce_overhead_us", f"{reduce_overhead_us:.0f}")
    ma = compiled(mode="max-autotune-no-cudagraphs")
    inductor_times: dict = {}
    inductor_kernels = sum(step_kernels(ma, session, inductor_times).values())
    log["inductor_time"] = time_breakdown(inductor_times)
    inductor_graph = plain_graph_step(ma, session)
    inductor_us = session.time_step(inductor_graph, args.steps, args.repeats)
    stage("inductor_us", f"{inductor_us:.0f} ({inductor_kernels} kernels)")
    agree_inductor_tokens = session.greedy(ma, args.agree)
    timed = {"inductor": inductor_graph}
    # the fused kernels on every matched block, whatever the auto policy says; un-graphed (a plain graph times it)
    all_options = {"kernels": "all", "cudagraphs": False, "mode": args.ours_mode}
    if args.kernels_all:  # compiled before ours_fn: a later compile's dynamo reset would make ours_fn recompile
        timed["ours_kernels_all"] = plain_graph_step(compiled(backend="clusterfusion", options=all_options), session)
    ours_fn = compiled(backend="clusterfusion", options={"mode": args.ours_mode} if args.ours_mode else None)
    ours_us = session.time_step(ours_fn, args.steps, args.repeats)
    stage("ours_us", f"{ours_us:.0f}")
    # the row's figures: both again in alternating rounds (no compile in between: torch._dynamo.reset() before a
    # later compile would make ours_fn recompile on its next call; the plain graph never calls dynamo)
    log["sequential_us"] = {"inductor": inductor_us, "ours": ours_us}
    both = session.time_interleaved({**timed, "ours": ours_fn}, args.steps, max(2, args.repeats))
    inductor_us, ours_us = both["inductor"], both["ours"]
    if "ours_kernels_all" in both:
        log["ours_kernels_all_us"] = both["ours_kernels_all"]
    stage("interleaved", ", ".join(f"{k}_us {v:.0f}" for k, v in both.items()))
    rep = last_report()
    log["coverage"] = rep.coverage() if rep else "?"
    log["implementations"] = sorted({r.implementation for r in rep.records}) if rep else []
    log["reasons"] = sorted({r.reason for r in rep.records if r.reason}) if rep else []
    agree_ours_tokens = session.greedy(ours_fn, args.agree)
    no_graph = compiled(backend="clusterfusion", options={"cudagraphs": False, "mode": args.ours_mode})
    ours_times: dict = {}
    ours_kernels = sum(step_kernels(no_graph, session, ours_times).values())
    log["ours_time"] = time_breakdown(ours_times)
    eager_tokens = session.greedy(model.forward, args.agree)
    stage("agreement", f"ours {agreement(agree_ours_tokens, eager_tokens)}, "
                       f"Inductor {agreement(agree_inductor_tokens, eager_tokens)}; ours {ours_kernels} kernels")
    if args.kernels_all:
        try:  # one un-graphed compile gives the greedy tokens and the kernel profile
            all_fn = compiled(backend="clusterfusion", options=all_options)
            log["agree_ours_kernels_all"] = agreement(session.greedy(all_fn, args.agree), eager_tokens)
            all_times: dict = {}
            names = step_kernels(all_fn, session, all_times)
            log["ours_kernels_all_time"] = time_breakdown(all_times)
            log["ours_kernels_all_kernels"] = sum(names.values())
            log["ours_kernels_all_copies"] = copies(names)
            log["ours_kernels_all_top"] = dict(names.most_common(8))
        except Exception as exc:  # keep the row
            log["ours_kernels_all_error"] = f"{type(exc).__name__}: {exc}"[:300]
    if args.accuracy_steps:   # the accuracy diff (teacher-forced, calibrated against fp32)
        from cf_compile.accuracy import compare

        try:
            acc = compare(model, session.ids[:, :64], steps=args.accuracy_steps,
                          options={"mode": args.ours_mode, "cudagraphs": False}, name=name)
            log["accuracy"] = acc.verdict()
            log["accuracy_ok"] = acc.ok
        except Exception as exc:  # keep the row
            log["accuracy"] = f"failed: {type(exc).__name__}: {exc}"[:300]
    if args.accuracy_steps:
        stage("accuracy", log.get("accuracy"))
    if args.generate:
        log["generate_inductor_ms_per_token"] = generate_ms_per_token(session, "inductor", args.generate)
        log["generate_ours_ms_per_token"] = generate_ms_per_token(session, "clusterfusion", args.generate)
    floor_us = floor_bytes(model, cfg, args.batch, args.prompt + args.steps // 2) / bandwidth * 1e6
    config = dict(model=name, batch=args.batch, seq=args.prompt, dtype=args.dtype, steps=args.steps)
    plain_graph_us, inductor_us = inductor_us, min(inductor_us, reduce_overhead_us)  # the strongest Inductor
    row = results.make_row("e2e", config, ours_us=ours_us, inductor_us=inductor_us,
                           inductor_plain_graph_us=plain_graph_us, eager_us=eager_us,
                           reduce_overhead_us=reduce_overhead_us, floor_us=floor_us,
                           inductor_over_ours=inductor_us / ours_us, floor_over_ours=floor_us / ours_us,
                           ours_kernels=ours_kernels, inductor_kernels=inductor_kernels,
                           agree_ours=agreement(agree_ours_tokens, eager_tokens),
                           agree_inductor=agreement(agree_inductor_tokens, eager_tokens), **log)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["qwen2.5-0.5b", "llama3.2-1b", "llama2-7b", "llama3-8b"])
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--prompt", type=int, default=512)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--agree", type=int, default=128)
    p.add_argument("--generate", type=int, default=64,
                   help="new tokens per generate() timing with compile_config (0: skip)")
    p.add_argument("--rows-out", type=Path)
    p.add_argument("--ours-mode", default="max-autotune-no-cudagraphs",
                   help="Inductor mode for the code clusterfusion leaves to Inductor (the baseline's own)")
    p.add_argument("--accuracy-steps", type=int, default=32, help="accuracy diff steps (0: skip)")
    p.add_argument("--kernels-all", action="store_true", help="also time ours with kernels=\"all\"")
    p.add_argument("--append", type=Path, help="append rows from a --rows-out file to results.jsonl/RESULTS.md")
    args = p.parse_args()
    if args.append:
        rows = json.loads(args.append.read_text())
        results.append(rows, title="HF decode step end to end (benchmarks/e2e.py)", method=__doc__.split("\n\n")[2],
                       columns=COLUMNS)
        return
    bandwidth, _ = copy_bandwidth()
    rows = []
    for name in args.models:
        try:
            row = bench_model(name, args, bandwidth)
        except Exception:   # one model's failure must not lose the others' rows
            import traceback
            traceback.print_exc()
            continue
        torch.cuda.empty_cache()
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.rows_out:
            args.rows_out.write_text(json.dumps(rows, indent=1))
    print(results.markdown_table(rows, COLUMNS))


if __name__ == "__main__":
    main()
