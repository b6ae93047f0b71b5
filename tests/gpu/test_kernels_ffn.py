"""The fused gated-FFN kernel on the GPU: fp64 reference bands, bitwise determinism, CUDA-graph replay.

Run as a script (`python tests/gpu/test_kernels_ffn.py`) it executes one small pass over the kernel's
variants (cluster sizes 1/2/4, batch tiles 1/2, both dtypes), for compute-sanitizer."""

from __future__ import annotations

import dataclasses
import math
import random
import sys

import pytest
import torch

from cf_compile_kernels import ffn

# ||out - ref|| / ||ref|| against fp64: n and h are rounded to the model dtype (as eager rounds them),
# everything else is fp32, so the error sits a few units of the dtype's rounding under these bands.
BANDS = {torch.float16: 2e-3, torch.bfloat16: 1e-2}
RANDOM_CONFIGS = 120
DETERMINISM_RUNS = 1000
HIDDEN_STEPS = (1, 2, 3, 5, 6, 7, 8, 12, 16, 28, 64, 128)  # x 32: cluster sizes 1, 2 and 4 all occur
INTERMEDIATE_UNITS = (1, 3, 17, 40, 131, 256, 608, 1376)  # x 8: from fewer units than clusters to Llama


def make_inputs(
    hidden: int, inter: int, batch: int, dtype: torch.dtype, fused: bool, norm_kind: str, seed: int
) -> dict:
    """Fresh random inputs with O(1) activations; out poisoned with NaN."""
    gen = torch.Generator(device="cuda").manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, device="cuda", dtype=torch.float32) * scale).to(dtype)

    norm_w = randn(hidden, scale=0.1) if norm_kind == "unit_offset" else 1.0 + randn(hidden, scale=0.1)
    gate, up = randn(inter, hidden, scale=hidden**-0.5), randn(inter, hidden, scale=hidden**-0.5)
    return {
        "x": randn(batch, 1, hidden),
        "norm_weight": norm_w,
        "gate_up_weights": [torch.cat([gate, up])] if fused else [gate, up],
        "down_weight": randn(hidden, inter, scale=inter**-0.5),
        "out": torch.full((batch, 1, hidden), float("nan"), device="cuda", dtype=dtype),
    }


def run(inp: dict, eps: float, norm_kind: str, act: str, residual: bool, tuning=None) -> torch.Tensor:
    ffn.gated_ffn(
        inp["x"],
        inp["norm_weight"],
        eps,
        norm_kind,
        inp["gate_up_weights"],
        inp["down_weight"],
        act,
        residual,
        inp["out"],
        tuning=tuning or ffn.Tuning(),
    )
    return inp["out"]


def rel_error(inp: dict, out: torch.Tensor, eps: float, norm_kind: str, act: str, residual: bool) -> float:
    ref = ffn.gated_ffn_reference(
        inp["x"],
        inp["norm_weight"],
        eps,
        norm_kind,
        inp["gate_up_weights"],
        inp["down_weight"],
        act,
        residual,
    )
    if not torch.isfinite(out).all():
        return math.inf
    return float((out.double() - ref).norm() / ref.norm())


def random_config(i: int) -> dict:
    rng = random.Random(1000 + i)
    return {
        "hidden": 32 * rng.choice(HIDDEN_STEPS),
        "inter": 8 * rng.choice(INTERMEDIATE_UNITS),
        "batch": rng.randint(1, 16),
        "dtype": rng.choice([torch.float16, torch.bfloat16]),
        "act": rng.choice(list(ffn.ACTIVATIONS)),
        "norm_kind": rng.choice(list(ffn.NORM_KINDS)),
        "fused": rng.random() < 0.3,
        "residual": rng.random() < 0.7,
        "eps": rng.choice([1e-5, 1e-6]),
    }


