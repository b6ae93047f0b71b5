"""Rebuild cf_compile/measured.json, the evidence behind kernels="auto" (cf_compile/policy.py), from the
benchmark rows in benchmarks/results.jsonl.

A row counts when it timed Inductor and names its block shape (config["shape"]; rows written before shapes
were recorded are skipped). Per (block, device, shape, element width, batch, cached length): ours is the last
row that timed the family's default kernel (a newer kernel's measurement replaces an older one's; a row whose
config names a `source` timed an experimental kernel source that did not land, and counts for Inductor only), Inductor is
the fastest Inductor time of any row at that key. Timing noise only ever adds time, and Inductor's code does
not change with our variant, so its best figure is its truest; an outlier (Llama-3.2-1B attention: 37.8 us in
one run, 99.6 in the next) then cannot hand a block to the kernel.

Step rows (cf_compile/policy.py, ``step_entries``): whole decode steps with and without a family's kernel, from
benchmarks/e2e_families.py (one family fused vs all Inductor) or benchmarks/e2e.py --kernels-all (when its auto run
left only the FFN to Inductor); the latest such row per key.

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


def ran_flow_default(config: dict, heads: int, kv_heads: int) -> bool:
    """Whether a claimed-tile row timed the build and cut the launcher now picks for its shape: its flow_* entries
    that are set (absent: off; rows before round 31 name none of the builds they ran, the fenced hand-offs among
    them; opt-in experiments such as flow_o_gated name theirs) equal the default's Knobs.row_flags."""
    from cf_compile_kernels import attention_flow

    want = attention_flow.Knobs().resolved(heads, kv_heads).row_flags()
    have = {k: v for k, v in config.items() if k.startswith("flow_") and v}
    return config.get("variant") == attention_flow.VARIANT and have == want


def default_variants() -> dict[str, str | None]:
    """The launcher default a row without a variant name ran (None: the family has no named variants)."""
    from cf_compile_kernels import attention, mla

    return {"attention": attention.DEFAULT_VARIANT, "mla": mla.DEFAULT_VARIANT, "ffn": None}


def ran_default(block: str, config: dict, defaults: dict[str, str | None]) -> bool:
    """Whether a row timed the family's default kernel: batch-1 attention, the claimed-tile kernel in the build and
    cut its launcher picks for the shape (attention_flow.is_default, ran_flow_default); else its variant is the default, or (attention) it differs from
    the default only in bits the default's launcher drops at the row's shape (launch_bits: the K/V ring outside
    the MHA builds of buckets 1, 2 and 8; the head-lane loop outside keeps_head_lanes' GQA builds)."""
    from cf_compile_kernels import attention, attention_flow

    shape = config.get("shape", {})
    if block == "attention" and attention_flow.is_default(num_heads=shape.get("heads", 0),
                                                          num_kv_heads=shape.get("kv_heads", -1),
                                                          batch=config["batch"]):
        # batch 1 runs the claimed-tile kernel; rows of another build, chunk cap or q/k/v cut were experiments
        return ran_flow_default(config, shape["heads"], shape["kv_heads"])
    variant = config.get("variant", defaults[block])
    if variant == defaults[block]:
        return True

    if block != "attention" or defaults[block] not in attention.VARIANTS or variant not in attention.VARIANTS:
        return False
    bucket = attention.batch_bucket(config["batch"])
    hg = attention.heads_per_pass(shape["heads"] // shape["kv_heads"])
    dropped = 0
    if not attention.keeps_ring(bucket, hg):
        dropped |= attention.KV_RING
    if not attention.keeps_head_lanes(bucket, hg, shape["head_dim"]):
        dropped |= attention.HEAD_LANES
    return attention.VARIANTS[variant] & ~dropped == attention.VARIANTS[defaults[block]] & ~dropped


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
        if r.get("ours_us") is None or not ran_default(block, c, defaults) or "source" in c:
            continue   # no time of ours, a variant timed beside the default, or a kernel source never merged
        latest[key] = dict(block=block, device=r["device"], shape=c["shape"], element_bytes=key[3],
                           batch=c["batch"], seq=key[5], ours_us=r["ours_us"], date=r["date"],
                           model=c.get("model"), dtype=c["dtype"])
    table = [dict(e, inductor_us=inductor_best[key]) for key, e in latest.items()]
    table += step_entries(rows)
    return sorted(table, key=lambda e: (e["block"], e["model"] or "", e["batch"], e["seq"], e.get("scope", "")))


def block_shape(model: str, family: str) -> dict[str, int] | None:
    """A family's block shape (policy.SHAPE_KEYS) for an e2e model name, from cf_compile.models' full configs."""
    from cf_compile.models import build_config, head_dim

    cfg = build_config(model, "full")
    if family == "ffn":
        return {"hidden": cfg.hidden_size, "intermediate": cfg.intermediate_size}
    if family == "attention":
        return {"hidden": cfg.hidden_size, "heads": cfg.num_attention_heads, "kv_heads": cfg.num_key_value_heads,
                "head_dim": head_dim(cfg)}
    return None   # MLA: no e2e model measured yet


def step_times(r: dict) -> list[tuple[str, float, float]]:
    """(family, step with its kernel, step without) that one results row measured, if any:
    - e2e_families: the step with only that family fused (the rest Inductor's own code) vs all Inductor;
    - e2e with ``ours_kernels_all_us`` whose auto run left only FFN blocks to Inductor: kernels=all vs auto
      isolates the FFN kernel (Inductor's FFN code beside our attention kernel)."""
    if r.get("bench") == "e2e_families" and r.get("step_us") and r.get("inductor_us"):
        return [(name.removesuffix(" only"), us, r["inductor_us"]) for name, us in r["step_us"].items()
                if name.endswith(" only")]
    reasons = r.get("reasons") or []
    if (r.get("bench") == "e2e" and r.get("ours_kernels_all_us") is not None and r.get("ours_us") is not None
            and reasons and all(why.startswith("ffn kernel") for why in reasons)):
        return [("ffn", r["ours_kernels_all_us"], r["ours_us"])]
    return []


def step_entries(rows: list[dict]) -> list[dict]:
    """Step-scope rows (step_times), the latest per (family, device, shape, element width, batch, prompt length:
    the context the step decoded at)."""
    latest: dict[tuple, dict] = {}
    for r in rows:
        c = r.get("config", {})
        for family, ours_us, inductor_us in step_times(r):
            shape = block_shape(c["model"], family)
            if shape is None:
                continue
            key = (family, r["device"], json.dumps(shape, sort_keys=True), ELEMENT_BYTES[c["dtype"]], c["batch"],
                   c.get("seq", c.get("prompt", 0)))
            latest[key] = dict(block=family, device=r["device"], shape=shape, element_bytes=key[3], batch=c["batch"],
                               seq=key[5], ours_us=round(ours_us, 1), date=r["date"], model=c["model"], dtype=c["dtype"],
                               inductor_us=round(inductor_us, 1), scope="step")
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
