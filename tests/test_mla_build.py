"""The MLA decode kernel compiles for sm_90a with NVRTC (no GPU needed) and its launcher plans and declines.

Specification: the batch-bucket extremes compile to SASS with no spills and no stack (one 256-thread CTA
per SM: 255 registers available); the plan is a one-wave grid (one CTA per SM) whose attention items
(batch row x head group x chunk) cover the SMs once; shapes outside the kernel get a one-line reason.
"""

from __future__ import annotations

import pytest
import torch
from kernel_builds import ARCH, assert_clean_sass, compile_or_skip

from cf_compile_kernels import mla
from cf_compile_kernels.build import compile_kernel
from cf_compile_kernels.registry import registered

EXTREMES = [(dt, bb) for dt in ("__half", "__nv_bfloat16") for bb in (1, 16)]
H100_SMS = 132
V2_LITE = dict(hidden=2048, num_heads=16, q_lora_rank=0, kv_lora_rank=512, qk_nope_head_dim=128,
               qk_rope_head_dim=64, v_head_dim=128, rope_form="complex")
V3 = dict(hidden=7168, num_heads=128, q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128,
          qk_rope_head_dim=64, v_head_dim=128, rope_form="interleave")


@pytest.fixture(scope="module")
def compiled():
    return compile_or_skip(mla.SOURCE, mla.KERNEL, EXTREMES)


@pytest.mark.parametrize("args", EXTREMES, ids=lambda a: f"{a[0]}-B{a[1]}")
def test_compiles_without_spills(compiled, args):
    assert_clean_sass(compiled[args])


def test_registered_for_the_doctor():
    mine = {tuple(e.template_args) for e in registered() if e.source == mla.SOURCE}
    assert mine >= set(EXTREMES)


