"""benchmarks/flow_timeline.py reads a claimed-tile launch's stamps into the numbers that split its time."""

from __future__ import annotations

import torch

from benchmarks.flow_timeline import summarise, summarise_kinds, summarise_steps

EPOCH = 10**18  # globaltimer counts ns since an epoch: differences must be taken in integers


def test_two_ctas_four_gate_up_tiles_two_down_tiles():
    ns = lambda *v: [EPOCH + t for t in v]  # noqa: E731
    tiles = torch.tensor(
        [ns(100, 1100) + [0], ns(120, 1300) + [1], ns(1100, 2000) + [0], ns(1300, 2300) + [1],  # gate/up
         ns(2000, 3000) + [0], ns(2300, 3500) + [1]],  # down
        dtype=torch.int64,
    )
    ctas = torch.tensor([ns(0, 3000) + [200], ns(50, 3500) + [0]], dtype=torch.int64)
    s = summarise(tiles, ctas, gate_up_tiles=4, gate_up_bytes=1000.0, down_bytes=500.0)
    assert s["first_claim"] == 0.1
    assert s["gate_up_first_idle"] == 2.0  # SM 0 claimed the first down tile at 2.0 us
    assert s["gate_up_done"] == 2.3
    assert (s["wait_median"], s["wait_max"]) == (0.1, 0.2)
    assert (s["down_done"], s["end_median"], s["end_max"]) == (3.5, 3.25, 3.5)
    assert (s["gate_up_tile_us"], s["down_tile_us"]) == (1.0, 1.1)  # exact: no float rounding of the epoch
    assert s["sm_bytes_min_over_max"] == 1.0 and s["sms"] == 2


def test_attention_queue_split_by_tile_kind():
    """Three q/k/v tiles, two attention tiles, one o_proj tile on two CTAs: each kind's first claim, first and
    last completion and median tile time, in queue order."""
    ns = lambda *v: [EPOCH + t for t in v]  # noqa: E731
    tiles = torch.tensor(
        [ns(100, 600) + [0], ns(150, 700) + [1], ns(600, 1000) + [0],   # q/k/v
         ns(700, 2700) + [1], ns(1000, 2500) + [0],                     # attention (one waited for q/k/v)
         ns(2500, 4000) + [0]],                                         # o_proj
        dtype=torch.int64,
    )
    ctas = torch.tensor([ns(0, 4000) + [300], ns(80, 2700) + [100]], dtype=torch.int64)
    s = summarise_kinds(tiles, ctas, {"qkv": 3, "attention": 2, "o_proj": 1})
    assert s["first_claim"] == 0.1
    assert (s["qkv_first_claim"], s["qkv_first_done"], s["qkv_done"], s["qkv_tile_us"]) == (0.1, 0.6, 1.0, 0.5)
    assert (s["attention_first_claim"], s["attention_done"], s["attention_tile_us"]) == (0.7, 2.7, 1.75)
    assert (s["o_proj_first_claim"], s["o_proj_done"], s["o_proj_tile_us"]) == (2.5, 4.0, 1.5)
    assert (s["wait_median"], s["wait_max"]) == (0.2, 0.3)
    assert (s["end_median"], s["end_max"]) == (3.35, 4.0)


def test_attention_steps_are_timed_from_the_previous_mark():
    """Step marks per tile (0 where a tile has no such step): each step's median time from the tile's previous
    mark (its claim for the first step) over the tiles that marked it, and the last tile's mark."""
    ns = lambda *v: [EPOCH + t for t in v]  # noqa: E731
    tiles = torch.tensor([ns(100, 900) + [0], ns(200, 1300) + [1], ns(300, 1600) + [0]], dtype=torch.int64)
    ctas = torch.tensor([ns(0, 1600) + [0], ns(50, 1300) + [0]], dtype=torch.int64)
    marks = torch.tensor(
        [ns(400, 500, 800, 900)[:4] + [0],            # attention tile: ready, rope, walked, counted; no merge
         ns(600, 700, 1000, 1100) + [EPOCH + 1300],   # the group's last tile also merges
         ns(1500) + [0, 0, 0, 0]],                   # o_proj: groups merged
        dtype=torch.int64,
    )
    steps = {"attention": ("ready", "rope", "walked", "counted", "merged"), "o_proj": ("groups merged",)}
    s = summarise_steps(tiles, ctas, marks, {"attention": 2, "o_proj": 1}, steps)
    assert s["attention ready (step us)"] == 0.35  # (300 + 400) / 2
    assert s["attention rope (step us)"] == 0.1 and s["attention walked (step us)"] == 0.3
    assert s["attention merged (step us)"] == 0.2 and s["attention merged (last at)"] == 1.3
    assert s["attention counted (last at)"] == 1.1
    assert s["o_proj groups merged (step us)"] == 1.2 and s["o_proj groups merged (last at)"] == 1.5
