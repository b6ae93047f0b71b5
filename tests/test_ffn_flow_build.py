"""The claimed-tile gated-FFN kernel (csrc/gated_ffn_flow.cu) compiles for sm_90a without spills at two
CTAs per SM, and its launcher cuts every benchmark model into enough tiles to balance the SMs."""

from __future__ import annotations

import pytest
import torch

from cf_compile_kernels import ffn, ffn_flow
from cf_compile_kernels.build import compile_kernel
from cf_compile_kernels.registry import registered

REGISTERS_PER_SM = 65536
MODELS = [(896, 4864), (2048, 8192), (4096, 11008), (4096, 14336), (8192, 28672)]


@pytest.mark.parametrize("dtype", ["__half", "__nv_bfloat16"])
@pytest.mark.parametrize("rpw,bucket", [(r, b) for r, top in ffn_flow.RPW_MAX_BUCKET.items()
                                        for b in ffn_flow.BATCH_BUCKETS if b <= top])
def test_builds_fit_two_ctas_per_sm_without_spills(dtype, rpw, bucket):
    k = compile_kernel(ffn_flow.SOURCE, ffn_flow.KERNEL, template_args=(dtype, rpw, bucket), arch="sm_90a")
    assert k.local_bytes == 0, f"{k.name_expression}: {k.local_bytes} B of local memory (spills)"
    assert k.registers * ffn_flow.THREADS * 2 <= REGISTERS_PER_SM


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rpw,batch", [(2, 2), (2, 4), (4, 2)])
def test_h_in_shared_memory_builds_fit_without_spills(dtype, rpw, batch):
    args = ffn_flow.template_args(dtype, rpw, batch, h_shared=True)
    assert args[-1] == "true" and ffn_flow.template_args(dtype, rpw, batch) == args[:3]
    k = compile_kernel(ffn_flow.SOURCE, ffn_flow.KERNEL, template_args=args, arch="sm_90a")
    assert k.local_bytes == 0 and k.registers * ffn_flow.THREADS * 2 <= REGISTERS_PER_SM
    assert ffn_flow.smem_bytes(4096, batch, 2, True, 11008) == ffn_flow.batch_bucket(batch) * 11008 * 2


def test_every_offered_build_is_registered_for_the_doctor():
    flow_args = {e.template_args for e in registered() if e.source == ffn_flow.SOURCE}
    for dtype in ffn_flow.CTYPES.values():
        for rpw, top in ffn_flow.RPW_MAX_BUCKET.items():
            for bucket in ffn_flow.BATCH_BUCKETS:
                assert ((dtype, rpw, bucket) in flow_args) == (bucket <= top)


@pytest.mark.parametrize("hidden,inter", MODELS)
@pytest.mark.parametrize("batch", [1, 2, 3, 8])
def test_models_are_cut_by_the_measured_rules(hidden, inter, batch):
    """Whole gate/up rows per warp and down tiles of DOWN_TILE_ROWS rows (NOTES-ffn.md round 9), four rows
    per warp where that build is spill-free."""
    rpw = ffn_flow.default_rpw(batch)
    assert rpw == (4 if batch <= 2 else 2)
    assert ffn_flow.gate_up_wpr(inter, rpw) == ffn_flow.GATE_UP_WPR
    assert ffn_flow.tile_rows(rpw, ffn_flow.down_wpr(hidden, rpw)) == ffn_flow.DOWN_TILE_ROWS
    cfg = ffn.ffn_config(hidden=hidden, intermediate=inter, batch=batch, dtype=torch.bfloat16, num_sms=132,
                         kernel="flow")
    assert cfg["gate_up_tiles"] * cfg["gate_up_units_per_tile"] == inter
    assert cfg["down_tiles"] * cfg["down_rows_per_tile"] == hidden
    assert cfg["ctas"] == min(2 * 132, cfg["gate_up_tiles"] + cfg["down_tiles"])


