"""The claimed-tile attention kernel (csrc/attention_flow.cu, variant "flow") on the GPU: the fp64 reference over
random batch-1 cases (every mask kind, bias, norm kind, fused q/k/v, cos dtype, cache lengths 17..4100), the
named batch-1 models, the cache slot as the reference writes it and no other slot touched, bitwise repeats,
CUDA-graph replay, and CF_ATTN_KERNEL=flow leaving what it cannot take to the cluster kernel."""

from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_kernels_attention import NAMED, Case, check_case, make_inputs, random_cases, run_kernel  # noqa: E402

from cf_compile_kernels import attention_flow  # noqa: E402

N_CASES = 64
REPEATS = 200


def flow_supported(case: Case) -> bool:
    return case.batch == 1 and attention_flow.flow_unsupported_reason(
        hidden=case.hidden, num_heads=case.num_heads, num_kv_heads=case.kv_heads, head_dim=case.head_dim,
        batch=case.batch, has_qk_norm=case.qk_norm,
    ) is None


@functools.cache
def flow_cases(n: int) -> tuple[Case, ...]:
    """n random supported cases as batch 1 without q/k norms (the coverage of the kernel); built on first use
    (the cluster kernel's support check asks the device)."""
    cases, _ = random_cases(3 * n, seed=77)
    out = []
    for case in cases:
        case = dataclasses.replace(case, batch=1, qk_norm=False)
        if flow_supported(case) and case.unsupported() is None:
            out.append(case)
    return tuple(out[:n])


@pytest.mark.parametrize("i", range(N_CASES))
def test_random_batch_one_cases_match_the_fp64_reference(i):
    check_case(flow_cases(N_CASES)[i], variant="flow")


@pytest.mark.parametrize("name", [n for n, c in NAMED.items() if flow_supported(dataclasses.replace(c, qk_norm=False))
                                  and NAMED[n].batch == 1])
def test_named_batch_one_models_match_the_reference(name):
    check_case(NAMED[name], variant="flow")


QWEN_B1 = Case(torch.bfloat16, 1, 896, 14, 2, 64, 1024, 700, "causal", True, False, "weight", True, False, False,
               torch.float32, 5)


def test_repeats_are_bitwise_identical():
    inp = make_inputs(QWEN_B1)
    first = torch.full_like(inp["x"], float("nan"))
    run_kernel(QWEN_B1, inp, first, variant="flow")
    outs = torch.full((REPEATS, *first.shape), float("nan"), device="cuda", dtype=first.dtype)
    for r in range(REPEATS):
        run_kernel(QWEN_B1, inp, outs[r], variant="flow")
    same = (outs.view(REPEATS, -1).view(torch.int16) == first.view(1, -1).view(torch.int16)).all(1)
    assert bool(same.all()), f"{int((~same).sum())} of {REPEATS} launches differ from the first"


def test_cuda_graph_replay_matches_direct_calls():
    inp = make_inputs(QWEN_B1)
    out = torch.full_like(inp["x"], float("nan"))
    run_kernel(QWEN_B1, inp, out, variant="flow")
    torch.cuda.synchronize()
    graph, stream = torch.cuda.CUDAGraph(), torch.cuda.Stream()
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        run_kernel(QWEN_B1, inp, out, variant="flow")
    for step in range(4):
        inp["x"].normal_()
        inp["cache_position"].fill_(700 + step)  # the graph reads the position from device memory
        for _ in range(2):
            graph.replay()
        torch.cuda.synchronize()
        replayed = out.clone()
        run_kernel(QWEN_B1, inp, out, variant="flow")
        assert torch.equal(replayed, out), f"step {step}"


def test_the_environment_switch_leaves_other_shapes_to_the_cluster_kernel(monkeypatch):
    monkeypatch.setenv("CF_ATTN_KERNEL", "flow")
    check_case(dataclasses.replace(QWEN_B1, batch=2))  # batch 2: the cluster kernel, no error
    check_case(QWEN_B1)  # batch 1: the claimed tiles
    with pytest.raises(ValueError, match="flow"):
        run_kernel(dataclasses.replace(QWEN_B1, batch=2), make_inputs(dataclasses.replace(QWEN_B1, batch=2)),
                   torch.empty(2, 1, 896, device="cuda", dtype=torch.bfloat16), variant="flow")


