"""Stage-3 data: preference pairs and RL prompts from the situation corpus, tokenisation and the pair collator.

A pair is a situation's messages (the prompt), its ``ideal`` reply (chosen) and its ``rejected`` reply, plus the
situation's labelled activation (used by ``preference.routing=label``) and its context text (what the persona
encoder reads for ``routing=routed``). Token layout of a collated batch of B pairs, as in TRL's DPOTrainer:

    rows 0..B-1   = prompt + chosen,  rows B..2B-1 = prompt + rejected    (right-padded)
    completion_mask = 1 on the reply tokens (including the end-of-turn token), 0 on prompt and padding
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["PreferenceExample", "TokenizedPair", "collate_pairs", "load_preference_examples", "tokenize_pair"]


@dataclass(frozen=True)
class PreferenceExample:
    """One situation as stage 3 uses it."""

    id: str
    messages: list[dict[str, str]]
    chosen: str
    rejected: str
    activation: list[float]
    context: str


@dataclass(frozen=True)
class TokenizedPair:
    """Token ids of the prompt and of the two replies (each reply starts right after the prompt)."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]


def load_preference_examples(corpus: str | Path, split: str) -> list[PreferenceExample]:
    """Every record of ``split`` in the corpus (a JSONL file or a folder of them), in file order.

    Raises:
        FileNotFoundError: no such corpus.
        UserError: the corpus has invalid records (the message names the first and the fix).
    """
    from personafuse.data.validate import validate_corpus
    from personafuse.errors import UserError
    from personafuse.traits import TRAITS

    report = validate_corpus(corpus)
    if report.problems:
        raise UserError(
            f"the corpus {corpus} has {len(report.problems)} problem(s), first: {report.problems[0]}; "
            "fix them (`personafuse data validate`) before training"
        )
    return [
        PreferenceExample(
            id=r.id,
            messages=[m.model_dump() for m in r.messages],
            chosen=r.ideal,
            rejected=r.rejected,
            activation=[r.activation[t] for t in TRAITS],
            context=r.context_text(),
        )
        for r in report.records
        if r.split == split
    ]


def _prompt_text(tokenizer, messages: Sequence[dict[str, str]]) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)


def _completion_text(tokenizer, messages: Sequence[dict[str, str]], reply: str, prompt: str) -> str:
    """The reply as the chat template renders it after the prompt, cut after the end-of-turn token."""
    full = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": reply}], tokenize=False)
    eos = tokenizer.eos_token or ""
    if not full.startswith(prompt):  # a template that renders the prompt differently: plain reply + eos
        return reply + eos
    text = full[len(prompt) :]
    if eos and eos in text:
        text = text[
            : text.index(eos) + len(eos)
        ]  # generation stops there; the template's trailing "\n" is not a target
    return text


def tokenize_pair(
    tokenizer, messages: Sequence[dict[str, str]], chosen: str, rejected: str, max_length: int
) -> TokenizedPair:
    """Tokenise the prompt (chat template + generation prompt) and both replies, fitting ``max_length``.

    Prompt and reply are tokenised separately, exactly as at generation time (the prompt alone, then the reply
    tokens one by one). When prompt + the longer reply exceed ``max_length``, the prompt loses tokens from the left
    (down to half of ``max_length``), then the replies are cut on the right.
    """
    prompt_str = _prompt_text(tokenizer, messages)
    prompt = tokenizer(prompt_str, add_special_tokens=False)["input_ids"]
    replies = [
        tokenizer(_completion_text(tokenizer, messages, reply, prompt_str), add_special_tokens=False)["input_ids"]
        for reply in (chosen, rejected)
    ]
    longest = max(len(r) for r in replies)
    if len(prompt) + longest > max_length:
        keep = max(max_length - longest, max_length // 2, 1)
        prompt = prompt[-keep:] if len(prompt) > keep else prompt
        replies = [r[: max(max_length - len(prompt), 1)] for r in replies]
    return TokenizedPair(prompt, replies[0], replies[1])


def collate_pairs(pairs: Sequence[TokenizedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` / ``attention_mask`` / ``completion_mask``, each [2B, T]: chosen rows, then rejected.

    Args:
        pairs: B tokenised pairs.
        pad_id: the padding token id.

    Returns:
        Long tensors ``input_ids``, ``attention_mask`` and ``completion_mask``.
    """
    rows = [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
    width = max(len(prompt) + len(reply) for prompt, reply in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # [2B, T]
    attention = torch.zeros(len(rows), width, dtype=torch.long)
    completion = torch.zeros(len(rows), width, dtype=torch.long)
    for i, (prompt, reply) in enumerate(rows):
        n, m = len(prompt), len(reply)
        input_ids[i, : n + m] = torch.tensor(prompt + reply, dtype=torch.long)
        attention[i, : n + m] = 1
        completion[i, n : n + m] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "completion_mask": completion}
