"""The claimed-tile attention kernel (csrc/attention_flow.cu) compiles for sm_90a without spills at two CTAs per
SM, and its launcher cuts the benchmark models into tiles that stay inside one head and one KV group."""

from __future__ import annotations

import pytest
import torch

from cf_compile_kernels import attention
from cf_compile_kernels import attention_flow as af
from cf_compile_kernels.build import compile_kernel
from cf_compile_kernels.flow import tile_rows
from cf_compile_kernels.registry import registered

REGISTERS_PER_SM = 65536
MODELS = {  # hidden, heads, kv heads, head_dim
    "llama-2-7b": (4096, 32, 32, 128),
    "llama-3-8b": (4096, 32, 8, 128),
    "llama-3.2-1b": (2048, 32, 8, 64),
    "qwen2.5-0.5b": (896, 14, 2, 64),
}
BUILDS = [(dt, d, gm) for dt in af.CTYPES.values() for d, gms in af.GROUP_BUILDS.items() for gm in gms]


@pytest.mark.parametrize("dtype,head_dim,gm", BUILDS)
def test_builds_fit_two_ctas_per_sm_without_spills(dtype, head_dim, gm):
    """The default build of each group size (GM >= 2: the grouped-head form, token lanes + split o_proj)."""
    k = compile_kernel(af.SOURCE, af.KERNEL, template_args=(dtype, head_dim, gm, af.RPW), arch="sm_90a",
                       defines=af.GQA_DEFINES if gm > 1 else None)
    assert k.local_bytes == 0, f"{k.name_expression}: {k.local_bytes} B of local memory"
    assert k.registers * af.THREADS * 2 <= REGISTERS_PER_SM
    assert af.smem_bytes(8192, head_dim, gm, merge_stage=True) * 2 <= 227 * 1024


def test_every_offered_build_is_registered():
    args = {e.template_args for e in registered() if e.source == af.SOURCE}
    assert args == {(dt, d, gm, af.RPW) for dt, d, gm in BUILDS}


@pytest.mark.parametrize("model", MODELS)
def test_models_are_supported_and_tiles_stay_inside_a_head(model):
    hidden, nh, kvh, d = MODELS[model]
    assert af.flow_unsupported_reason(hidden=hidden, num_heads=nh, num_kv_heads=kvh, head_dim=d, batch=1,
                                      has_qk_norm=False) is None
    slots = 2 * 132
    wpr = af.qkv_wpr(nh, kvh, d, slots)
    assert d % tile_rows(af.RPW, wpr) == 0  # a q/k/v tile never spans two heads (its group counter is one)
    o_rows = tile_rows(af.RPW, af.o_wpr(hidden))
    assert hidden % o_rows == 0 and o_rows == af.O_TILE_ROWS
    assert 1 <= af.chunks(kvh, slots) <= af.MAX_CHUNKS


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"batch": 2}, "batch 2"),
        ({"head_dim": 256}, "head_dim 256"),
        ({"has_qk_norm": True}, "q/k norms"),
        ({"num_heads": 40, "num_kv_heads": 4, "head_dim": 128}, "groups above 4"),
    ],
)
def test_what_it_does_not_take_gets_a_reason(kwargs, needle):
    base = {"hidden": 4096, "num_heads": 32, "num_kv_heads": 8, "head_dim": 128, "batch": 1, "has_qk_norm": False}
    assert needle in af.flow_unsupported_reason(**{**base, **kwargs})


@pytest.mark.parametrize("model", ["llama-2-7b", "llama-3-8b", "llama-3.2-1b", "qwen2.5-0.5b"])
def test_batch_one_reports_the_claimed_tile_kernel_and_batch_four_the_cluster_kernel(model, monkeypatch):
    """attention_flow.is_default: batch 1, MHA and GQA (measured faster than the cluster kernel at 1024 and 4096,
    Qwen2.5-0.5B tied at 4096); batches of 2+ keep the cluster kernel."""
    monkeypatch.delenv("CF_ATTN_KERNEL", raising=False)
    hidden, nh, kvh, d = MODELS[model]
    shape = dict(hidden=hidden, num_heads=nh, num_kv_heads=kvh, head_dim=d, dtype=torch.bfloat16, num_sms=132)
    assert attention.attention_config(**shape, batch=1)["kernel"] == "flow"
    assert attention.attention_config(**shape, batch=4)["kernel"] == "cluster"