SPLIT, WHOLE, LOCAL = ffn.MODES["split"], ffn.MODES["whole"], ffn.MODES["split_local_stats"]
DIRECT = ffn.Tuning(mode=SPLIT, stages=0, flags=0)  # the register-direct load path, no optional flags
EARLY_DEFER = ffn.parse_flags("early_x+defer_fix_up")  # the default flags
# "auto" is what the backend runs (mode, path and flags derived from the shape); the others pin every
# gate/up mode on both load paths (staged where its ring fits), with and without the optional flags.
VARIANTS = {
    "auto": None,
    "split": ffn.Tuning(mode=SPLIT, flags=0),
    "direct": DIRECT,
    "local-stats": ffn.Tuning(mode=LOCAL, flags=0),
    "local-stats-direct": ffn.Tuning(mode=LOCAL, stages=0, flags=0),
    "whole": ffn.Tuning(mode=WHOLE, flags=0),
    "whole-direct": ffn.Tuning(mode=WHOLE, stages=0, flags=0),
    "early-defer": ffn.Tuning(mode=SPLIT, flags=EARLY_DEFER),
    "early-defer-direct": ffn.Tuning(mode=SPLIT, stages=0, flags=EARLY_DEFER),
    "local-stats-early-defer": ffn.Tuning(mode=LOCAL, flags=EARLY_DEFER),
    "whole-early-defer": ffn.Tuning(mode=WHOLE, flags=EARLY_DEFER),
    "whole-early-defer-direct": ffn.Tuning(mode=WHOLE, stages=0, flags=EARLY_DEFER),
}


@pytest.mark.parametrize("path", list(VARIANTS.values()), ids=list(VARIANTS))
@pytest.mark.parametrize("i", range(RANDOM_CONFIGS))
def test_random_config_within_band_of_fp64(i, path):
    cfg = random_config(i)
    inp = make_inputs(
        cfg["hidden"], cfg["inter"], cfg["batch"], cfg["dtype"], cfg["fused"], cfg["norm_kind"], seed=i
    )
    out = run(inp, cfg["eps"], cfg["norm_kind"], cfg["act"], cfg["residual"], path)
    err = rel_error(inp, out, cfg["eps"], cfg["norm_kind"], cfg["act"], cfg["residual"])
    assert err <= BANDS[cfg["dtype"]], f"{cfg}: relative error {err:.3g}"


MODEL_SHAPES = [(4096, 11008), (4096, 14336), (2048, 8192), (896, 4864), (8192, 28672)]


@pytest.mark.parametrize("hidden,inter", MODEL_SHAPES)
@pytest.mark.parametrize("batch", [1, 4, 16])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_model_shapes_within_band_of_fp64(hidden, inter, batch, dtype):
    inp = make_inputs(hidden, inter, batch, dtype, fused=False, norm_kind="weight", seed=hidden + batch)
    out = run(inp, 1e-5, "weight", "silu", True)
    assert rel_error(inp, out, 1e-5, "weight", "silu", True) <= BANDS[dtype]


@pytest.mark.parametrize("variant", ["auto", "whole", "early-defer"])
@pytest.mark.parametrize("batch", [1, 16])
def test_bitwise_identical_over_1000_runs(batch, variant):
    """Every launch the same bits."""
    tuning = VARIANTS[variant]
    inp = make_inputs(4096, 11008, batch, torch.bfloat16, fused=False, norm_kind="weight", seed=7)
    first = run(inp, 1e-5, "weight", "silu", True, tuning).clone()
    outs = torch.empty((DETERMINISM_RUNS, *first.shape), device="cuda", dtype=first.dtype)
    for r in range(DETERMINISM_RUNS):
        inp["out"] = outs[r]
        outs[r].fill_(float("nan"))
        run(inp, 1e-5, "weight", "silu", True, tuning)
    differing = int(
        (outs.view(DETERMINISM_RUNS, -1).view(torch.int16) != first.view(1, -1).view(torch.int16))
        .any(dim=1)
        .sum()
    )
    assert differing == 0, f"{differing} of {DETERMINISM_RUNS} runs differ bitwise from the first"


