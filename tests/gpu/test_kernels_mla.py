"""The fused MLA decode kernel against an fp64 reference (cf_compile/ops/mla.py, docs/kernel-contract.md).

Specification: for random DeepSeek-style shapes (kv_lora_rank 512, rope 64; V2-style q_proj and V3-style q
LoRA; complex / interleaved / NeoX RoPE; fp16/bf16; batch 1-16; any cache length and position; masks),
`out` lies inside the dtype's band of the fp64 reference, the cache slots at `cache_position` hold the
reference's latent and roped k_pe rounded once (within one ulp), every other slot is unchanged, repeated
runs are bitwise identical, and the launch captures and replays in a CUDA graph -- for every launcher variant
(mla.VARIANTS; the split variants' many-chunk merges are checked for determinism over more launches). CF_MLA_TEST_VARIANTS (comma list) and CF_MLA_TEST_RANDOM (random cases) trim the sweep for a
timed device run.
"""

from __future__ import annotations

import math
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import torch

from cf_compile.ops.mla import mla_decode_call, mla_decode_reference
from cf_compile_kernels import mla

pytestmark = pytest.mark.gpu

BANDS = {torch.float16: 2e-3, torch.bfloat16: 1e-2}
ULP = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}
N_RANDOM = int(os.environ.get("CF_MLA_TEST_RANDOM", "64"))
VARIANTS = tuple(v for v in os.environ.get("CF_MLA_TEST_VARIANTS", ",".join(mla.VARIANTS)).split(",") if v)
LORA, ROPE = mla.KV_LORA_RANK, mla.ROPE_DIM
HEADS = (1, 4, 16, 20, 32)
HIDDENS = (256, 512, 1024, 2048)
BATCHES = (1, 2, 3, 4, 7, 8, 16)
CACHE_LENS = (1, 17, 64, 300, 1024, 2500)
FORMS = ("complex", "interleave", "neox")


@dataclass(frozen=True)
class Case:
    dtype: torch.dtype
    batch: int
    hidden: int
    heads: int
    q_lora: int
    nope: int
    v_dim: int
    max_len: int
    pos: int
    mask: str
    form: str
    norm_kind: str
    add_residual: bool
    seed: int


def _random_case(i: int) -> Case:
    r = random.Random(1000 + i)
    max_len = r.choice(CACHE_LENS)
    return Case(
        dtype=r.choice((torch.float16, torch.bfloat16)), batch=r.choice(BATCHES), hidden=r.choice(HIDDENS),
        heads=r.choice(HEADS), q_lora=r.choice((0, 0, 96, 256)), nope=r.choice((128, 128, 64, 32)),
        v_dim=r.choice((128, 128, 64)), max_len=max_len, pos=r.randrange(max_len),
        mask=r.choice(("none", "causal", "left_pad")), form=FORMS[i % 3] if i < 6 else r.choice(FORMS),
        norm_kind=r.choice(("weight", "weight", "unit_offset")), add_residual=r.random() < 0.8, seed=i)


V2_LITE = Case(torch.bfloat16, 1, 2048, 16, 0, 128, 128, 1024, 1023, "causal", "complex", "weight", True, 7)
V3_LIKE = Case(torch.float16, 4, 1024, 16, 256, 128, 128, 4096, 4000, "causal", "interleave", "weight", True, 8)
# Split variants: 6 heads = a full and a half head slice; batch 1 at 4096 gives 66 chunks on 132 SMs, so the merge
# folds three blocks of 32 lanes.
MANY_CHUNKS = Case(torch.bfloat16, 1, 1024, 6, 0, 64, 64, 4096, 3999, "left_pad", "neox", "weight", True, 9)
CASES = [V2_LITE, V3_LIKE, MANY_CHUNKS] + [_random_case(i) for i in range(N_RANDOM)]