@pytest.mark.parametrize("shape", [V2_LITE, V3], ids=["v2-lite", "v3"])
@pytest.mark.parametrize("batch", [1, 4, 16])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_deepseek_shapes_are_supported_and_fill_the_gpu(shape, batch, dtype):
    assert mla.mla_unsupported_reason(**shape, batch=batch, dtype=dtype, max_cache_len=4096) is None
    cfg = mla.mla_config(num_heads=shape["num_heads"], qk_nope_head_dim=128, v_head_dim=128,
                         q_lora_rank=shape["q_lora_rank"], batch=batch, num_sms=H100_SMS)
    assert cfg["ctas"] == H100_SMS and cfg["smem_bytes"] <= mla.SMEM_LIMIT
    item_heads = mla.VARIANTS[mla.DEFAULT_VARIANT].item_heads  # heads per attention item of the default
    items = batch * -(-shape["num_heads"] // item_heads) * cfg["attention_chunks"]
    assert H100_SMS * 0.75 <= items <= H100_SMS or cfg["attention_chunks"] == 1
    assert cfg["scratch_bytes"] < 64 << 20


@pytest.mark.parametrize(("change", "words"), [
    (dict(dtype=torch.float32), "float16"),
    (dict(kv_lora_rank=256), "kv_lora_rank"),
    (dict(qk_rope_head_dim=32), "rope dim"),
    (dict(batch=17), "batch"),
    (dict(has_bias=True), "bias"),
    (dict(mask_dtype=torch.float16), "bool"),
    (dict(rope_form="yarn"), "rope form"),
    (dict(hidden=2050), "hidden"),
])
def test_unsupported_shapes_have_reasons(change, words):
    args = {**V2_LITE, "batch": 1, "dtype": torch.bfloat16, "max_cache_len": 4096, **change}
    reason = mla.mla_unsupported_reason(**args)
    assert reason and words in reason


def test_work_split_follows_the_sm_count():
    small = mla.mla_config(num_heads=16, qk_nope_head_dim=128, v_head_dim=128, q_lora_rank=0, batch=1, num_sms=66)
    large = mla.mla_config(num_heads=16, qk_nope_head_dim=128, v_head_dim=128, q_lora_rank=0, batch=1, num_sms=132)
    assert small["ctas"] == 66 and large["ctas"] == 132
    assert 0 <= large["attention_chunks"] - 2 * small["attention_chunks"] <= 1  # twice the SMs, twice the chunks (floored)


def test_variants_name_known_knobs_and_chunks_keep_a_tile():
    assert mla.DEFAULT_VARIANT in mla.VARIANTS and len(mla.PHASES) == 15
    for name, v in mla.VARIANTS.items():
        assert all(k.startswith("CF_MLA_") for k, _ in v.defines), name
    base = mla.mla_config(num_heads=16, qk_nope_head_dim=128, v_head_dim=128, q_lora_rank=0, batch=1,
                          num_sms=H100_SMS, max_cache_len=1024, variant="base")
    chunked = mla.mla_config(num_heads=16, qk_nope_head_dim=128, v_head_dim=128, q_lora_rank=0, batch=1,
                             num_sms=H100_SMS, max_cache_len=1024, variant="chunk")
    assert base["attention_chunks"] == H100_SMS and chunked["attention_chunks"] == 1024 // mla.TILE
    wide = mla.mla_config(num_heads=16, qk_nope_head_dim=128, v_head_dim=128, q_lora_rank=0, batch=16,
                          num_sms=H100_SMS, max_cache_len=4096, variant="chunk")
    assert wide["attention_chunks"] == H100_SMS // 16


SPLIT_VARIANTS = ("split", "split_mma", "split_mma_all")


@pytest.mark.parametrize("bucket", [1, 16])
@pytest.mark.parametrize("variant", SPLIT_VARIANTS)
def test_split_variants_compile_without_spills(compiled, variant, bucket):
    for phases in (False, True):
        kernel = compile_kernel(mla.SOURCE, mla.KERNEL, template_args=("__nv_bfloat16", bucket), arch="sm_90a",
                                defines=mla.variant_defines(variant, phases=phases))
        assert kernel.spill_bytes == 0 and kernel.local_bytes == 0, kernel.name_expression


@pytest.mark.parametrize("bucket", [1, 4, 16])
@pytest.mark.parametrize("dtype", ["__half", "__nv_bfloat16"])
def test_tensor_core_gemvs_compile_without_spills(dtype, bucket):
    """split_mma: the buckets that take the tensor-core GEMVs (>= 4) compile clean (no spills, no stack); the
    stages around them are `split`'s."""
    kernel = compile_kernel(mla.SOURCE, mla.KERNEL, template_args=(dtype, bucket), arch=ARCH,
                            defines=mla.variant_defines("split_mma"))
    assert_clean_sass(kernel)
    assert kernel.spill_bytes == 0 and kernel.local_bytes == 0


def test_tensor_core_variants_extend_split():
    split = dict(mla.VARIANTS["split"].defines)
    mma, every = dict(mla.VARIANTS["split_mma"].defines), dict(mla.VARIANTS["split_mma_all"].defines)
    assert mma == {**split, "CF_MLA_MMA": 1} and every == {**split, "CF_MLA_MMA": 2}
    assert {"fast", "lastmerge"}.isdisjoint(mla.VARIANTS) and mla.DEFAULT_VARIANT == "split_mma"


def _split_plan(batch: int, max_len: int, num_heads: int = 16, variant: str = "split") -> dict:
    return mla.mla_config(num_heads=num_heads, qk_nope_head_dim=128, v_head_dim=128, q_lora_rank=0, batch=batch,
                          num_sms=H100_SMS, max_cache_len=max_len, variant=variant)


@pytest.mark.parametrize("variant", SPLIT_VARIANTS)
def test_split_items_fill_the_sms_at_small_batch(variant):
    v = mla.VARIANTS[variant]
    assert dict(v.defines).get("CF_MLA_SPLIT") == 1 and v.item_heads == mla.SLICE_HEADS
    slices = 16 // mla.SLICE_HEADS
    b1 = _split_plan(1, 1024, variant=variant)  # 32-position chunks: 4 slices x 32 = 128 items (chunk: 16)
    assert b1["head_groups"] == slices and b1["attention_chunks"] == 1024 // mla.SPLIT_MIN_CHUNK
    long = _split_plan(1, 4096, variant=variant)  # more than 32 chunks: the merge's second block of lanes
    assert long["attention_chunks"] == H100_SMS // slices > 32
    for batch, seq in ((1, 1024), (1, 4096), (4, 1024), (16, 1024)):
        cfg = _split_plan(batch, seq, variant=variant)
        items = batch * cfg["head_groups"] * cfg["attention_chunks"]
        assert H100_SMS * 0.75 <= items <= H100_SMS, (batch, seq, items)


def test_split_scratch_and_counters_follow_the_slices():
    plan = mla._plan(num_heads=20, nope=128, v_dim=128, q_lora=0, batch=3, num_sms=H100_SMS, max_len=4096,
                     min_chunk=mla.SPLIT_MIN_CHUNK, item_heads=mla.SLICE_HEADS)
    assert plan.head_groups == 5 and plan.barrier_words == mla.COUNTER_WORDS + 3 * 5
    items = 3 * 5 * plan.chunks
    grouped = mla.scratch_floats(batch=3, num_heads=20, nope=128, v_dim=128, q_lora=0, chunks=plan.chunks,
                                 item_heads=mla.SLICE_HEADS)
    assert plan.scratch_floats == grouped
    wide = mla.scratch_floats(batch=3, num_heads=20, nope=128, v_dim=128, q_lora=0, chunks=plan.chunks)
    # partials: items x slice heads (a partial last slice still has SLICE_HEADS rows) vs 16-head groups
    assert grouped - wide == items * mla.SLICE_HEADS * 514 - 3 * 2 * plan.chunks * mla.HEAD_GROUP * 514