def test_timeline_build_gives_the_same_bits_and_stamps_every_tile():
    """-DCF_FLOW_TIMELINE (benchmarks/attention.py --timeline on flow rows) only adds stamps: same output bits,
    every tile claimed before it is done, every CTA's end after its start."""
    inp = make_inputs(QWEN_B1)
    plain = torch.full_like(inp["x"], float("nan"))
    run_kernel(QWEN_B1, inp, plain, variant="flow")
    plan = attention_flow.plan(torch.bfloat16, QWEN_B1.hidden, QWEN_B1.num_heads, QWEN_B1.kv_heads,
                               QWEN_B1.head_dim, torch.device("cuda"), timeline=True)
    stamps = torch.zeros(plan.stamp_elems(), dtype=torch.int64, device="cuda")
    timed = torch.full_like(plain, float("nan"))
    run_kernel(QWEN_B1, make_inputs(QWEN_B1), timed, variant="flow", timeline=stamps)
    torch.cuda.synchronize()
    assert torch.equal(timed, plain)
    records = (plan.tiles + plan.grid) * attention_flow.STAMP_WORDS
    st = stamps[:records].view(-1, attention_flow.STAMP_WORDS).cpu()
    tiles, ctas = st[: plan.tiles], st[plan.tiles:]
    assert bool((tiles[:, 0] > 0).all()) and bool((tiles[:, 1] >= tiles[:, 0]).all())
    assert bool((ctas[:, 1] >= ctas[:, 0]).all())
    assert sum(plan.kinds.values()) == plan.tiles
    # step marks: every tile marks its kind's steps in order, between its claim and its end; one merge per group
    marks = stamps[records:].view(plan.tiles, attention_flow.PHASE_MARKS).cpu()
    start = 0
    for kind, count in plan.kinds.items():
        rows, own = marks[start:start + count], tiles[start:start + count]
        start += count
        always = len(attention_flow.PHASE_STEPS[kind]) - (1 if kind == "attention" else 0)
        assert bool((rows[:, :always] > 0).all()), kind
        ordered = torch.cat([own[:, :1], rows[:, :always], own[:, 1:2]], 1)
        assert bool((ordered[:, 1:] >= ordered[:, :-1]).all()), kind
        if kind == "attention":
            assert int((rows[:, always] > 0).sum()) == QWEN_B1.kv_heads


# Llama-3-8B attention at batch 1 (the named case carries Qwen3-style q/k norms: not in the claimed-tile kernel)
LLAMA3_B1 = dataclasses.replace(NAMED["llama3_8b_b4"], batch=1, qk_norm=False)
# Llama-3.2-1B attention at batch 1: G = 4 at head_dim 64, 4096 cached
LLAMA32_B1 = Case(torch.bfloat16, 1, 2048, 32, 8, 64, 4200, 4095, "none", False, False, "weight", True, False, False,
                  torch.float32, 11)


@pytest.mark.parametrize("cap", [32, 64, 128])
@pytest.mark.parametrize("case", [QWEN_B1, LLAMA3_B1, NAMED["llama2_7b"]], ids=["qwen", "llama3", "llama2"])
def test_two_level_merge_matches_the_reference(cap, case, monkeypatch):
    """Chunk caps above SINGLE_MERGE_MAX merge in two levels (blocks of MERGE_FAN_IN chunks, a last block that may
    be partial): inside the band, the cache slot as the reference writes it, counters back to zero."""
    monkeypatch.setenv("CF_ATTN_FLOW_MAX_CHUNKS", str(cap))
    check_case(case, variant="flow")
    p = attention_flow.plan(case.dtype, case.hidden, case.num_heads, case.kv_heads, case.head_dim,
                            torch.device("cuda"))
    if case.kv_heads <= 8:  # llama2 (32 KV heads) has 8 chunks per group at any cap: one level
        assert attention_flow.merge_blocks(p.chunks) > 0, f"{p.chunks} chunks: not the two-level path"
    torch.cuda.synchronize()
    assert int(p.ctrl.abs().sum()) == 0, "counters left non-zero"


@pytest.mark.parametrize("wpr", [2, 4, 8])
def test_smaller_qkv_tiles_match_the_reference(wpr, monkeypatch):
    """CF_ATTN_FLOW_QKV_WPR: q/k/v tiles of k-split rows (8 / wpr row groups), still inside one head."""
    monkeypatch.setenv("CF_ATTN_FLOW_QKV_WPR", str(wpr))
    check_case(NAMED["llama2_7b"], variant="flow")
    check_case(QWEN_B1, variant="flow")


def assert_repeatable(case: Case, repeats: int = 20) -> None:
    """The flow build the environment selects gives the same bits on every run of the same inputs."""
    first = torch.full_like(make_inputs(case)["x"], float("nan"))
    run_kernel(case, make_inputs(case), first, variant="flow")
    for _ in range(repeats):
        again = torch.full_like(first, float("nan"))
        run_kernel(case, make_inputs(case), again, variant="flow")
        torch.cuda.synchronize()
        assert torch.equal(again, first)


@pytest.mark.parametrize("cap", [16, 64])
@pytest.mark.parametrize("case", [QWEN_B1, LLAMA3_B1, NAMED["llama2_7b"], LLAMA32_B1],
                         ids=["qwen", "llama3", "llama2", "llama3.2"])
def test_token_lanes_match_the_reference(cap, case, monkeypatch):
    """CF_ATTN_FLOW_TOKEN_LANES: a lane group per token (several tokens per warp step, per-group running softmax
    merged once per tile): inside the band, the cache slot as the reference writes it, and bitwise repeatable."""
    monkeypatch.setenv("CF_ATTN_FLOW_TOKEN_LANES", "1")
    monkeypatch.setenv("CF_ATTN_FLOW_MAX_CHUNKS", str(cap))
    check_case(case, variant="flow")
    assert_repeatable(case)