def test_odd_shapes_take_the_nearest_cut():
    assert ffn_flow.tile_rows(2, ffn_flow.down_wpr(96 + 2, 2)) == 2  # 98 rows: 4 does not cut, 2 does
    assert ffn_flow.gate_up_wpr(12, 4) == 4  # tiles of 16 or 8 units do not cut 12; 4 units (wpr 4) do
    assert ffn_flow.gate_up_wpr(8, 4) == 2


def test_batches_one_and_two_default_to_the_claimed_tiles_and_larger_batches_to_clusters():
    assert ffn.kernel_kind(4096, 11008, 1) == "flow"
    assert ffn.kernel_kind(4096, 11008, 2) == "flow"
    assert ffn.kernel_kind(4096, 11008, 3) == "cluster"
    assert ffn.ffn_config(hidden=896, intermediate=4864, batch=1, dtype=torch.bfloat16, num_sms=132)["kernel"] == \
        "claimed tiles"
    assert ffn.ffn_config(hidden=896, intermediate=4864, batch=4, dtype=torch.bfloat16, num_sms=132)["kernel"] == \
        "cluster"


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"hidden": 4096, "intermediate": 11008, "batch": 9}, "cluster kernel"),
        ({"hidden": 4096, "intermediate": 11008, "batch": 4, "rpw": 4}, "spills"),
        ({"hidden": 4100, "intermediate": 11008, "batch": 1}, "multiples"),
        ({"hidden": 8192, "intermediate": 28672, "batch": 8, "rpw": 2}, None),
    ],
)
def test_shapes_outside_the_kernel_get_a_reason(kwargs, needle):
    reason = ffn_flow.flow_unsupported_reason(**kwargs)
    assert (reason is None) if needle is None else (needle in reason)


def test_batch_buckets_round_up():
    assert [ffn_flow.batch_bucket(b) for b in range(1, 9)] == [1, 2, 4, 4, 8, 8, 8, 8]
    with pytest.raises(ValueError):
        ffn_flow.batch_bucket(9)


def test_forcing_the_flow_kernel_where_it_cannot_run_is_an_error():
    assert ffn.kernel_kind(4096, 11008, 16, ffn.Tuning(kernel="cluster")) == "cluster"
    assert ffn.kernel_kind(4096, 11008, 16) == "cluster"  # the default never picks what cannot run
    assert ffn.kernel_kind(4100, 11008, 1) == "cluster"
    with pytest.raises(ValueError, match="claimed-tile"):
        ffn.kernel_kind(4096, 11008, 16, ffn.Tuning(kernel="flow"))
    with pytest.raises(ValueError, match="known"):
        ffn.kernel_kind(4096, 11008, 1, ffn.Tuning(kernel="tiles"))
    assert ffn_flow.smem_bytes(4096, 3, torch.tensor([], dtype=torch.bfloat16).element_size()) == 4 * 4096 * 2


@pytest.mark.parametrize("hidden,inter,expected", [(4096, 11008, True), (4096, 14336, True), (2048, 8192, False),
                                                   (896, 4864, False)])
def test_batch_two_keeps_h_in_shared_memory_where_a_cta_runs_several_down_tiles(hidden, inter, expected):
    """default_h_shared: the copy of h pays where a CTA runs more than H_SHARED_MIN_DOWN_TILES_PER_CTA down tiles
    (measured: hidden 4096 with 3.9 per CTA gains, hidden 2048 with 1.9 loses); never at batch 1."""
    rpw = ffn_flow.default_rpw(2)
    cut = ffn_flow.down_wpr(hidden, rpw)
    assert ffn_flow.default_h_shared(hidden, inter, 2, rpw, cut, num_sms=132) is expected
    assert not ffn_flow.default_h_shared(hidden, inter, 1, ffn_flow.default_rpw(1), cut, num_sms=132)
    cfg = ffn.ffn_config(hidden=hidden, intermediate=inter, batch=2, dtype=torch.bfloat16, num_sms=132)
    assert cfg["kernel"] == "claimed tiles" and cfg["h_shared"] is expected


def test_batch_four_stays_on_the_cluster_kernel():
    cfg = ffn.ffn_config(hidden=4096, intermediate=11008, batch=4, dtype=torch.bfloat16, num_sms=132)
    assert cfg["kernel"] == "cluster"
