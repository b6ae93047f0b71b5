"""The lean CUDA-graph runner: replays give what un-graphed steps give; new addresses re-capture."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)


def _model():
    from cf_compile.models import build_config, build_model

    return build_model("llama", "tiny", dtype=torch.bfloat16, device="cuda"), build_config("llama", "tiny")


def _greedy(model, cfg, step, tokens=24, max_cache_len=64):
    cache = transformers.StaticCache(config=cfg, max_cache_len=max_cache_len)
    ids = torch.arange(5, device="cuda")[None] * 7 % cfg.vocab_size
    out = []
    with torch.no_grad():
        tok = model(ids, past_key_values=cache).logits[:, -1:].argmax(-1)
        for _ in range(tokens):
            out.append(tok)
            tok = step(tok, past_key_values=cache).logits[:, -1:].argmax(-1)
    return torch.cat(out, 1), cache


def test_graph_replay_matches_ungraphed_steps_and_recaptures_for_a_new_cache():
    from cf_compile.cudagraph import captures
    from cf_compile.report import last_report

    model, cfg = _model()
    torch._dynamo.reset()
    plain = torch.compile(model.forward, backend="clusterfusion", options={"cudagraphs": False})
    ref_tokens, ref_cache = _greedy(model, cfg, plain)
    torch._dynamo.reset()
    graphed = torch.compile(model.forward, backend="clusterfusion")
    before = captures()
    tokens, cache = _greedy(model, cfg, graphed)
    assert captures() == before + 1
    assert last_report().cuda_graph
    assert torch.equal(tokens, ref_tokens)
    for a, b in zip(cache.layers, ref_cache.layers, strict=True):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    # a second generation allocates a new cache: the runner must re-capture, not replay stale addresses
    tokens2, _ = _greedy(model, cfg, graphed)
    assert torch.equal(tokens2, ref_tokens)
    assert captures() == before + 2
