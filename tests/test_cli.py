"""``python -m cf_compile``: the report and accuracy commands run on tiny models; bad arguments exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from cf_compile.__main__ import main

pytest.importorskip("transformers")


def test_module_entry_point_prints_and_writes_the_match_report(tmp_path):
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "cf_compile", "report", "--model", "qwen3", "--dtype", "fp32",
                           "--device", "cpu", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    assert "2/2 attention, 2/2 FFN" in proc.stdout
    records = json.loads(out.read_text())
    assert sorted((r["layer"], r["block"]) for r in records) == [(0, "attention"), (0, "ffn"), (1, "attention"),
                                                                  (1, "ffn")]
    assert all(r["status"] == "fused" and r["dtype"] == "float32" for r in records)
    assert records[0]["shapes"]["head_dim"] == 64


def test_accuracy_command_prints_the_verdict_and_writes_json(tmp_path, capsys):
    out = tmp_path / "accuracy.json"
    rc = main(["accuracy", "--model", "llama", "--dtype", "fp32", "--device", "cpu", "--steps", "3",
               "--prompt-len", "4", "--json", str(out), "--check"])
    assert rc == 0
    assert "verdict: inside band" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["ok"] is True and data["steps"] == 3 and data["prompt_len"] == 4
    assert len(data["ops"]) == data["fused_blocks"] == 4
    assert data["pairs"][0]["name"] == "compiled" and data["pairs"][0]["tokens"]["fraction"] == 1.0


@pytest.mark.parametrize("argv, message", [
    (["accuracy", "--model", "gpt-nope"], "invalid choice: 'gpt-nope'"),
    (["accuracy", "--dtype", "int8"], "invalid choice: 'int8'"),
    (["accuracy", "--steps", "0"], "--steps must be >= 1"),
    (["accuracy", "--prompt-len", "8", "--steps", "16", "--max-cache-len", "20"], "--max-cache-len 20 < prompt 8"),
    (["report", "--size", "huge"], "invalid choice: 'huge'"),
    (["compile"], "invalid choice: 'compile'"),
    ([], "required"),
])
def test_bad_arguments_exit_2_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["report", "--device", "cuda"])
    assert exc.value.code == 2
    assert "no CUDA device" in capsys.readouterr().err


# Parameter counts published with each checkpoint (model cards / config.json), in billions.
PUBLISHED_PARAMS = {"llama2-7b": 6.74, "llama3-8b": 8.03, "llama3.2-1b": 1.24, "qwen2.5-0.5b": 0.49,
                    "qwen2-7b": 7.62, "qwen3-8b": 8.19, "qwen3-0.6b": 0.60, "mistral-7b": 7.25, "phi3-mini": 3.82,
                    "gemma-2b": 2.51, "deepseek-v2-lite": 15.7}


def test_models_command_lists_full_shapes_matching_the_real_checkpoints(tmp_path, capsys):
    out = tmp_path / "models.json"
    assert main(["models", "--json", str(out)]) == 0
    rows = {r["name"]: r for r in json.loads(out.read_text())}
    assert set(rows) == set(PUBLISHED_PARAMS)
    for name, billions in PUBLISHED_PARAMS.items():
        assert rows[name]["params"] / 1e9 == pytest.approx(billions, rel=0.01), name
    assert (rows["llama3-8b"]["heads"], rows["llama3-8b"]["kv_heads"], rows["llama3-8b"]["head_dim"]) == (32, 8, 128)
    assert rows["gemma-2b"]["kv_heads"] == 1 and rows["gemma-2b"]["head_dim"] == 256
    assert "llama3.2-1b" in capsys.readouterr().out


def test_models_command_tiny_keeps_grouping_at_hidden_128(tmp_path):
    out = tmp_path / "models.json"
    assert main(["models", "--size", "tiny", "--json", str(out)]) == 0
    for r in json.loads(out.read_text()):
        if r["config"] == "DeepseekV2Config":   # MLA: head_dim is the rope dim; latent dims reduced apart
            assert (r["hidden"], r["layers"]) == (128, 2), r["name"]
            continue
        assert (r["hidden"], r["layers"], r["head_dim"]) == (128, 2, 64), r["name"]
        full_is_mha = r["name"] in ("llama2-7b", "phi3-mini")
        assert (r["kv_heads"] == r["heads"]) == full_is_mha, r["name"]