def _make(case: Case, device: str = "cuda") -> dict:
    """Inputs of one block in the model dtype; caches hold random history."""
    g = torch.Generator(device="cpu").manual_seed(case.seed)
    dt, B, H, NH, QH = case.dtype, case.batch, case.hidden, case.heads, case.nope + ROPE

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dt).to(device)

    q_weights = ([rnd(case.q_lora, H, scale=H**-0.5), rnd(NH * QH, case.q_lora, scale=case.q_lora**-0.5)]
                 if case.q_lora else [rnd(NH * QH, H, scale=H**-0.5)])
    pos = torch.tensor([case.pos], device=device)
    angles = (case.pos + 1) * 0.9 ** torch.arange(ROPE // 2, dtype=torch.float64)
    angles = angles.expand(B, ROPE // 2) + torch.arange(B, dtype=torch.float64)[:, None] * 0.1
    cos, sin, freqs = None, None, None
    if case.form == "complex":
        freqs = torch.polar(torch.ones_like(angles), angles).to(torch.complex64).view(B, 1, 1, ROPE // 2).to(device)
    elif case.form == "interleave":
        cos = angles.cos().float().view(B, 1, 1, ROPE // 2).to(device)
        sin = angles.sin().float().view(B, 1, 1, ROPE // 2).to(device)
    else:
        full = torch.cat([angles, angles], dim=-1)
        cos, sin = full.cos().float().view(B, 1, 1, ROPE).to(device), full.sin().float().view(B, 1, 1, ROPE).to(device)
    j = torch.arange(case.max_len)
    mask = None
    if case.mask != "none":
        live = (j <= case.pos).expand(B, case.max_len).clone()
        if case.mask == "left_pad":
            for b in range(B):
                live[b, : min(b, case.pos)] = False
        mask = live.view(B, 1, 1, case.max_len).to(device)
    return dict(
        x=rnd(B, 1, H), norm_weight=rnd(H, scale=0.2) + 1, norm_eps=1e-6, norm_kind=case.norm_kind,
        q_weights=q_weights, q_biases=[None] * len(q_weights),
        q_norm_weight=rnd(case.q_lora, scale=0.2) + 1 if case.q_lora else None, q_norm_eps=1e-6,
        kv_a_weight=rnd(LORA + ROPE, H, scale=H**-0.5), kv_a_bias=None, kv_norm_weight=rnd(LORA, scale=0.2) + 1,
        kv_norm_eps=1e-6, kv_b_weight=rnd(NH * (case.nope + case.v_dim), LORA, scale=LORA**-0.5), kv_b_bias=None,
        rope_form=case.form, cos=cos, sin=sin, freqs_cis=freqs, cache_position=pos,
        k_cache=rnd(B, 1, case.max_len, LORA), v_cache=rnd(B, 1, case.max_len, ROPE), attn_mask=mask,
        scale=QH**-0.5 * (1.3 if case.seed % 2 else 1.0), o_weight=rnd(H, NH * case.v_dim, scale=(NH * case.v_dim) ** -0.5),
        o_bias=None, add_residual=case.add_residual, num_heads=NH, qk_nope_head_dim=case.nope, v_head_dim=case.v_dim,
    )


def _reference(inputs: dict, case: Case) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """fp64 reference (out, k_cache, v_cache); without a mask it attends [0, pos] as the kernel does."""
    ref = {k: (v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in inputs.items()}
    ref["q_weights"] = [w.double() for w in inputs["q_weights"]]
    ref["k_cache"], ref["v_cache"] = inputs["k_cache"].double().clone(), inputs["v_cache"].double().clone()
    if inputs["freqs_cis"] is not None:
        ref["freqs_cis"] = inputs["freqs_cis"].to(torch.complex128)
    if inputs["attn_mask"] is None:
        j = torch.arange(case.max_len, device=inputs["x"].device)
        ref["attn_mask"] = (j <= case.pos).view(1, 1, 1, -1)
    out = mla_decode_reference(**ref)
    return out, ref["k_cache"], ref["v_cache"]


def _run(inputs: dict, k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
    return mla_decode_call(impl="kernel", **{**inputs, "k_cache": k_cache, "v_cache": v_cache})


@pytest.fixture(scope="module", autouse=True)
def _compiled():
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("needs a CUDA device of compute capability 9.0+")
    keys = sorted({(c.dtype, mla.batch_bucket(c.batch), v) for c in CASES for v in VARIANTS}, key=str)
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda k: mla.compiled_kernel(k[0], k[1], variant=k[2]), keys))


@pytest.fixture(params=VARIANTS)
def variant(request, monkeypatch):
    """Every test runs once per launcher variant: the op's kernel call takes mla.DEFAULT_VARIANT."""
    monkeypatch.setattr(mla, "DEFAULT_VARIANT", request.param)
    return request.param


def _unsupported(case: Case) -> str | None:
    return mla.mla_unsupported_reason(
        hidden=case.hidden, num_heads=case.heads, q_lora_rank=case.q_lora, kv_lora_rank=LORA,
        qk_nope_head_dim=case.nope, qk_rope_head_dim=ROPE, v_head_dim=case.v_dim, batch=case.batch,
        dtype=case.dtype, max_cache_len=case.max_len, rope_form=case.form, norm_kind=case.norm_kind)


def _case_id(c: Case) -> str:
    dt = "fp16" if c.dtype == torch.float16 else "bf16"
    return f"{dt}-B{c.batch}-H{c.hidden}-NH{c.heads}-ql{c.q_lora}-n{c.nope}v{c.v_dim}-L{c.max_len}p{c.pos}-{c.mask}-{c.form}"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_matches_fp64_reference_and_writes_only_the_slot(case: Case, variant: str):
    assert _unsupported(case) is None
    inputs = _make(case)
    k0, v0 = inputs["k_cache"].clone(), inputs["v_cache"].clone()
    out = _run(inputs, inputs["k_cache"], inputs["v_cache"])
    torch.cuda.synchronize()
    ref, k_ref, v_ref = _reference({**inputs, "k_cache": k0, "v_cache": v0}, case)
    err = ((out.double() - ref).norm() / ref.norm()).item()
    assert math.isfinite(err) and err < BANDS[case.dtype], f"relative error {err:.2e}"
    p = case.pos
    for got, want, before in ((inputs["k_cache"], k_ref, k0), (inputs["v_cache"], v_ref, v0)):
        slot, slot_ref = got[:, :, p].double(), want[:, :, p]
        assert ((slot - slot_ref).abs() <= ULP[case.dtype] * (slot_ref.abs() + 1e-3)).all()
        other = torch.ones(case.max_len, dtype=torch.bool, device=got.device)
        other[p] = False
        assert torch.equal(got[:, :, other], before[:, :, other])


@pytest.mark.parametrize("case", CASES[:8], ids=_case_id)
def test_bitwise_deterministic(case: Case, variant: str):
    inputs = _make(case)
    k0, v0 = inputs["k_cache"].clone(), inputs["v_cache"].clone()
    outs = [_run(inputs, k0.clone(), v0.clone()) for _ in range(4)]
    assert all(torch.equal(outs[0], o) for o in outs[1:])


SPLIT_REPEATS = 16  # launches compared bitwise (split items, many-chunk merge, tensor-core GEMVs)


@pytest.mark.parametrize("case", [V2_LITE, MANY_CHUNKS], ids=_case_id)
def test_split_merge_is_bitwise_deterministic_whoever_merges(case: Case, variant: str):
    if mla.VARIANTS[variant].item_heads != mla.SLICE_HEADS:
        pytest.skip("only the split variants")
    inputs = _make(case)
    k0, v0 = inputs["k_cache"].clone(), inputs["v_cache"].clone()
    first = _run(inputs, k0.clone(), v0.clone())
    for _ in range(SPLIT_REPEATS):
        assert torch.equal(_run(inputs, k0.clone(), v0.clone()), first)


@pytest.mark.parametrize("case", CASES[:4], ids=_case_id)
def test_cuda_graph_capture_and_replay(case: Case, variant: str):
    inputs = _make(case)
    k_cache, v_cache = inputs["k_cache"], inputs["v_cache"]
    eager = _run(inputs, k_cache.clone(), v_cache.clone())
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        _run(inputs, k_cache.clone(), v_cache.clone())  # first call of the shape outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = _run(inputs, k_cache, v_cache)
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(static_out, eager)
    inputs["x"].mul_(0.5)  # new input, same graph
    graph.replay()
    fresh = _run(inputs, k_cache.clone(), v_cache.clone())
    torch.cuda.synchronize()
    assert torch.equal(static_out, fresh)
