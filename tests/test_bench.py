"""The benchmark runs end to end on a tiny model and its bound is the hand-computed one."""

from __future__ import annotations

import json

import pytest
import torch

from personafuse.bench.config import BenchConfig
from personafuse.bench.naive import naive_expert_loop
from personafuse.bench.theory import adapter_bounds
from personafuse.errors import ConfigError


def test_adapter_bound_matches_hand_count(tiny_pf):
    # tiny Llama: hidden 32, intermediate 64, 4 heads (head_dim 8), 2 kv heads, 2 layers, untied head.
    # per layer: q 32x32, k 32x16, v 32x16, o 32x32, gate 32x64, up 32x64, down 64x32
    weights = 32 * 32 + 32 * 16 + 32 * 16 + 32 * 32 + 3 * 32 * 64
    lora_per_rank = (32 + 32) + (32 + 16) * 2 + (32 + 32) + 3 * (32 + 64)
    head = 32 * tiny_pf.model.config.vocab_size
    base = 2 * weights + head
    extra = 10 * 4 * 2 * lora_per_rank
    bounds = adapter_bounds(tiny_pf.model, 4, {"dense": 10, "merged": 0})
    assert bounds["dense"]["bound"] == pytest.approx(base / (base + extra))
    assert bounds["merged"]["bound"] == 1.0


def test_naive_loop_computes_the_same_outputs(tiny_pf):
    inputs = tiny_pf.chat_inputs([[{"role": "user", "content": "hello there"}]] * 2)
    gates = torch.softmax(torch.randn(2, 10), dim=-1)
    with tiny_pf.using_gates(gates), torch.no_grad():
        stacked = tiny_pf.model(**inputs).logits
        with naive_expert_loop(tiny_pf.model):
            naive = tiny_pf.model(**inputs).logits
        after = tiny_pf.model(**inputs).logits
    torch.testing.assert_close(naive, stacked, atol=1e-5, rtol=0)
    assert torch.equal(after, stacked), "the stacked forward is restored after the block"


def test_bench_config_rejects_bad_values():
    with pytest.raises(ConfigError, match=r"unknown bench mode\(s\) \['turbo'\]"):
        BenchConfig(modes=["turbo"])
    with pytest.raises(ConfigError, match="--new-tokens must be at least 2"):
        BenchConfig(new_tokens=1)


def test_bench_cli_writes_json_markdown_and_png(tiny_base, tmp_path):
    from typer.testing import CliRunner

    from personafuse.cli import app

    out = tmp_path / "results"
    result = CliRunner().invoke(app, ["bench", "--model", tiny_base, "--rank", "2", "--batch-sizes", "1,2",
                                      "--new-tokens", "3", "--prompt-tokens", "4", "--repeats", "1",
                                      "--modes", "dense,top3,merged,naive_loop", "--train-steps", "1",
                                      "--out", str(out), "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads((out / "bench.json").read_text())
    assert set(data["decode"]) == {"1", "2"}
    assert set(data["decode"]["2"]) == {"base", "dense", "top3", "merged", "naive_loop"}
    assert data["decode"]["1"]["base"]["ratio_vs_base"] == 1.0
    assert all(v["tokens_per_s"] > 0 for v in data["decode"]["2"].values())
    assert 0 < data["ttft"]["routing_fold_share"] < 1
    assert (out / "bench.md").read_text().count("| decode ratio") == 8
    assert data["training"]["steps"] == 1 and data["training"]["ratio"] > 0
    assert "stage-1 step time / single LoRA" in (out / "bench.md").read_text()
    assert (out / "bench.png").stat().st_size > 1000
