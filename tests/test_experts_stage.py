"""Stage 1 on the tiny model: what one step changes, resume after a kill, gradient checkpointing, outputs."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from personafuse.moe import persona_layers
from personafuse.train.config import load_train_config
from personafuse.train.expert_data import ExpertData, ExpertSample, encode_pair, one_hot_gates
from personafuse.train.experts_stage import (
    EXPERT_WEIGHTS,
    check_resumable,
    complete_checkpoints,
    fingerprint_changes,
    train_experts,
)
from personafuse.traits import POLES


@pytest.fixture(scope="module")
def shared_pf(tiny_pf_factory):
    """One tiny PersonaFuse for the module (building one loads MiniLM); :func:`fresh` re-initialises its experts."""
    return tiny_pf_factory()


def fresh(pf, seed: int = 0):
    """The same fresh experts every time (random B, so A's gradient is not zero either), as a new process would."""
    generator = torch.Generator().manual_seed(seed)
    for _, layer in persona_layers(pf.model):
        layer.reset_experts(init_b="random", generator=generator)
    pf.model.gradient_checkpointing_disable()
    pf.model.eval()
    return pf


def config_for(tiny_base, tmp_path, *overrides: str):
    return load_train_config(None, [
        f"model.base={tiny_base}", "model.experts.rank=4", "data.max_length=32", "experts.batch_size=3",
        "experts.max_steps=1", "experts.lr=0.01", "experts.warmup_ratio=0", "experts.logging_steps=1",
        "experts.lr_schedule=constant", f"output_dir={tmp_path / 'run'}", *overrides,
    ])  # fmt: skip


def tiny_data(tokenizer, poles: list[str], repeat: int = 1) -> ExpertData:
    samples = []
    for index, pole in enumerate(poles * repeat):
        ids, labels = encode_pair(tokenizer, [{"role": "user", "content": f"my cat died {index}"}],
                                  f"reply {pole} great day", 32)  # fmt: skip
        samples.append(ExpertSample(ids, labels, one_hot_gates(pole), "persona", pole))
    return ExpertData(samples, persona=len(samples), general=0, truncated=0)


def expert_blocks(pf) -> dict[str, torch.Tensor]:
    """Every expert's A and B of every layer, and every frozen parameter, as copies."""
    out = {}
    for name, layer in persona_layers(pf.model):
        for index, pole in enumerate(POLES):
            a, b = layer.expert_weights(index)
            out[f"{name}.{pole}.A"], out[f"{name}.{pole}.B"] = a.detach().clone(), b.detach().clone()
    for name, param in pf.model.named_parameters():
        if not param.requires_grad:
            out[f"frozen.{name}"] = param.detach().clone()
    return out


def test_one_step_changes_the_routed_experts_and_nothing_else(shared_pf, tiny_base, tmp_path):
    pf = fresh(shared_pf)
    trained = {"O+", "C-", "N+"}
    before = expert_blocks(pf)
    result = train_experts(config_for(tiny_base, tmp_path), pf=pf, data=tiny_data(pf.tokenizer, sorted(trained)),
                           progress=False)  # fmt: skip
    assert result.steps == 1
    after = expert_blocks(pf)
    for key, value in before.items():
        changed = not torch.equal(value, after[key])
        if key.startswith("frozen."):
            assert not changed, f"frozen {key} changed"
        else:
            pole = key.split(".")[-2]
            assert changed == (pole in trained), f"{key}: changed={changed}"


def test_outputs_metrics_plot_and_a_loadable_checkpoint(shared_pf, tiny_base, tmp_path):
    pf = fresh(shared_pf)
    config = config_for(tiny_base, tmp_path, "experts.max_steps=2", "experts.save_steps=1")
    result = train_experts(config, pf=pf, data=tiny_data(pf.tokenizer, ["A+", "E-", "O+"], repeat=2), progress=False)
    folder = tmp_path / "run" / "experts"
    assert result.checkpoint == str(folder / "checkpoint")
    assert (folder / "losses.png").stat().st_size > 0 and (folder / "result.json").is_file()
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2] and all(r["stage"] == "experts" for r in rows)
    assert all(r["samples_per_s"] > 0 and r["tokens_per_s"] > 0 for r in steps)
    assert result.samples_per_s > 0 and result.tokens_per_s > result.samples_per_s
    checkpoint = folder / "checkpoint"
    assert (checkpoint / "config.json").is_file() and (checkpoint / "router.safetensors").is_file()
    for index, pole in enumerate(POLES):  # each expert is a PEFT folder holding exactly the trained weights
        assert (checkpoint / "experts" / pole / "adapter_config.json").is_file()
        saved = load_file(str(checkpoint / "experts" / pole / "adapter_model.safetensors"))
        for name, layer in persona_layers(pf.model):
            a, b = layer.expert_weights(index)
            assert torch.equal(saved[f"base_model.model.{name}.lora_A.weight"], a)
            assert torch.equal(saved[f"base_model.model.{name}.lora_B.weight"], b)
    # finished: a rerun returns the result without training
    again = train_experts(config, pf=pf, data=tiny_data(pf.tokenizer, ["A+"]), progress=False)
    assert again.cached and again.steps == 2