@pytest.mark.parametrize("i", range(N_CASES))
def test_token_lanes_random_configs(i, monkeypatch):
    """The default build's random batch-1 sweep (every mask kind, D 64 / 128, groups 1-8), on the token-lane build."""
    monkeypatch.setenv("CF_ATTN_FLOW_TOKEN_LANES", "1")
    check_case(flow_cases(N_CASES)[i], variant="flow")


@pytest.mark.parametrize("lanes", [0, 1])
@pytest.mark.parametrize("case", [QWEN_B1, LLAMA3_B1, NAMED["llama2_7b"], LLAMA32_B1],
                         ids=["qwen", "llama3", "llama2", "llama3.2"])
def test_split_o_proj_matches_the_reference(lanes, case, monkeypatch):
    """CF_ATTN_FLOW_O_SPLIT: o_proj tiles per head segment, the row block's last segment summing the partials:
    inside the band (alone and with token lanes), bitwise repeatable, counters back to zero."""
    monkeypatch.setenv("CF_ATTN_FLOW_O_SPLIT", "1")
    monkeypatch.setenv("CF_ATTN_FLOW_TOKEN_LANES", str(lanes))
    check_case(case, variant="flow")
    assert_repeatable(case)
    p = attention_flow.plan(case.dtype, case.hidden, case.num_heads, case.kv_heads, case.head_dim,
                            torch.device("cuda"))
    assert int(p.ctrl.abs().sum()) == 0, "counters left non-zero"


@pytest.mark.parametrize("knobs", ["lean", "dense", "lean+dense", "lean+dense+lanes+split", "stage",
                                   "stage+lanes+split", "stage+cap64", "prefetch", "prefetch+stage+lanes+split",
                                   "pipeline+lanes+split", "pipeline+lanes+split+cap64"])
@pytest.mark.parametrize("case", [QWEN_B1, LLAMA3_B1, NAMED["llama2_7b"], LLAMA32_B1],
                         ids=["qwen", "llama3", "llama2", "llama3.2"])
def test_hand_offs_mask_skip_and_merge_stage_change_no_bit(knobs, case, monkeypatch):
    """CF_ATTN_FLOW_LEAN_SYNC (release/acquire hand-offs), CF_ATTN_FLOW_DENSE_MASK (no mask loads where the live
    range is dense), CF_ATTN_FLOW_MERGE_STAGE (partials staged in shared memory before the merge, one- and
    two-level) and CF_ATTN_FLOW_KV_PREFETCH (the chunk asked of L2 early) change when data moves, not what is
    computed: the same bits as the build without them (its token-lane
    / split form alike), the same cache, counters back to zero, over several launches."""
    env = {"lean": "CF_ATTN_FLOW_LEAN_SYNC", "dense": "CF_ATTN_FLOW_DENSE_MASK", "lanes": "CF_ATTN_FLOW_TOKEN_LANES",
           "split": "CF_ATTN_FLOW_O_SPLIT", "stage": "CF_ATTN_FLOW_MERGE_STAGE", "prefetch": "CF_ATTN_FLOW_KV_PREFETCH",
           "pipeline": "CF_ATTN_FLOW_WALK_PIPELINE"}
    chosen = knobs.split("+")
    for name in ("lanes", "split"):
        monkeypatch.setenv(env[name], "1" if name in chosen else "0")
    monkeypatch.setenv("CF_ATTN_FLOW_MAX_CHUNKS", "64" if "cap64" in chosen else "")
    outs, caches = [], []
    for on in (False, True):
        for name in ("lean", "dense", "stage", "prefetch", "pipeline"):
            monkeypatch.setenv(env[name], "1" if on and name in chosen else "0")
        inp = make_inputs(case)
        out = torch.full_like(inp["x"], float("nan"))
        for _ in range(3):
            run_kernel(case, inp, out, variant="flow")
        torch.cuda.synchronize()
        outs.append(out)
        caches.append((inp["k_cache"].clone(), inp["v_cache"].clone()))
        p = attention_flow.plan(case.dtype, case.hidden, case.num_heads, case.kv_heads, case.head_dim,
                                torch.device("cuda"))
        assert int(p.ctrl.abs().sum()) == 0, "counters left non-zero"
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(caches[0][0], caches[1][0]) and torch.equal(caches[0][1], caches[1][1])
    check_case(case, variant="flow")  # and inside the band against the fp64 reference (the knobs still set)


@pytest.mark.parametrize("i", range(0, N_CASES, 4))
def test_lean_dense_random_configs(i, monkeypatch):
    """Every mask kind of the random sweep (holes, sliding windows, none) on the lean + dense build."""
    monkeypatch.setenv("CF_ATTN_FLOW_LEAN_SYNC", "1")
    monkeypatch.setenv("CF_ATTN_FLOW_DENSE_MASK", "1")
    check_case(flow_cases(N_CASES)[i], variant="flow")
