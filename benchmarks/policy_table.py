"""Rebuild cf_compile/measured.json, the evidence behind kernels="auto" (cf_compile/policy.py), from the
benchmark rows in benchmarks/results.jsonl.

A row counts when it timed Inductor and names its block shape (config["shape"]; rows written before shapes
were recorded are skipped). Per (block, device, shape, element width, batch, cached length): ours is the last
row that timed the family's default kernel (a newer kernel's measurement replaces an older one's), Inductor is
the fastest Inductor time of any row at that key. Timing noise only ever adds time, and Inductor's code does
not change with our variant, so its best figure is its truest; an outlier (Llama-3.2-1B attention: 37.8 us in
one run, 99.6 in the next) then cannot hand a block to the kernel.

Step rows (cf_compile/policy.py): an e2e row with ``ours_kernels_all_us`` whose auto run left only FFN blocks to
Inductor (every fallback reason names the ffn kernel) times the step with the FFN kernel on every layer against
the same step with Inductor's FFN: one "step" row for that model's FFN shape (hidden, intermediate), the latest
such row per key.

    python benchmarks/policy_table.py            # rewrite cf_compile/measured.json, print the verdicts
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results.jsonl"
TABLE = ROOT / "cf_compile" / "measured.json"
ELEMENT_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4}


def default_variants() -> dict[str, str | None]:
    """The launcher default a row without a variant name ran (None: the family has no named variants)."""
    from cf_compile_kernels import attention, mla

    return {"attention": attention.DEFAULT_VARIANT, "mla": mla.DEFAULT_VARIANT, "ffn": None}


def entries(rows: list[dict], defaults: dict[str, str | None]) -> list[dict]:
    latest: dict[tuple, dict] = {}
    inductor_best: dict[tuple, float] = {}
    for r in rows:
        block, c = r.get("bench"), r.get("config", {})
        if block not in defaults or "shape" not in c or r.get("inductor_us") is None:
            continue
        key = (block, r["device"], json.dumps(c["shape"], sort_keys=True), ELEMENT_BYTES[c["dtype"]], c["batch"],
               c.get("seq", 0))
        inductor_best[key] = min(inductor_best.get(key, float("inf")), r["inductor_us"])
        if r.get("ours_us") is None or c.get("variant", defaults[block]) != defaults[block]:
            continue   # no time of ours, or a variant timed beside the default
        latest[key] = dict(block=block, device=r["device"], shape=c["shape"], element_bytes=key[3],
                           batch=c["batch"], seq=key[5], ours_us=r["ours_us"], date=r["date"],
                           model=c.get("model"), dtype=c["dtype"])
    table = [dict(e, inductor_us=inductor_best[key]) for key, e in latest.items()]
    table += step_entries(rows)
    return sorted(table, key=lambda e: (e["block"], e["model"] or "", e["batch"], e["seq"], e.get("scope", "")))


def ffn_shape(model: str) -> dict[str, int]:
    """FFN block shape of an e2e model name (cf_compile.models' full-size configs)."""
    from cf_compile.models import build_config

    cfg = build_config(model, "full")
    return {"hidden": cfg.hidden_size, "intermediate": cfg.intermediate_size}


def step_entries(rows: list[dict]) -> list[dict]:
    """One step-scope FFN row per (device, shape, width, batch): the latest e2e row that isolates the FFN."""
    latest: dict[tuple, dict] = {}
    for r in rows:
        c = r.get("config", {})
        if r.get("bench") != "e2e" or r.get("ours_kernels_all_us") is None or r.get("ours_us") is None:
            continue
        reasons = r.get("reasons") or []
        if not reasons or not all(why.startswith("ffn kernel") for why in reasons):
            continue   # auto also left attention/MLA to Inductor, or used every kernel: not the FFN alone
        shape = ffn_shape(c["model"])
        key = (r["device"], json.dumps(shape, sort_keys=True), ELEMENT_BYTES[c["dtype"]], c["batch"])
        latest[key] = dict(block="ffn", device=r["device"], shape=shape, element_bytes=key[2], batch=c["batch"],
                           seq=0, ours_us=round(r["ours_kernels_all_us"], 1), date=r["date"], model=c["model"],
                           dtype=c["dtype"], inductor_us=round(r["ours_us"], 1), scope="step")
    return list(latest.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--out", type=Path, default=TABLE)
    ap.add_argument("--extra", type=Path, nargs="*", default=[],
                    help="JSON row lists of a device run not yet in results.jsonl (read after it)")
    args = ap.parse_args()
    rows = [json.loads(line) for line in args.results.read_text().splitlines() if line.strip()]
    for path in args.extra:
        if path.exists() and path.stat().st_size:
            rows += json.loads(path.read_text())
    table = entries(rows, default_variants())
    args.out.write_text(json.dumps(table, indent=1) + "\n")
    for e in table:
        verdict = "kernel" if e["ours_us"] < e["inductor_us"] else "Inductor"
        print(f"{e['block']:9s} {e['model'] or '?':16s} {e['dtype']} B={e['batch']:<2d} S={e['seq']:<5d} "
              f"ours {e['ours_us']:7.1f} Inductor {e['inductor_us']:7.1f} -> {verdict}"
              f"{' (decode step)' if e.get('scope') == 'step' else ''}")
    print(f"{len(table)} rows -> {args.out}")


if __name__ == "__main__":
    main()