# fp16, cluster size 4 (what the benchmark rows use), both batch tiles, staged and (whole at B=16) direct
FLAG_SHAPES = [
    (4096, 11008, 1),
    (4096, 11008, 16),
    (896, 4864, 1),
    (896, 4864, 16),
    (256, 136, 5),
    (1024, 520, 12),
]
FLAG_REPEATS = 20  # launches per flagged kernel: a late cluster (deferred fix-ups) varies from run to run


@pytest.mark.parametrize(
    "flags", ["early_x", "defer_fix_up", "early_x+defer_fix_up"]
)
@pytest.mark.parametrize("mode", ["split", "whole"])
@pytest.mark.parametrize("hidden,inter,batch", FLAG_SHAPES)
def test_flags_keep_the_bits_of_the_plain_kernel(hidden, inter, batch, mode, flags):
    """Each flag only reorders loads / moves the fix-up work: every sum keeps its order, so the output is
    bitwise the plain kernel's on every launch (and the arrival counters reset: launches repeat)."""
    plain = ffn.Tuning(mode=ffn.MODES[mode], flags=0)
    flagged = ffn.Tuning(mode=ffn.MODES[mode], flags=ffn.parse_flags(flags))
    inp = make_inputs(
        hidden, inter, batch, torch.float16, fused=False, norm_kind="weight", seed=hidden + batch
    )
    expected = run(inp, 1e-5, "weight", "silu", True, plain).clone()
    assert rel_error(inp, expected, 1e-5, "weight", "silu", True) <= BANDS[torch.float16]
    for r in range(FLAG_REPEATS):
        inp["out"].fill_(float("nan"))
        got = run(inp, 1e-5, "weight", "silu", True, flagged)
        assert torch.equal(got, expected), f"launch {r}: {flags} differs from the plain kernel"


@pytest.mark.parametrize(
    "variant", ["early-defer-direct", "whole-early-defer-direct"]
)
@pytest.mark.parametrize("hidden,inter,batch", FLAG_SHAPES)
def test_flags_on_the_direct_path_keep_its_bits(hidden, inter, batch, variant):
    tuning = VARIANTS[variant]
    plain = dataclasses.replace(tuning, flags=0)
    inp = make_inputs(hidden, inter, batch, torch.float16, fused=True, norm_kind="unit_offset", seed=batch)
    expected = run(inp, 1e-6, "unit_offset", "gelu_tanh", False, plain).clone()
    assert rel_error(inp, expected, 1e-6, "unit_offset", "gelu_tanh", False) <= BANDS[torch.float16]
    inp["out"].fill_(float("nan"))
    assert torch.equal(run(inp, 1e-6, "unit_offset", "gelu_tanh", False, tuning), expected)


@pytest.mark.parametrize("flags", [0, EARLY_DEFER], ids=["plain", "default-flags"])
@pytest.mark.parametrize("mode", list(ffn.MODES))
@pytest.mark.parametrize("hidden,inter,batch", [(4096, 11008, 1), (896, 4864, 16)])
def test_phase_timeline_build_matches_plain_build_bitwise(hidden, inter, batch, mode, flags):
    """The instrumented build computes the same bits, and every CTA stamps every phase in order."""
    plain = ffn.Tuning(mode=ffn.MODES[mode], flags=0)
    timed = ffn.Tuning(mode=ffn.MODES[mode], phases=True, flags=flags)
    inp = make_inputs(hidden, inter, batch, torch.float16, fused=False, norm_kind="weight", seed=5)
    expected = run(inp, 1e-5, "weight", "silu", True, plain).clone()
    ctas = ffn.plan_info(hidden, inter, torch.float16, batch, tuning=timed)["grid"][0]
    stamps = torch.zeros(ffn.stamp_elems(ctas), dtype=torch.int64, device="cuda")
    inp["out"].fill_(float("nan"))
    ffn.gated_ffn(
        inp["x"], inp["norm_weight"], 1e-5, "weight", inp["gate_up_weights"], inp["down_weight"], "silu",
        True, inp["out"], tuning=timed, stamps=stamps,
    )  # fmt: skip
    assert torch.equal(inp["out"], expected)
    st = stamps.view(ctas, len(ffn.PHASES), ffn.STAMP_WORDS)
    assert bool((st[:, 1:, 0] >= st[:, :-1, 0]).all()) and bool((st[..., 0] > 0).all())


