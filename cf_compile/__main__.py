"""``python -m cf_compile`` (also ``cf-compile``): the match report and the accuracy diff from a shell.

    python -m cf_compile report   --model llama [--size tiny|small|full] [--dtype bf16] [--json out.json]
    python -m cf_compile accuracy --model llama [--size tiny|small|full] [--dtype bf16] [--steps 16] [--json out.json]

Models are random-weight HF models built by name (``cf_compile.models``): nothing is downloaded.
Exit status: 0 on success, 2 on bad arguments (argparse's convention), 1 when ``accuracy --check`` finds
the compiled model outside eager's rounding band.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cf_compile.models import DTYPES, SIZES, model_names


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cf-compile", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", default="llama", choices=model_names(), metavar="NAME",
                        help=f"one of: {', '.join(model_names())} (default llama)")
    common.add_argument("--size", default="tiny", choices=SIZES,
                        help="tiny: 2 layers, hidden 128; small: 4 layers, hidden 512; full: the real "
                             "checkpoint's shapes (default tiny)")
    common.add_argument("--dtype", default="bf16", choices=tuple(DTYPES), help="default bf16")
    common.add_argument("--device", default=None, choices=("cpu", "cuda"), help="default: cuda if available")
    common.add_argument("--kernels", default="auto", choices=("auto", "reference"),
                        help="auto: cluster kernels where supported; reference: plain-torch fused ops")
    common.add_argument("--batch", type=int, default=1)
    common.add_argument("--prompt-len", type=int, default=8)
    common.add_argument("--max-cache-len", type=int, default=None, help="default: prompt + steps, rounded up to 16")
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the result as JSON")
    report = sub.add_parser("report", parents=[common], help="compile one decode step, print the match report")
    report.set_defaults(run=_report)
    acc = sub.add_parser("accuracy", parents=[common], help="eager vs compiled, per output and per fused op")
    acc.add_argument("--steps", type=int, default=16, help="decode steps (default 16)")
    acc.add_argument("--no-calibrate", action="store_true", help="skip the fp32 reference runs")
    acc.add_argument("--compact", action="store_true", help="summary table only")
    acc.add_argument("--check", action="store_true", help="exit 1 when the verdict is outside the band")
    acc.set_defaults(run=_accuracy)
    models = sub.add_parser("models", help="the named models and their shapes (built on the meta device)")
    models.add_argument("--size", default="full", choices=SIZES, help="default full")
    models.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the table as JSON")
    models.set_defaults(run=_models)
    return parser


def _validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    import torch

    if args.command == "models":
        return
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    for flag in ("batch", "prompt_len", "steps"):
        value = getattr(args, flag, 1)
        if value < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    steps = getattr(args, "steps", 1)
    if args.max_cache_len is not None and args.max_cache_len < args.prompt_len + steps:
        parser.error(f"--max-cache-len {args.max_cache_len} < prompt {args.prompt_len} + steps {steps}")


def _setup(args: argparse.Namespace) -> tuple[Any, Any]:
    """(model, prompt ids) from the arguments, seeded."""
    import torch

    from cf_compile.models import build_model

    model = build_model(args.model, args.size, DTYPES[args.dtype], args.device, seed=args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.prompt_len), generator=generator)
    return model, ids.to(args.device)


def _report(args: argparse.Namespace) -> int:
    import torch
    from transformers import StaticCache

    from cf_compile import backend
    from cf_compile.accuracy import default_cache_len, ensure_backend

    model, ids = _setup(args)
    cache = StaticCache(config=model.config, max_cache_len=args.max_cache_len or default_cache_len(args.prompt_len, 1))
    torch._dynamo.reset()
    ensure_backend()
    first = len(backend.compilations())
    with torch.no_grad():
        model(ids, past_key_values=cache, use_cache=True)   # prefill stays eager, as in generate()
        step = torch.compile(model.forward, backend="clusterfusion", options={"kernels": args.kernels})
        step(ids[:, -1:], past_key_values=cache, use_cache=True)
    reports = [c.report for c in backend.compilations()[first:]]
    for rep in reports:
        rep.render()
    if args.json:
        args.json.write_text(json.dumps([r for rep in reports for r in rep.to_json()], indent=1, default=str))
        print(f"wrote {args.json}")
    return 0


def _accuracy(args: argparse.Namespace) -> int:
    from cf_compile.accuracy import compare

    model, ids = _setup(args)
    result = compare(model, ids, steps=args.steps, max_cache_len=args.max_cache_len,
                     options={"kernels": args.kernels}, calibrate=not args.no_calibrate,
                     name=f"{args.model} ({args.size})")
    result.render(compact=args.compact)
    if args.json:
        args.json.write_text(json.dumps(result.to_json(), indent=1, default=str))
        print(f"wrote {args.json}")
    return 1 if args.check and not result.ok else 0


def _models(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console
    from rich.table import Table

    from cf_compile.models import ALIASES, SPECS, build_model, head_dim

    rows = []
    for name, spec in SPECS.items():
        model = build_model(name, args.size, torch.bfloat16, "meta")
        config = model.config
        heads = config.num_attention_heads
        rows.append(dict(
            name=name, aliases=sorted(a for a, n in ALIASES.items() if n == name), checkpoint=spec.checkpoint,
            config=spec.config_class, layers=config.num_hidden_layers, hidden=config.hidden_size, heads=heads,
            kv_heads=config.num_key_value_heads,
            head_dim=head_dim(config),
            intermediate=config.intermediate_size, vocab=config.vocab_size,
            params=sum(p.numel() for p in model.parameters())))
    table = Table(title=f"cf_compile.models ({args.size}; random weights, nothing downloaded)")
    for col in ("name", "aliases", "shapes of", "layers", "hidden", "heads/kv", "head_dim", "intermediate",
                "vocab", "params"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], " ".join(r["aliases"]), r["checkpoint"], str(r["layers"]), str(r["hidden"]),
                      f"{r['heads']}/{r['kv_heads']}", str(r["head_dim"]), str(r["intermediate"]), str(r["vocab"]),
                      f"{r['params'] / 1e6:,.1f}M")
    Console(width=None if Console().is_terminal else 160).print(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
        print(f"wrote {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _validate(parser, args)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
