"""Append round31.sh's or round32.sh's rows (on the CPU machine after the device call): unpack the call's tgz into a
folder, then python benchmarks/device/record_round31.py <31|32> <folder>; then python benchmarks/policy_table.py.
Every flow row gets the build it ran as flow_* flags (attention_flow.Knobs.row_flags; round 31's rows predate
attention.py recording them; round 32's carry them already and keep them)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import results  # noqa: E402

COLUMNS = ["config.model", "config.seq", "config.dtype", "config.variant", "ours_us", "inductor_us", "floor_us",
           "floor_fraction", "rel_err"]
OFF = {"flow_lean_sync": False, "flow_dense_mask": False, "flow_token_lanes": False, "flow_o_split": False}
LEAN = {"flow_lean_sync": True, "flow_dense_mask": True}
GQA = {**LEAN, "flow_token_lanes": True, "flow_o_split": True}
ROUNDS = {  # round -> file stem -> (title, flags of the flow rows (None: the rows carry them), method)
    "31": {
        "rows_default": ("Attention flow, fenced hand-offs (round 31's baseline), timeline", OFF,
                         "attention.py --no-inductor --timeline --variants flow"),
        "rows_lean_dense": ("Attention flow, lean hand-offs + dense-mask skip, timeline (round 31)", {**OFF, **LEAN},
                            "CF_ATTN_FLOW_LEAN_SYNC=1 CF_ATTN_FLOW_DENSE_MASK=1 attention.py --timeline"),
        "rows_lean": ("Attention flow, lean hand-offs, beside the cluster kernel (round 31)",
                      {**OFF, "flow_lean_sync": True}, "CF_ATTN_FLOW_LEAN_SYNC=1 attention.py --variants flow v5_heads"),
        "rows_dense": ("Attention flow, dense-mask skip (round 31)", {**OFF, "flow_dense_mask": True},
                       "CF_ATTN_FLOW_DENSE_MASK=1 attention.py --variants flow"),
        "rows_all_gqa": ("Attention flow, lean + dense + token lanes + o_proj split (round 31)", GQA,
                         "all four knobs =1, attention.py --variants flow"),
        "rows_all_gqa_cap64": ("Attention flow, lean + dense + token lanes + o_proj split, chunk cap 64 (round 31)",
                               {**GQA, "flow_max_chunks": 64}, "all four knobs =1, CF_ATTN_FLOW_MAX_CHUNKS=64"),
    },
    "32": {
        "rows_stage": ("Attention flow, merge stage, timeline (round 32)", None,
                       "CF_ATTN_FLOW_MERGE_STAGE=1 attention.py --no-inductor --timeline --variants flow"),
        "rows_default_again": ("Attention flow, the defaults after round 31 (round 32)", None,
                               "attention.py --no-inductor --variants flow"),
        "rows_pipeline": ("Attention flow, pipelined token-lane walk (round 32)", None,
                          "CF_ATTN_FLOW_WALK_PIPELINE=1 attention.py --no-inductor --variants flow"),
        "rows_prefetch": ("Attention flow, K/V chunk prefetched to L2 (round 32)", None,
                          "CF_ATTN_FLOW_KV_PREFETCH=1 attention.py --no-inductor --variants flow"),
        "rows_prefetch_stage": ("Attention flow, K/V prefetch + merge stage (round 32)", None,
                                "CF_ATTN_FLOW_KV_PREFETCH=1 CF_ATTN_FLOW_MERGE_STAGE=1 attention.py --no-inductor"),
        "rows_inductor_bf16": ("Attention block decode, batch 1: the defaults after round 31 beside Inductor (round 32)",
                               None, "attention.py --dtypes bf16 --batches 1"),
        "rows_inductor_fp16": ("Attention block decode, batch 1, fp16: the defaults after round 31 beside Inductor "
                               "(round 32)", None, "attention.py --dtypes fp16 --batches 1"),
    },
}


def append_files(folder: Path, files: dict, script: str, columns: list[str], suffix: str = "") -> None:
    """Append each present <stem>.json of `folder` (files: stem -> (title, flags for its flow rows or None, method))
    to results.jsonl / RESULTS.md."""
    for stem, (title, flags, method) in files.items():
        path = folder / f"{stem}.json"
        if not path.exists() or not path.stat().st_size:
            print(f"{stem}: absent")
            continue
        rows = json.loads(path.read_text())
        for r in rows:
            if r["config"].get("variant") == "flow" and flags is not None:
                r["config"].update(flags)
        results.append(rows, title=title, method=f"benchmarks/device/{script}: {method}{suffix}.", columns=columns)
        print(f"{stem}: {len(rows)} rows")


def main() -> None:
    which, folder = sys.argv[1], Path(sys.argv[2])
    append_files(folder, ROUNDS[which], f"round{which}.sh", COLUMNS, ", bf16 B=1")


if __name__ == "__main__":
    main()