def assert_graph_replays_match_direct_calls(tuning) -> None:
    """Capture one launch, replay it three times per step over five fresh inputs: each replay's output equals a
    direct call's bitwise (so the kernel's scratch counters reset themselves) and sits in the fp16 band."""
    hidden, inter, batch = 2048, 8192, 4
    inp = make_inputs(hidden, inter, batch, torch.float16, fused=True, norm_kind="weight", seed=11)
    run(inp, 1e-5, "weight", "silu", True, tuning)  # compile, load and allocate scratch outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        run(inp, 1e-5, "weight", "silu", True, tuning)
    for step in range(5):
        inp["x"].copy_(torch.randn_like(inp["x"], dtype=torch.float32).to(torch.float16))
        inp["out"].fill_(float("nan"))
        for _ in range(3):  # several replays: the counters must have reset themselves
            graph.replay()
        torch.cuda.synchronize()
        replayed = inp["out"].clone()
        inp["out"].fill_(float("nan"))
        direct = run(inp, 1e-5, "weight", "silu", True, tuning)
        assert torch.equal(replayed, direct), f"step {step}: graph replay differs from a direct call"
        assert rel_error(inp, replayed, 1e-5, "weight", "silu", True) <= BANDS[torch.float16]


@pytest.mark.parametrize("variant", ["auto", "whole-early-defer", "early-defer-direct"])
def test_cuda_graph_capture_and_replay_matches_direct_calls(variant):
    """Replays repeat: the arrival counters reset themselves."""
    assert_graph_replays_match_direct_calls(VARIANTS[variant])


def test_rejects_what_it_cannot_compute():
    inp = make_inputs(256, 64, 2, torch.float16, fused=False, norm_kind="weight", seed=3)
    args = (
        inp["x"],
        inp["norm_weight"],
        1e-5,
        "weight",
        inp["gate_up_weights"],
        inp["down_weight"],
        "silu",
        True,
    )
    with pytest.raises(ValueError, match="overlaps"):
        ffn.gated_ffn(*args, inp["x"])
    with pytest.raises(ValueError, match="contiguous"):
        ffn.gated_ffn(
            inp["x"],
            inp["norm_weight"],
            1e-5,
            "weight",
            [w.t().contiguous().t() for w in inp["gate_up_weights"]][:1] * 2,
            inp["down_weight"],
            "silu",
            True,
            inp["out"],
        )
    with pytest.raises(ValueError, match="batch"):
        big = torch.zeros(17, 1, 256, device="cuda", dtype=torch.float16)
        ffn.gated_ffn(big, *args[1:], torch.empty_like(big))


def sanitizer_pass() -> None:
    """One small launch per kernel variant (for compute-sanitizer memcheck / racecheck / synccheck)."""
    worst = 0.0
    for hidden, inter, batch, dtype in [
        (1024, 520, 3, torch.float16),
        (1024, 520, 12, torch.bfloat16),
        (192, 136, 5, torch.bfloat16),
        (96, 24, 16, torch.float16),
    ]:
        for residual, path in (
            (True, None),
            (False, DIRECT),
            (True, VARIANTS["whole"]),
            (False, VARIANTS["local-stats-direct"]),
            (True, VARIANTS["whole-early-defer"]),
            (False, VARIANTS["early-defer-direct"]),
        ):
            inp = make_inputs(hidden, inter, batch, dtype, fused=residual, norm_kind="weight", seed=batch)
            out = run(inp, 1e-5, "weight", "gelu_tanh", residual, path)
            torch.cuda.synchronize()
            err = rel_error(inp, out, 1e-5, "weight", "gelu_tanh", residual)
            worst = max(worst, err / BANDS[dtype])
    print(f"sanitizer pass done; worst error / band = {worst:.3f}")
    if worst > 1:
        sys.exit(1)


if __name__ == "__main__":
    sanitizer_pass()
