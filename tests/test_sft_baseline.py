"""The plain-SFT baseline stage: TRL SFTTrainer on the ideal replies -> a plain PEFT LoRA the evaluation loads."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from test_train_cli import REPO, run_cli

CONV = [{"role": "user", "content": "my cat died and I am sad"}]


def test_rows_are_the_train_ideal_replies_plus_the_general_mix(tmp_path):
    from personafuse.data.validate import validate_corpus
    from personafuse.train.config import load_train_config
    from personafuse.train.sft_baseline_stage import baseline_rows

    general = tmp_path / "general.jsonl"
    general.write_text("".join(json.dumps({"question": f"what is {i}+{i}?", "answer": f"{2 * i}"}) + "\n"
                               for i in range(30)))  # fmt: skip
    config = load_train_config(REPO / "configs/tiny.yaml", [f"data.corpus={REPO / 'data/seed/grief_loss.jsonl'}",
                                                             f"data.general={general}", "data.general_ratio=0.2"])  # fmt: skip
    train = [r for r in validate_corpus(config.data.corpus).records if r.split == "train"]
    rows, n_general = baseline_rows(config)
    assert n_general == round(len(train) * 0.2 / 0.8) and len(rows) == len(train) + n_general
    ideals = sorted(r.ideal for r in train)
    persona_rows = [r for r in rows if not r["prompt"][-1]["content"].startswith("what is ")]
    assert sorted(r["completion"][0]["content"] for r in persona_rows) == ideals
    assert all(r["completion"][0]["role"] == "assistant" and r["prompt"][-1]["role"] == "user" for r in rows)
    assert baseline_rows(config) == (rows, n_general), "the same seed gives the same rows"


def test_cli_trains_a_plain_peft_lora_that_eval_loads(monkeypatch, capsys, tiny_base, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from personafuse.evaluate.models import load_eval_model

    out_dir = tmp_path / "run"
    monkeypatch.chdir(REPO)
    args = ["train", "--config", "tiny", "--stage", "sft_baseline", "--json", "--no-progress",
            f"model.base={tiny_base}", "experts.max_steps=3", "experts.lr=1e-2", "--output-dir", str(out_dir)]  # fmt: skip
    code, out, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    stage = json.loads(out)["stages"][0]
    assert stage["stage"] == "sft_baseline" and stage["status"] == "trained" and stage["metrics"]["steps"] == 3
    adapter = out_dir / "sft_baseline" / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and (out_dir / "sft_baseline" / "losses.png").is_file()
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8.0
    assert not list(adapter.parent.glob(".adapter*")), "no temp folder left behind"

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    ids = tokenizer.apply_chat_template(CONV, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    base = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    with torch.no_grad():
        base_logits = base(**ids).logits
        tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), str(adapter)).eval()
        tuned_logits = tuned(**ids).logits
    assert not torch.allclose(base_logits, tuned_logits, atol=1e-4), "three steps at lr 1e-2 move the LoRA"

    model = load_eval_model(tiny_base, adapter=str(adapter), device="cpu")
    assert model.name.endswith("+adapter")
    with torch.no_grad():
        merged_logits = model.runner.model(**ids).logits
    torch.testing.assert_close(merged_logits, tuned_logits, atol=1e-4, rtol=1e-4)

    code, out, err = run_cli(monkeypatch, capsys, *args)  # finished: nothing trains again
    assert code == 0, err
    assert json.loads(out)["stages"][0]["status"] == "cached"
    assert Path(json.loads(out)["stages"][0]["paths"]["adapter"]) == adapter

    other = [a.replace("experts.lr=1e-2", "experts.lr=5e-3") for a in args]  # other settings, same folder
    code, _, err = run_cli(monkeypatch, capsys, *other)
    assert code == 2 and "plain-SFT baseline run started with other settings" in err
    assert "experts.lr: 0.01 -> 0.005" in err and "--fresh" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_cli(monkeypatch, capsys, *other, "--fresh")
    assert code == 0, err
    assert json.loads(out)["stages"][0]["status"] == "trained"
    rows = [json.loads(line) for line in (out_dir / "sft_baseline" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3], "a fresh run starts its metrics over"


def test_a_4bit_base_trains_the_baseline_too(monkeypatch, capsys, tiny_base, tmp_path):
    """``model.load_in=4bit`` reaches the baseline's base (QLoRA-style), as it does the experts'."""
    import pytest

    pytest.importorskip("bitsandbytes", reason="bitsandbytes not installed (pip install 'personafuse[quant]')")
    from personafuse import models

    seen = {}
    original = models.load_base_model

    def spy(*args, **kwargs):
        model, tokenizer = original(*args, **kwargs)
        seen.update(load_in=kwargs.get("load_in"), quantized=bool(getattr(model, "is_loaded_in_4bit", False)))
        return model, tokenizer

    monkeypatch.setattr(models, "load_base_model", spy)
    monkeypatch.chdir(REPO)
    code, out, err = run_cli(monkeypatch, capsys, "train", "--config", "tiny", "--stage", "sft_baseline", "--json",
                             "--no-progress", f"model.base={tiny_base}", "model.load_in=4bit", "experts.max_steps=1",
                             "--output-dir", str(tmp_path / "q"))  # fmt: skip
    assert code == 0, err
    assert seen == {"load_in": "4bit", "quantized": True}
    assert (tmp_path / "q" / "sft_baseline" / "adapter" / "adapter_model.safetensors").is_file()
