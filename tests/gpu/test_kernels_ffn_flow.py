"""The claimed-tile gated-FFN kernel (csrc/gated_ffn_flow.cu) on the GPU: fp64 bands over random shapes and
tile cuts, bitwise determinism whatever CTA claims a tile, CUDA-graph replay (its counters reset
themselves), and the hand-over to the cluster kernel where it does not apply.

Run as a script (`python tests/gpu/test_kernels_ffn_flow.py`) it makes one small launch per build, for
compute-sanitizer."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_kernels_ffn import (  # noqa: E402
    BANDS,
    DETERMINISM_RUNS,
    assert_graph_replays_match_direct_calls,
    make_inputs,
    random_config,
    rel_error,
    run,
)

from cf_compile_kernels import ffn, ffn_flow  # noqa: E402

RANDOM_CONFIGS = 80
HIDDEN_CHOICES = (64, 96, 256, 896, 1024, 2048, 4096)
INTERMEDIATE_CHOICES = (8, 24, 136, 520, 4864, 8192, 11008)
MODEL_SHAPES = [(4096, 11008), (4096, 14336), (2048, 8192), (896, 4864), (8192, 28672)]


def flow(**fields) -> ffn.Tuning:
    return ffn.Tuning(kernel="flow", **fields)


def random_flow_config(i: int) -> dict:
    """The cluster kernel's random config (dtype, activation, norm, layout, residual, eps), with this kernel's
    shapes, batch 1..8 and a random tile cut, rows per warp and CTAs per SM."""
    rng = random.Random(5000 + i)
    batch = rng.randint(1, ffn_flow.MAX_BATCH)
    rpw = rng.choice([r for r, top in ffn_flow.RPW_MAX_BUCKET.items() if ffn_flow.batch_bucket(batch) <= top])
    hidden, inter = rng.choice(HIDDEN_CHOICES), rng.choice(INTERMEDIATE_CHOICES)
    gu = [w for w in ffn_flow.WPR_CHOICES if inter % (ffn_flow.tile_rows(rpw, w) // 2) == 0]
    down = [w for w in ffn_flow.WPR_CHOICES if hidden % ffn_flow.tile_rows(rpw, w) == 0]
    tuning = flow(rpw=rpw, gu_wpr=rng.choice(gu), down_wpr=rng.choice(down), ctas_per_sm=rng.choice([None, 1]))
    return {**random_config(4000 + i), "hidden": hidden, "inter": inter, "batch": batch, "tuning": tuning}


@pytest.mark.parametrize("i", range(RANDOM_CONFIGS))
def test_random_config_and_tile_cut_within_band_of_fp64(i):
    c = random_flow_config(i)
    inp = make_inputs(c["hidden"], c["inter"], c["batch"], c["dtype"], c["fused"], c["norm_kind"], seed=i)
    out = run(inp, c["eps"], c["norm_kind"], c["act"], c["residual"], c["tuning"])
    err = rel_error(inp, out, c["eps"], c["norm_kind"], c["act"], c["residual"])
    assert err <= BANDS[c["dtype"]], f"{c}: relative error {err:.3g}"


@pytest.mark.parametrize("hidden,inter", MODEL_SHAPES)
@pytest.mark.parametrize("batch", [1, 3, 8])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_model_shapes_with_the_derived_cut_within_band_of_fp64(hidden, inter, batch, dtype):
    inp = make_inputs(hidden, inter, batch, dtype, fused=False, norm_kind="weight", seed=hidden + batch)
    out = run(inp, 1e-5, "weight", "silu", True, flow())
    assert rel_error(inp, out, 1e-5, "weight", "silu", True) <= BANDS[dtype]


@pytest.mark.parametrize("batch", [1, 8])
def test_bitwise_identical_over_1000_runs_whoever_claims_the_tiles(batch):
    inp = make_inputs(4096, 11008, batch, torch.bfloat16, fused=False, norm_kind="weight", seed=7)
    first = run(inp, 1e-5, "weight", "silu", True, flow()).clone()
    outs = torch.empty((DETERMINISM_RUNS, *first.shape), device="cuda", dtype=first.dtype)
    for r in range(DETERMINISM_RUNS):
        inp["out"] = outs[r]
        outs[r].fill_(float("nan"))
        run(inp, 1e-5, "weight", "silu", True, flow())
    differing = int(
        (outs.view(DETERMINISM_RUNS, -1).view(torch.int16) != first.view(1, -1).view(torch.int16)).any(1).sum()
    )
    assert differing == 0, f"{differing} of {DETERMINISM_RUNS} runs differ bitwise from the first"


@pytest.mark.parametrize("hidden,inter,batch,rpw", [(4096, 11008, 2, 4), (4096, 11008, 4, 2), (896, 4864, 3, 2),
                                                    (2048, 8192, 2, 2), (256, 136, 4, 2), (1024, 520, 1, 4)])
def test_h_in_shared_memory_gives_the_same_bits(hidden, inter, batch, rpw):
    """The HS build reads the same h values in the same order from its shared-memory copy."""
    inp = make_inputs(hidden, inter, batch, torch.bfloat16, fused=False, norm_kind="weight", seed=batch)
    plain = run(inp, 1e-5, "weight", "silu", True, flow(rpw=rpw)).clone()
    for _ in range(3):
        inp["out"].fill_(float("nan"))
        assert torch.equal(run(inp, 1e-5, "weight", "silu", True, flow(rpw=rpw, h_shared=True)), plain)


@pytest.mark.parametrize("hidden,inter,batch,rpw", [(4096, 11008, 1, 4), (4096, 14336, 2, 4), (896, 4864, 1, 4),
                                                    (2048, 8192, 2, 2), (256, 136, 1, 2), (1024, 520, 2, 4)])
def test_streamed_hand_off_gives_the_bits_of_one_wait(hidden, inter, batch, rpw):
    """Down warps that wait per h segment (the streamed build) sum in the same order as after one wait."""
    inp = make_inputs(hidden, inter, batch, torch.bfloat16, fused=False, norm_kind="weight", seed=7 + batch)
    one_wait = run(inp, 1e-5, "weight", "silu", True, flow(rpw=rpw)).clone()
    for _ in range(3):
        inp["out"].fill_(float("nan"))
        assert torch.equal(run(inp, 1e-5, "weight", "silu", True, flow(rpw=rpw, streamed=True)), one_wait)


@pytest.mark.parametrize("hidden,inter,batch,rpw,hsm,streamed", [
    (4096, 11008, 1, 4, False, False), (4096, 14336, 2, 4, True, False), (896, 4864, 1, 4, False, False),
    (2048, 8192, 2, 2, False, True), (256, 136, 1, 2, False, False), (4096, 11008, 4, 2, True, False)])
def test_lean_hand_offs_give_the_bits_of_the_fenced_ones(hidden, inter, batch, rpw, hsm, streamed):
    """-DCF_FLOW_LEAN_SYNC (release/acquire counts, relaxed polls + one acquire fence, no per-thread fences) moves
    when h becomes visible, not what is summed: the fenced build's bits, every launch, counters back to zero."""
    inp = make_inputs(hidden, inter, batch, torch.bfloat16, fused=False, norm_kind="weight", seed=11 + batch)
    fenced = run(inp, 1e-5, "weight", "silu", True, flow(rpw=rpw, h_shared=hsm, streamed=streamed)).clone()
    for _ in range(3):
        inp["out"].fill_(float("nan"))
        lean = run(inp, 1e-5, "weight", "silu", True, flow(rpw=rpw, h_shared=hsm, streamed=streamed, lean_sync=True))
        assert torch.equal(lean, fenced)


