"""The lean CUDA-graph runner replays one capture per layout of static-input addresses (CPU: capture and
replay are stood in for, the bookkeeping is the real one)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from cf_compile import cudagraph


class FakeGraph:
    replays = 0

    def replay(self) -> None:
        FakeGraph.replays += 1


def _ptrs_equal_in_python(tensors: list, ptrs: list, positions: list) -> bool:
    """The contract of torch._C._tensors_data_ptrs_at_indices_equal (CUDA builds of torch only)."""
    return all(tensors[i].data_ptr() == ptrs[i] for i in positions)


# the steady-state address check: torch's C++ one where this torch has it (else a stand-in with its contract,
# so the positions the runner hands it are checked on every build), and the Python fallback
PTR_CHECKS = {"C++": getattr(torch._C, "_tensors_data_ptrs_at_indices_equal", _ptrs_equal_in_python),
              "python": None}


@pytest.fixture(params=sorted(PTR_CHECKS))
def runner(monkeypatch, request):
    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", lambda g, pool=None: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: None)
    calls = []

    def step(w, cache, tok):
        calls.append((w.data_ptr(), cache.data_ptr()))
        return w.sum() + tok

    FakeGraph.replays = 0
    run = cudagraph.LeanCUDAGraph(step, static={0, 1}, num_inputs=3)
    run._ptrs_equal = PTR_CHECKS[request.param]
    return run, calls


def test_same_static_tensors_replay_without_a_new_capture(runner):
    run, calls = runner
    w, cache, tok = torch.nn.Parameter(torch.ones(4)), torch.zeros(8), torch.zeros(1)
    before = cudagraph.captures()
    run(w, cache, tok)                      # warm-up: runs the step itself
    run(w, cache, tok)                      # captures (the step runs once inside the capture)
    for _ in range(5):
        run(w, cache, tok + 1)              # steady state: the fast path, a replay each
    assert cudagraph.captures() == before + 1 and len(calls) == 2 and FakeGraph.replays == 6


def test_a_moved_parameter_or_a_new_cache_recaptures(runner):
    run, calls = runner
    w, cache, tok = torch.nn.Parameter(torch.ones(4)), torch.zeros(8), torch.zeros(1)
    for _ in range(3):
        run(w, cache, tok)
    before = cudagraph.captures()
    w.data = torch.full((4,), 2.0)          # same Parameter object, new address
    run(w, cache, tok)
    assert cudagraph.captures() == before + 1 and calls[-1][0] == w.data_ptr()
    new_cache = torch.zeros(8)              # a new object (generate() allocates a cache per call)
    run(w, new_cache, tok)
    assert cudagraph.captures() == before + 2 and calls[-1][1] == new_cache.data_ptr()
    run(w, cache, tok)                      # back to a layout already captured: replayed, not recaptured
    assert cudagraph.captures() == before + 2