def test_grouped_heads_take_token_lanes_and_the_split_o_proj_and_every_build_the_lean_hand_offs(monkeypatch):
    """Knobs.resolved: token lanes and o_proj per head segment where query heads share a KV head (measured wins
    at every GQA shape, losses at MHA 4096); lean hand-offs and the dense-mask skip everywhere; the environment
    forces each either way."""
    for name in ("TOKEN_LANES", "O_SPLIT", "LEAN_SYNC", "DENSE_MASK", "MERGE_STAGE"):
        monkeypatch.delenv(f"CF_ATTN_FLOW_{name}", raising=False)
    gqa, mha = af.Knobs.from_env().resolved(32, 8), af.Knobs.from_env().resolved(32, 32)
    assert (gqa.token_lanes, gqa.o_split, mha.token_lanes, mha.o_split) == (True, True, False, False)
    assert gqa.lean_sync and gqa.dense_mask and mha.lean_sync and mha.dense_mask and not mha.merge_stage
    assert mha.defines(timeline=False) is None
    assert gqa.defines(timeline=False) == {"CF_ATTN_TOKEN_LANES": 1, "CF_ATTN_O_SPLIT": 1}
    monkeypatch.setenv("CF_ATTN_FLOW_TOKEN_LANES", "0")
    monkeypatch.setenv("CF_ATTN_FLOW_LEAN_SYNC", "0")
    forced = af.Knobs.from_env().resolved(32, 8)
    assert forced.defines(timeline=False) == {"CF_ATTN_O_SPLIT": 1, "CF_FLOW_LEAN_SYNC": 0}


def test_the_environment_overrides_the_default_both_ways(monkeypatch):
    hidden, nh, kvh, d = MODELS["llama-3-8b"]
    shape = dict(hidden=hidden, num_heads=nh, num_kv_heads=kvh, head_dim=d, batch=1, dtype=torch.bfloat16,
                 num_sms=132)
    monkeypatch.setenv("CF_ATTN_KERNEL", "flow")
    assert attention.attention_config(**shape)["kernel"] == "flow"
    monkeypatch.setenv("CF_ATTN_KERNEL", "cluster")
    mha = dict(shape, num_heads=32, num_kv_heads=32)
    assert attention.attention_config(**mha)["kernel"] == "cluster"
    assert attention.attention_config(**mha, has_qk_norm=True, kernel="flow")["kernel"] == "cluster"


def test_merge_is_two_level_only_above_the_single_pass_cap():
    assert af.merge_blocks(af.MAX_CHUNKS) == 0 and af.merge_blocks(1) == 0
    assert af.merge_blocks(33) == 5 and af.merge_blocks(64) == 8 and af.merge_blocks(132) == 17