def test_kill_and_rerun_resumes_to_the_same_weights(shared_pf, tiny_base, tmp_path):
    overrides = ("experts.max_steps=4", "experts.save_steps=2", "experts.batch_size=2")
    poles = ["O+", "O-", "C+", "A-", "N+", "E+"]
    straight = config_for(tiny_base, tmp_path / "a", *overrides)
    pf = fresh(shared_pf)
    train_experts(straight, pf=pf, data=tiny_data(pf.tokenizer, poles), progress=False)

    resumed = config_for(tiny_base, tmp_path / "b", *overrides)
    pf = fresh(shared_pf)
    killed = train_experts(resumed, pf=pf, data=tiny_data(pf.tokenizer, poles), progress=False, stop_after_steps=3)
    assert killed.steps == 3
    trainer_dir = tmp_path / "b" / "run" / "experts" / "trainer"
    (trainer_dir / "checkpoint-3").mkdir()  # what a kill during a save leaves: no trainer_state.json
    assert [p.name for p in complete_checkpoints(trainer_dir)] == ["checkpoint-2"]
    pf = fresh(shared_pf)  # as a new process: fresh experts, restored from checkpoint-2
    result = train_experts(resumed, pf=pf, data=tiny_data(pf.tokenizer, poles), progress=False)
    assert result.resumed_from.endswith("checkpoint-2") and result.steps == 4
    for pole in POLES:
        a = load_file(
            str(tmp_path / "a" / "run" / "experts" / "checkpoint" / "experts" / pole / "adapter_model.safetensors")
        )
        b = load_file(
            str(tmp_path / "b" / "run" / "experts" / "checkpoint" / "experts" / pole / "adapter_model.safetensors")
        )
        for key in a:
            torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "run" / "experts" / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]  # fmt: skip
    assert steps == [1, 2, 3, 4], "rows after the checkpoint are not logged twice"
    assert set(load_file(str(trainer_dir / "checkpoint-4" / EXPERT_WEIGHTS))) == {
        n for n, p in pf.model.named_parameters() if p.requires_grad
    }, "Trainer checkpoints hold only the experts"


def test_gradient_checkpointing_trains_the_same_weights(shared_pf, tiny_base, tmp_path):
    """The gates must also be set during backward, when checkpointed layers recompute their forward."""
    weights = []
    for flag in ("false", "true"):
        pf = fresh(shared_pf)
        config = config_for(tiny_base, tmp_path / flag, f"experts.gradient_checkpointing={flag}")
        train_experts(config, pf=pf, data=tiny_data(pf.tokenizer, ["O+", "A-", "N+"]), progress=False)
        weights.append({n: p.detach().clone() for n, p in pf.model.named_parameters() if p.requires_grad})
    for name, value in weights[0].items():
        torch.testing.assert_close(value, weights[1][name], atol=1e-6, rtol=1e-5)


def test_a_rerun_with_other_settings_is_refused(tiny_base, tmp_path):
    from personafuse.errors import ConfigError
    from personafuse.train.experts_stage import FINGERPRINT_NAME, fingerprint
    from personafuse.train.metrics import write_json_atomic

    config = config_for(tiny_base, tmp_path)
    write_json_atomic(tmp_path / "run" / "experts" / FINGERPRINT_NAME, fingerprint(config))
    check_resumable(config)  # same settings: fine
    check_resumable(config_for(tiny_base, tmp_path, "experts.logging_steps=5"))  # logging does not matter
    with pytest.raises(ConfigError, match=r"other settings \(experts.lr: 0.01 -> 0.02\); rerun with --fresh"):
        check_resumable(config_for(tiny_base, tmp_path, "experts.lr=0.02"))


def test_fingerprint_changes_walks_nested_keys():
    old = {"a": {"b": 1, "c": 2}, "d": 3}
    assert fingerprint_changes(old, {"a": {"b": 1, "c": 5}, "d": 3, "e": 0}) == ["a.c: 2 -> 5", "e: None -> 0"]
    assert fingerprint_changes(old, old) == []