def test_fewer_ctas_than_slots_give_the_same_bits():
    """One CTA per SM claims twice as many tiles as two: the tile cut (pinned here; the derived one does
    not depend on the CTA count either), not the CTAs, fixes the arithmetic."""
    inp = make_inputs(2048, 8192, 4, torch.float16, fused=True, norm_kind="unit_offset", seed=5)
    cut = {"gu_wpr": 2, "down_wpr": 4}
    two = run(inp, 1e-6, "unit_offset", "gelu_tanh", True, flow(**cut)).clone()
    one = run(inp, 1e-6, "unit_offset", "gelu_tanh", True, flow(ctas_per_sm=1, **cut))
    assert torch.equal(one, two)


def test_cuda_graph_capture_and_replay_matches_direct_calls():
    """Replays repeat: the claim, hand-off and exit counters reset themselves at the end of each launch."""
    assert_graph_replays_match_direct_calls(flow())


def test_timeline_build_gives_the_plain_builds_bits_and_stamps_every_tile():
    inp = make_inputs(896, 4864, 1, torch.bfloat16, fused=False, norm_kind="weight", seed=13)
    plain = run(inp, 1e-5, "weight", "silu", True, flow()).clone()
    p = ffn_flow.plan(896, 4864, torch.bfloat16, 1, inp["x"].device, flow(phases=True).flow())
    stamps = torch.zeros(p.stamp_elems(), dtype=torch.int64, device="cuda")
    ffn.gated_ffn(inp["x"], inp["norm_weight"], 1e-5, "weight", inp["gate_up_weights"], inp["down_weight"], "silu",
                  True, inp["out"], tuning=flow(phases=True), stamps=stamps)
    assert torch.equal(inp["out"], plain)
    st = stamps.view(-1, ffn_flow.STAMP_WORDS)
    assert bool((st[: p.tiles, 1] >= st[: p.tiles, 0]).all()) and bool((st[: p.tiles, 0] > 0).all())
    assert bool((st[p.tiles:, 1] >= st[p.tiles:, 0]).all())


def test_batches_above_eight_go_to_the_cluster_kernel():
    assert ffn.kernel_kind(4096, 11008, 12, ffn.Tuning(kernel=None)) in ffn.KERNEL_KINDS
    assert ffn.kernel_kind(4096, 11008, 12, ffn.Tuning(kernel="cluster")) == "cluster"
    with pytest.raises(ValueError, match="claimed-tile"):
        ffn.kernel_kind(4096, 11008, 12, flow())


def sanitizer_pass() -> None:
    """One small launch per build and cut (compute-sanitizer memcheck / racecheck / synccheck)."""
    worst = 0.0
    for hidden, inter, batch, dtype, tuning in [
        (256, 136, 1, torch.float16, flow()),
        (1024, 520, 3, torch.bfloat16, flow(gu_wpr=8, down_wpr=8)),
        (96, 24, 8, torch.bfloat16, flow(ctas_per_sm=1)),
        (896, 4864, 2, torch.float16, flow(rpw=4)),
    ]:
        inp = make_inputs(hidden, inter, batch, dtype, fused=batch % 2 == 1, norm_kind="weight", seed=batch)
        out = run(inp, 1e-5, "weight", "silu", True, tuning)
        worst = max(worst, rel_error(inp, out, 1e-5, "weight", "silu", True))
    torch.cuda.synchronize()
    print(f"sanitizer pass done; worst relative error {worst:.3g}")


if __name__ == "__main__":
    sanitizer_pass()
