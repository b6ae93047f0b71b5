"""Append round28.sh's rows (run on the CPU machine after the device call): python benchmarks/device/record_round28.py
<files_at>. Attention JSON rows go through results.append with the knob named in the config, the FFN rows through
ffn.py --append; then run python benchmarks/policy_table.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import results  # noqa: E402

COLUMNS = ["config.model", "config.seq", "config.dtype", "config.variant", "ours_us", "inductor_us", "floor_us",
           "floor_fraction", "rel_err"]
LOGS = {"rows_l2_default": "l2_default"}  # the log beside a JSON file, where not the stem without rows_
ATTENTION = {  # file stem -> (title, extra config, method)
    "rows_flow_timeline": ("Attention flow timeline (round 28)", {}, "attention.py --no-inductor --timeline --variants flow"),
    "rows_flow_max_chunks_64": ("Attention flow, chunk cap 64 (two-level merge, round 28)", {"flow_max_chunks": 64},
                                "CF_ATTN_FLOW_MAX_CHUNKS=64 attention.py --no-inductor --variants flow"),
    "rows_flow_max_chunks_128": ("Attention flow, chunk cap 128 (two-level merge, round 28)",
                                 {"flow_max_chunks": 128},
                                 "CF_ATTN_FLOW_MAX_CHUNKS=128 attention.py --no-inductor --variants flow"),
    "rows_flow_qkv_wpr_2": ("Attention flow, q/k/v tiles of 2 warps per row (round 28)", {"flow_qkv_wpr": 2},
                            "CF_ATTN_FLOW_QKV_WPR=2 attention.py --no-inductor --variants flow"),
    "rows_flow_qkv_wpr_4": ("Attention flow, q/k/v tiles of 4 warps per row (round 28)", {"flow_qkv_wpr": 4},
                            "CF_ATTN_FLOW_QKV_WPR=4 attention.py --no-inductor --variants flow"),
    "rows_flow_o_gated_1": ("Attention flow, o_proj gated per KV group (round 28)", {"flow_o_gated": True},
                            "CF_ATTN_FLOW_O_GATED=1 attention.py --no-inductor --variants flow"),
    "rows_flow_o_gated_1_max_chunks_64": ("Attention flow, o_proj gated per KV group, chunk cap 64 (round 28)",
                                          {"flow_o_gated": True, "flow_max_chunks": 64},
                                          "CF_ATTN_FLOW_O_GATED=1 CF_ATTN_FLOW_MAX_CHUNKS=64 attention.py "
                                          "--no-inductor --variants flow"),
    "rows_l2_default": ("Attention block decode: Llama-2-7B batch 1, the default (claimed tiles) beside Inductor", {},
                        "attention.py --no-prefetch --models llama-2-7b --dtypes bf16 fp16 --batches 1"),
}


ROW_LINE = re.compile(
    r"^(?P<model>\S+)\s+B=\s*(?P<batch>\d+) S=\s*(?P<seq>\d+) (?P<dtype>\w+) (?P<variant>\w+)\s*\[C(?P<cluster>\d+),"
    r"P(?P<per_kv>\d+)\]: ours\s+(?P<ours>[\d.]+) \(L2 prefetch -\) inductor\s+(?P<ind>[\d.]+|-) floor\s+"
    r"(?P<floor>[\d.]+) \([\d.]+ of floor\) err (?P<err>\S+) layers (?P<layers>\d+)")
TIMELINE_LINE = re.compile(r"^flow timeline (?P<model>\S+) B=(?P<batch>\d+) S=(?P<seq>\d+) (?P<dtype>\w+) .*?: (?P<kv>.*)$")
DEVICE = "NVIDIA H100 80GB HBM3 (132 SMs)"  # round 28 ran on an H100 (the device tool's reply)


def rows_from_log(log: Path) -> list[dict]:
    """attention.py's rows rebuilt from its printed lines: round 28's JSON files did not come back (the device
    tool returns at most 8 files; later scripts pack $OUT into one archive). Same fields as attention.py writes,
    minus the L2-prefetch timing it skipped (--no-prefetch)."""
    from attention import MODELS

    from cf_compile_kernels import attention_flow

    rows: list[dict] = []
    for line in log.read_text().splitlines():
        if (m := ROW_LINE.match(line)) is not None:
            hidden, nh, kvh, d, _ = MODELS[m["model"]]
            config = {"model": m["model"], "batch": int(m["batch"]), "seq": int(m["seq"]), "dtype": m["dtype"],
                      "layers": int(m["layers"]), "cluster": int(m["cluster"]),
                      "clusters_per_kv_head": int(m["per_kv"]),
                      "shape": {"hidden": hidden, "heads": nh, "kv_heads": kvh, "head_dim": d},
                      "variant": m["variant"]}
            if m["variant"] == "default":  # attention.py prints the asked name; its JSON records what ran
                config["variant"] = "flow" if attention_flow.is_default(num_heads=nh, num_kv_heads=kvh,
                                                                        batch=int(m["batch"])) else "v5_heads"
            ours, floor = float(m["ours"]), float(m["floor"])
            row = results.make_row("attention", config, ours_us=ours, ours_l2_prefetch_us=None,
                                   inductor_us=None if m["ind"] == "-" else float(m["ind"]), floor_us=floor,
                                   floor_fraction=round(floor / ours, 3), rel_err=float(m["err"]))
            row["date"], row["device"] = "2026-12-07", DEVICE
            rows.append(row)
        elif (m := TIMELINE_LINE.match(line)) is not None and rows:
            rows[-1]["timeline_us"] = {k: float(v) for k, v in (kv.split(" ") for kv in m["kv"].split(", "))}
    return rows


def main() -> None:
    folder = Path(sys.argv[1])
    for stem, (title, extra, method) in ATTENTION.items():
        path = folder / f"{stem}.json"
        log = folder / f"{LOGS.get(stem, stem.removeprefix('rows_'))}.log"
        if path.exists() and path.stat().st_size:
            rows = json.loads(path.read_text())
        elif log.exists():
            rows = rows_from_log(log)
            method += " (rows rebuilt from its log lines)"
        else:
            print(f"{stem}: absent")
            continue
        for r in rows:
            r["config"].update(extra)
        results.append(rows, title=title, method=f"benchmarks/device/round28.sh: {method}.", columns=COLUMNS)
        print(f"{stem}: {len(rows)} rows")
    ffn_rows = folder / "rows_ffn_b2_default.json"
    if ffn_rows.exists() and ffn_rows.stat().st_size:
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ffn.py"), "--append", str(ffn_rows)], check=True)


if __name__ == "__main__":
    main()
