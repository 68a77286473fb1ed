"""Shared helpers of the eval tests: the data root, a tiny random chat LM with a byte-level tokenizer, and
scripted oracle models. (A module of helpers rather than a conftest.py, because other test files own that.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from personafuse.evaluate.choice import LETTERS
from personafuse.evaluate.scripted import ScriptedModel

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
"""The shared datasets (../shared/data from the repo root)."""

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared datasets not found at {DATA}")

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer():
    """A byte-level tokenizer (256 byte tokens, no merges, 3 specials) with a ChatML template: any text, no files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<pad>")
    fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def tiny_model(tokenizer, seed: int = 0):
    """A random 2-layer Llama with hidden size 32 (deterministic for ``seed``)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def save_tiny_model(path: Path) -> Path:
    """Write the tiny model + tokenizer as an ordinary HF folder."""
    tokenizer = tiny_tokenizer()
    tiny_model(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def gold_chooser(questions) -> ScriptedModel:
    """A model whose option log-likelihood is 0 for each question's gold letter and -5 otherwise."""
    gold = {q.messages[-1]["content"]: LETTERS[q.gold] for q in questions}
    return ScriptedModel(
        loglik=lambda context, cont: 0.0 if gold[context[-1]["content"]] == cont else -5.0, name="gold"
    )


def letter_chooser(letter: str = "A") -> ScriptedModel:
    """A model that always prefers ``letter``."""
    return ScriptedModel(loglik=lambda context, cont: 0.0 if cont == letter else -5.0, name=f"always-{letter}")


def cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run `personafuse ARGS` in-process; returns (exit code, stdout, stderr)."""
    import sys

    from personafuse.cli import app
    from personafuse.cli.errors import run_app

    monkeypatch.setattr(sys, "argv", ["personafuse", *args])
    code = 0
    try:
        run_app(app)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_tiny_tokenizer_round_trips_any_text():
    tok = tiny_tokenizer()
    for text in ("Hello, world!", "多瑞在尝试", "tabs\tand\nnewlines"):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
