"""The accuracy diff: what ``compare()`` reports on tiny random models, and that it catches a broken op.

Each ``compare`` compiles one decode graph with Inductor (a few seconds with the shared cache), so the
fp32 result is computed once per module and read by several specifications.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from cf_compile import accuracy, backend, rewrite
from cf_compile.accuracy import BAND_FACTOR, BAND_FLOOR, Agreement, Metrics, calibration_band, compare
from cf_compile.models import build_model

pytest.importorskip("transformers")

STEPS = 6
LLAMA_BLOCKS = {(0, "attention"), (0, "ffn"), (1, "attention"), (1, "ffn")}


def prompt(vocab: int, length: int = 5, batch: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def fp32_run() -> tuple[accuracy.AccuracyReport, backend.Compilation]:
    """compare() on a tiny fp32 Llama, and the compilation it made (later tests compile others)."""
    model = build_model("llama", "tiny", torch.float32)
    first = len(backend.compilations())
    report = compare(model, prompt(model.config.vocab_size), steps=STEPS)
    (comp,) = [c for c in backend.compilations()[first:] if c.regions]
    return report, comp


@pytest.fixture(scope="module")
def fp32_report(fp32_run) -> accuracy.AccuracyReport:
    return fp32_run[0]


# ------------------------------------------------------------------------------- metric definitions
def test_metrics_of_identical_tensors_are_zero_error_and_unit_cosine():
    t = torch.randn(3, 7)
    m = Metrics.of(t, t.clone())
    assert (m.max_abs, m.rel, m.cosine) == (0.0, 0.0, pytest.approx(1.0))


def test_metrics_relative_error_is_norm_of_difference_over_norm_of_expected():
    expected = torch.tensor([3.0, 4.0])          # norm 5
    m = Metrics.of(expected + torch.tensor([0.0, 0.5]), expected)
    assert m.max_abs == pytest.approx(0.5)
    assert m.rel == pytest.approx(0.1)
    assert Metrics.of(-expected, expected).cosine == pytest.approx(-1.0)


def test_nan_is_never_the_best_value():
    good, bad = Metrics(0.0, 0.0, 1.0), Metrics.of(torch.tensor([math.nan]), torch.tensor([1.0]))
    worst = Metrics.worst([good, bad])
    assert math.isnan(worst.rel) and math.isnan(worst.cosine)
    assert not calibration_band(1e-2, math.nan).inside


def test_token_agreement_counts_rows_and_names_first_divergent_step():
    expected = torch.tensor([[1, 1], [2, 2], [3, 3], [4, 4]])
    tokens = expected.clone()
    tokens[2, 1] = 9
    a = Agreement.of(tokens, expected)
    assert a.fraction == pytest.approx(7 / 8)
    assert a.first_divergence == 2
    assert Agreement.of(expected, expected).first_divergence is None


def test_band_rule_is_one_and_a_half_times_eager_error_plus_fp32_floor():
    assert calibration_band(4e-3, 4e-3).inside
    assert calibration_band(4e-3, BAND_FACTOR * 4e-3).inside
    assert not calibration_band(4e-3, 2 * 4e-3).inside
    # an fp32 model: eager is the reference (error 0), only re-association noise is allowed
    assert calibration_band(0.0, 0.5 * BAND_FLOOR).inside
    assert not calibration_band(0.0, 10 * BAND_FLOOR).inside


# ---------------------------------------------------------------------------- fp32 end to end
def test_fp32_compiled_generates_the_eager_tokens(fp32_report):
    ce = fp32_report.compiled_vs_eager
    assert len(ce.steps) == STEPS
    assert ce.tokens.fraction == 1.0 and ce.tokens.first_divergence is None
    assert ce.worst.rel < 1e-5 and ce.worst.cosine > 1 - 1e-9
    assert ce.kv_worst < 1e-5
    assert len(ce.kv_max_abs) == 2                           # one (keys, values) pair per layer


def test_fp32_band_is_only_the_floor_and_says_so(fp32_report):
    band = fp32_report.band
    assert band.eager_rel == 0.0 and band.limit == BAND_FLOOR and band.inside
    assert any("float32" in note and "floor" in note for note in fp32_report.notes)
    assert fp32_report.ok
    assert fp32_report.verdict().startswith("inside band")


def test_one_op_row_per_fused_block_with_tiny_errors(fp32_report):
    ops = fp32_report.ops
    assert fp32_report.fused_blocks == 4
    assert {(o.layer, o.block) for o in ops} == LLAMA_BLOCKS and len(ops) == 4
    for o in ops:
        assert o.output.rel < 1e-6 and o.output.cosine > 1 - 1e-9
        assert len(o.cache_slot) == (2 if o.block == "attention" else 0)
        assert all(m.max_abs < 1e-6 for m in o.cache_slot)


def test_report_renders_and_serialises(fp32_report, capsys):
    fp32_report.render()
    out = capsys.readouterr().out
    assert "per fused op" in out and "verdict: inside band" in out
    data = json.loads(json.dumps(fp32_report.to_json()))
    assert data["ok"] is True and data["verdict"] == fp32_report.verdict()
    assert len(data["ops"]) == 4 and len(data["pairs"]) == 2 + 1


def test_per_op_replay_leaves_the_recorded_inputs_untouched(fp32_run):
    fp32_report, comp = fp32_run
    before = [a.clone() if isinstance(a, torch.Tensor) else a for a in comp.last_inputs]
    again = accuracy.op_errors(comp)
    rows = lambda ops: sorted((o.layer, o.block, o.output.max_abs) for o in ops)  # noqa: E731
    assert rows(again) == rows(fp32_report.ops)               # the replay is repeatable
    for a, b in zip(comp.last_inputs, before, strict=True):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b)


# ----------------------------------------------------------------------------------- bf16 band
def test_bf16_compiled_error_is_inside_eager_rounding_band():
    model = build_model("llama", "tiny", torch.bfloat16)
    report = compare(model, prompt(model.config.vocab_size), steps=STEPS)
    ev, cv = report.pair("eager", "float32"), report.pair("compiled", "float32")
    assert ev.worst.rel > 100 * BAND_FLOOR                    # bf16 rounding is visible against fp32
    assert report.band.eager_rel == ev.worst.rel and report.band.compiled_rel == cv.worst.rel
    assert report.band.inside == (cv.worst.rel <= BAND_FACTOR * ev.worst.rel + BAND_FLOOR)
    assert report.band.inside, report.verdict()
    assert next(model.parameters()).dtype == torch.bfloat16   # the fp32 reference was a copy


# ------------------------------------------------------------------------------- the diff can fail
def _scaled(fn, factor: float = 1.01):
    """A subtly wrong block: every output 1% too large (think of a dropped epsilon or a bad scale)."""
    def broken(*args, **kwargs):
        return fn(*args, **kwargs) * factor
    return broken


@pytest.mark.parametrize("kernels", ["auto", "reference"])
def test_a_broken_fused_op_shows_up_in_its_own_rows_only(monkeypatch, kernels):
    """kernels="auto" on CPU inlines the reference function; "reference" calls the custom op."""
    if kernels == "auto":
        families = tuple(dataclasses.replace(f, reference=_scaled(f.reference)) if f.name == "ffn" else f
                         for f in rewrite.FAMILIES)
        monkeypatch.setattr(rewrite, "FAMILIES", families)
    else:
        import cf_compile.ops.ffn as ffn_op

        monkeypatch.setattr(ffn_op, "gated_ffn_reference", _scaled(ffn_op.gated_ffn_reference))
    model = build_model("llama", "tiny", torch.float32)
    report = compare(model, prompt(model.config.vocab_size), steps=3, options={"kernels": kernels})
    by_block = {b: [o for o in report.ops if o.block == b] for b in ("attention", "ffn")}
    assert len(by_block["ffn"]) == 2 and len(by_block["attention"]) == 2
    assert all(o.output.rel == pytest.approx(0.01, rel=1e-3) for o in by_block["ffn"])
    assert all(o.output.rel < 1e-6 for o in by_block["attention"])
    assert report.worst_op.block == "ffn"
    assert not report.band.inside and not report.ok
    assert report.verdict().startswith("OUTSIDE band")


def test_a_wrong_cache_write_shows_up_in_the_cache_slot_column(fp32_run, monkeypatch):
    """The per-op replay calls the op as it is now: break the attention reference's key write after
    compiling and replay the same step (no recompile needed)."""
    def wrong_keys(reference):
        def broken(**kwargs):
            out = reference(**kwargs)
            k, pos = kwargs["k_cache"], kwargs["cache_position"]
            k.index_copy_(2, pos, k.index_select(2, pos) * 1.01)
            return out
        return broken

    families = tuple(dataclasses.replace(f, reference=wrong_keys(f.reference)) if f.name == "attention" else f
                     for f in rewrite.FAMILIES)
    monkeypatch.setattr(rewrite, "FAMILIES", families)
    comp = fp32_run[1]
    assert {r.record.implementation for r in comp.regions} == {rewrite.REFERENCE_INLINED}
    ops = accuracy.op_errors(comp)
    attention = [o for o in ops if o.block == "attention"]
    assert len(attention) == 2
    for o in attention:
        keys, values = o.cache_slot
        assert keys.rel == pytest.approx(0.01, rel=1e-3) and values.max_abs == 0.0
        assert o.output.rel < 1e-6                      # the step's own output read the right k
    assert all(o.worst.rel < 1e-6 for o in ops if o.block == "ffn")
