"""Append round30.sh's rows (on the CPU machine after the device call): unpack round30.tgz into a folder, then
python benchmarks/device/record_round30.py <folder>; then python benchmarks/policy_table.py. Flow rows of the
opt-in builds carry the knob in their config (policy_table.ran_flow_default keeps them out of the policy
until a build becomes the default); the default run's flow and v5_heads rows are the landed code."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import results  # noqa: E402, F401 -- record_round31 appends through it

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_round31 import append_files  # noqa: E402

COLUMNS = ["config.model", "config.seq", "config.dtype", "config.variant", "ours_us", "floor_us", "floor_fraction",
           "rel_err"]
FILES = {  # file stem -> (title, extra config of the flow rows, method)
    "rows_default": ("Attention flow (default build) beside the cluster kernel, batch 1 (round 30)", {},
                     "attention.py --no-inductor --variants flow v5_heads"),
    "rows_lanes": ("Attention flow, token-parallel lanes, timeline (round 30)", {"flow_token_lanes": True},
                   "CF_ATTN_FLOW_TOKEN_LANES=1 attention.py --no-inductor --timeline --variants flow"),
    "rows_o_split": ("Attention flow, o_proj split by head segment, timeline (round 30)", {"flow_o_split": True},
                     "CF_ATTN_FLOW_O_SPLIT=1 attention.py --no-inductor --timeline --variants flow"),
    "rows_o_split_lanes": ("Attention flow, o_proj split + token lanes (round 30)",
                           {"flow_o_split": True, "flow_token_lanes": True},
                           "CF_ATTN_FLOW_O_SPLIT=1 CF_ATTN_FLOW_TOKEN_LANES=1 attention.py --no-inductor --variants flow"),
    "rows_lanes_cap64": ("Attention flow, token lanes, chunk cap 64 (round 30)",
                         {"flow_token_lanes": True, "flow_max_chunks": 64},
                         "CF_ATTN_FLOW_TOKEN_LANES=1 CF_ATTN_FLOW_MAX_CHUNKS=64 attention.py --no-inductor "
                         "--variants flow"),
}


def main() -> None:
    folder = Path(sys.argv[1])
    append_files(folder, FILES, "round30.sh", COLUMNS)
    families = folder / "families_qwen_lanes.json"
    if families.exists() and families.stat().st_size:
        # not appended here: e2e_families rows feed the policy, and this step ran an opt-in build
        print(f"{families.name}: the Qwen step with flow + token lanes (opt-in build); read it, and append it only "
              "once that build is the default")


if __name__ == "__main__":
    main()
