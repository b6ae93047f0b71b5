"""Append round28.sh's rows (run on the CPU machine after the device call): python benchmarks/device/record_round28.py
<files_at>. Attention JSON rows go through results.append with the knob named in the config, the FFN rows through
ffn.py --append; then run python benchmarks/policy_table.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import results  # noqa: E402

COLUMNS = ["config.model", "config.seq", "config.dtype", "config.variant", "ours_us", "inductor_us", "floor_us",
           "floor_fraction", "rel_err"]
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


def main() -> None:
    folder = Path(sys.argv[1])
    for stem, (title, extra, method) in ATTENTION.items():
        path = folder / f"{stem}.json"
        if not path.exists() or not path.stat().st_size:
            print(f"{stem}: absent")
            continue
        rows = json.loads(path.read_text())
        for r in rows:
            r["config"].update(extra)
        results.append(rows, title=title, method=f"benchmarks/device/round28.sh: {method}.", columns=COLUMNS)
        print(f"{stem}: {len(rows)} rows")
    ffn_rows = folder / "rows_ffn_b2_default.json"
    if ffn_rows.exists() and ffn_rows.stat().st_size:
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ffn.py"), "--append", str(ffn_rows)], check=True)


if __name__ == "__main__":
    main()
