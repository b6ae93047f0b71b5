"""`python -m cf_compile_kernels check [--arch sm_90a]`: compile every registered kernel with NVRTC.

Needs no GPU. Imports every module of the package (launcher modules register their representative
instantiations through registry.register_check at import), compiles each entry and prints one line
per kernel with compile time, registers, static shared memory, stack and spills. Exit status 1 if
any compile or import fails, or if a csrc/*.cu file has no registered instantiation.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from . import build, env, headers, registry

_SKIP_MODULES = {"__main__"}


@dataclass
class Outcome:
    entry: registry.CheckEntry
    compiled: build.CompiledKernel | None
    error: str | None


def import_launchers() -> list[str]:
    """Import every module of the package so that their register_check calls run; returns errors."""
    errors = []
    package = importlib.import_module(__package__ or "cf_compile_kernels")
    for module in pkgutil.iter_modules(package.__path__):
        if module.name in _SKIP_MODULES:
            continue
        try:
            importlib.import_module(f"{package.__name__}.{module.name}")
        except Exception as exc:  # report, keep checking the others
            errors.append(f"import {package.__name__}.{module.name}: {type(exc).__name__}: {exc}")
    registry.register_runtime_checks()
    return errors


def unregistered_sources() -> list[str]:
    """csrc/*.cu files that no entry instantiates."""
    covered = {e.source for e in registry.registered()}
    return sorted(p.name for p in headers.CSRC_DIR.glob("*.cu") if p.name not in covered)


def _compile(entry: registry.CheckEntry, arch: str) -> Outcome:
    try:
        compiled = build.compile_kernel(
            entry.source,
            entry.kernel,
            template_args=entry.template_args,
            defines=dict(entry.defines),
            arch=arch,
        )
        return Outcome(entry, compiled, None)
    except Exception as exc:
        return Outcome(entry, None, f"{type(exc).__name__}: {exc}")


def _fmt(value: int | None, unit: str = "") -> str:
    return "?" if value is None else f"{value}{unit}"


def format_line(outcome: Outcome) -> str:
    e = outcome.entry
    expr = build.name_expression(e.kernel, e.template_args)
    where = f"{e.source}:{expr}" + (f" [{e.label}]" if e.label else "")
    c = outcome.compiled
    if c is None:
        first = (outcome.error or "").splitlines()[0]
        return f"FAIL  {where}\n      {first}"
    seconds = "cached" if c.from_cache else f"{c.compile_seconds:5.2f}s"
    return (
        f"ok  {seconds:>7}  regs {_fmt(c.registers):>3}  smem {_fmt(c.shared_bytes, ' B'):>9}  "
        f"stack {_fmt(c.local_bytes, ' B'):>6}  spills {_fmt(c.spill_bytes, ' B'):>6}  {where}"
    )


def check(arch: str, jobs: int, verbose_errors: bool) -> int:
    """Compile everything; print the report; return the process exit status."""
    problems = import_launchers()
    entries = registry.registered()
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        outcomes = list(pool.map(lambda e: _compile(e, arch), entries))
    wall = time.perf_counter() - start
    failed = 0
    for outcome in outcomes:
        print(format_line(outcome))
        if outcome.compiled is None:
            failed += 1
            if verbose_errors:
                print(outcome.error)
    for problem in problems:
        print(f"FAIL  {problem}")
    for source in unregistered_sources():
        print(f"FAIL  {source}: no instantiation registered (call registry.register_check for it)")
    missing = len(unregistered_sources())
    compiled = [o.compiled for o in outcomes if o.compiled is not None]
    total = sum(c.compile_seconds for c in compiled)
    fresh = sum(1 for c in compiled if not c.from_cache)
    print(
        f"{len(entries)} kernels for {arch} (NVRTC {'.'.join(map(str, build.nvrtc_version()))}): "
        f"{len(compiled)} ok ({fresh} compiled, {len(compiled) - fresh} from cache), {failed} failed; "
        f"compile time {total:.1f} s over {jobs} jobs, wall {wall:.1f} s; cache {env.cache_dir()}"
    )
    return 1 if failed or problems or missing else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cf_compile_kernels", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="compile every registered kernel instantiation (no GPU needed)")
    p.add_argument(
        "--arch", default=None, help="target, e.g. sm_90a (default: CF_ARCH, the GPU's, or sm_90a)"
    )
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel NVRTC compiles")
    p.add_argument("--no-cache", action="store_true", help="ignore the disk cache (compile everything)")
    p.add_argument("--full-errors", action="store_true", help="print the whole NVRTC log of failures")
    args = parser.parse_args(argv)
    if args.no_cache:
        os.environ["CF_DISABLE_DISK_CACHE"] = "1"
    return check(args.arch or build.default_arch(), args.jobs, args.full_errors)


if __name__ == "__main__":
    sys.exit(main())
