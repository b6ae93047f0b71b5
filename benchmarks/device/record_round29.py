"""Append round29.sh's rows (run on the CPU machine after the device call): python benchmarks/device/record_round29.py
<folder with round29.tgz unpacked>; then python benchmarks/policy_table.py. Every flow row of this round timed the
K/V-stage build, which did not land (NOTES-attention.md round 29): those rows carry config.source, so the policy
takes only their Inductor and cluster-kernel (v5_heads) times."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import results  # noqa: E402

COLUMNS = ["config.model", "config.seq", "config.dtype", "config.variant", "ours_us", "inductor_us", "floor_us",
           "floor_fraction", "rel_err"]
SOURCE = "round 29 K/V-stage build of attention_flow.cu (commit 3547d20; reverted)"
FILES = {  # file stem -> (title, extra config of the flow rows, method)
    "rows_staged_timeline": ("Attention flow with the K/V stage, timeline (round 29)", {"flow_kv_stage_kb": 64},
                             "attention.py --no-inductor --timeline --variants flow"),
    "rows_unstaged": ("Attention flow, stage build with the stage off, beside the cluster kernel (round 29)",
                      {"flow_kv_stage_kb": 0}, "CF_ATTN_FLOW_STAGE_KB=0 attention.py --no-inductor --variants flow "
                      "v5_heads"),
    "rows_o_rows_8": ("Attention flow with the K/V stage, o_proj tiles of 8 rows (round 29)",
                      {"flow_kv_stage_kb": 64, "flow_o_rows": 8},
                      "CF_ATTN_FLOW_O_ROWS=8 attention.py --no-inductor --variants flow"),
    "rows_qkv_wpr_4": ("Attention flow with the K/V stage, q/k/v tiles of 4 warps per row (round 29)",
                       {"flow_kv_stage_kb": 64, "flow_qkv_wpr": 4},
                       "CF_ATTN_FLOW_QKV_WPR=4 attention.py --no-inductor --variants flow"),
    "rows_inductor": ("Attention block decode beside Inductor, batch 1: flow (K/V-stage build) and the cluster kernel "
                      "(round 29)", {"flow_kv_stage_kb": 64},
                      "attention.py --no-prefetch --variants flow v5_heads (Inductor in the same process)"),
}


def main() -> None:
    folder = Path(sys.argv[1])
    for stem, (title, extra, method) in FILES.items():
        rows = json.loads((folder / f"{stem}.json").read_text())
        for r in rows:
            if r["config"].get("variant") == "flow":
                r["config"].update(extra, source=SOURCE)
        results.append(rows, title=title, method=f"benchmarks/device/round29.sh: {method}.", columns=COLUMNS)
        print(f"{stem}: {len(rows)} rows")


if __name__ == "__main__":
    main()