def test_benchmark_knobs_come_from_the_environment(monkeypatch):
    monkeypatch.delenv("CF_ATTN_FLOW_MAX_CHUNKS", raising=False)
    monkeypatch.delenv("CF_ATTN_FLOW_QKV_WPR", raising=False)
    monkeypatch.delenv("CF_ATTN_FLOW_TOKEN_LANES", raising=False)
    monkeypatch.delenv("CF_ATTN_FLOW_O_SPLIT", raising=False)
    monkeypatch.delenv("CF_ATTN_FLOW_LEAN_SYNC", raising=False)
    monkeypatch.delenv("CF_ATTN_FLOW_DENSE_MASK", raising=False)
    monkeypatch.delenv("CF_ATTN_FLOW_MERGE_STAGE", raising=False)
    assert af.Knobs.from_env() == af.Knobs(af.MAX_CHUNKS, None)
    monkeypatch.setenv("CF_ATTN_FLOW_MAX_CHUNKS", "64")
    monkeypatch.setenv("CF_ATTN_FLOW_QKV_WPR", "4")
    assert af.Knobs.from_env() == af.Knobs(64, 4)
    assert af.Knobs().defines(timeline=False) is None  # the default build: no -D
    monkeypatch.setenv("CF_ATTN_FLOW_TOKEN_LANES", "1")
    assert af.Knobs.from_env().defines(timeline=True) == {"CF_FLOW_TIMELINE": 1, "CF_ATTN_TOKEN_LANES": 1}
    monkeypatch.setenv("CF_ATTN_FLOW_O_SPLIT", "1")
    assert af.Knobs.from_env() == af.Knobs(64, 4, True, True)
    assert af.Knobs.from_env().defines(timeline=False) == {"CF_ATTN_TOKEN_LANES": 1, "CF_ATTN_O_SPLIT": 1}
    monkeypatch.setenv("CF_ATTN_FLOW_LEAN_SYNC", "0")
    monkeypatch.setenv("CF_ATTN_FLOW_DENSE_MASK", "0")
    monkeypatch.setenv("CF_ATTN_FLOW_MERGE_STAGE", "1")
    assert af.Knobs.from_env() == af.Knobs(64, 4, True, True, False, False, True)
    assert af.Knobs.from_env().defines(timeline=False) == {"CF_ATTN_TOKEN_LANES": 1, "CF_ATTN_O_SPLIT": 1,
                                                           "CF_FLOW_LEAN_SYNC": 0, "CF_ATTN_DENSE_MASK": 0,
                                                           "CF_ATTN_MERGE_STAGE": 1}


def test_split_o_proj_segments_are_whole_groups_within_one_chunk():
    """CF_ATTN_O_SPLIT: a segment is whole KV groups (its tiles wait on one counter), divides the groups, and
    spans at most O_SPLIT_SEGMENT_COLS columns (one 16-vector chunk per lane per row); the queue counts one
    o_proj tile per row block and segment."""
    shapes = {"llama-2-7b": (32, 32, 128, 8), "llama-3-8b": (32, 8, 128, 2), "llama-3.2-1b": (32, 8, 64, 4),
              "qwen2.5-0.5b": (14, 2, 64, 2)}
    for name, (nh, kvh, d, want) in shapes.items():
        seg = af.o_segment_groups(nh, kvh, d)
        assert seg == want, name
        assert kvh % seg == 0 and seg * nh // kvh * d <= af.O_SPLIT_SEGMENT_COLS
    counts = af.tile_counts(4096, 32, 32, 128, 1, 1, 8, o_segments=4)
    assert counts["o_proj"] == 4096 // af.O_SPLIT_TILE_ROWS * 4
    assert af.chunks(2, 264, 64) == 64 and af.chunks(8, 264, 64) == 33 and af.chunks(2, 264) == af.MAX_CHUNKS


def test_the_report_shows_the_cut_the_launcher_makes(monkeypatch):
    """flow_config (the report's kernel-config column) follows the resolved build: GQA shapes list o_proj tiles of
    O_SPLIT_TILE_ROWS rows per head segment and the token lanes; MHA the plain cut."""
    for name in ("TOKEN_LANES", "O_SPLIT", "MAX_CHUNKS", "QKV_WPR"):
        monkeypatch.delenv(f"CF_ATTN_FLOW_{name}", raising=False)
    gqa = af.flow_config(hidden=4096, num_heads=32, num_kv_heads=8, head_dim=128, num_sms=132)
    assert gqa["token_lanes"] and gqa["o_tile_rows"] == af.O_SPLIT_TILE_ROWS
    assert gqa["o_segments"] == 8 // af.o_segment_groups(32, 8, 128) == 4
    assert gqa["tiles"] - gqa["attention_tiles"] - (32 + 16) * 128 // gqa["qkv_tile_rows"] == 4096 // 32 * 4
    mha = af.flow_config(hidden=4096, num_heads=32, num_kv_heads=32, head_dim=128, num_sms=132)
    assert not mha["token_lanes"] and mha["o_segments"] == 1 and mha["o_tile_rows"] == af.O_TILE_ROWS
