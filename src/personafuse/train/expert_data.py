"""Stage-1 samples: (messages, one pole's reply) hard-routed to that pole, plus routed general instructions.

Every train-split situation gives ten samples, one per pole: its messages as the prompt and ``responses[pole]``
as the reply, with one-hot gates on ``pole`` so only that expert sees the sample. Tokenisation uses the base
tokenizer's chat template exactly as :meth:`personafuse.PersonaFuse.chat_inputs` does at inference (prompt =
template with the generation prompt; reply = the rest of the templated conversation, end-of-turn token
included), and the loss is on reply tokens only (labels -100 on the prompt).

General instruction data (``data.general``, e.g. GSM8K's question/answer) is mixed in so general ability does
not regress. Those samples are routed by the router's own gates for their text (the mix they will meet at
inference), not switched off: with zero gates the persona layers return the base output and the experts get no
gradient, so "general data" would train nothing. Routed, every expert learns to keep general answers correct
under the mixes it will be part of.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from personafuse.traits import POLES

IGNORE_INDEX = -100
"""Label of tokens without loss (the prompt and the padding), as in transformers."""

Messages = list[dict[str, str]]
RouteFn = Callable[[list[str]], torch.Tensor]
"""Texts -> gates [n, 10] (the router's own gates; see :meth:`PersonaRouter.activations_and_gates`)."""


@dataclass(frozen=True)
class ExpertSample:
    """One tokenised stage-1 sample."""

    input_ids: list[int]
    """Prompt + reply token ids (already truncated to ``max_length``)."""
    labels: list[int]
    """``IGNORE_INDEX`` on the prompt, the reply's ids on the reply."""
    gates: tuple[float, ...]
    """Gates over the ten experts, in POLES order: one-hot for a pole reply, the router's for general data."""
    kind: Literal["persona", "general"]
    """Where the sample came from."""
    pole: str | None = None
    """The pole of a persona sample (None for general data)."""

    def as_features(self) -> dict[str, Any]:
        """The dict the collator takes."""
        return {"input_ids": self.input_ids, "labels": self.labels, "persona_gates": list(self.gates)}


# ---------------------------------------------------------------------------------------------------- general data
GENERAL_LAYOUTS: dict[str, tuple[str, ...]] = {
    "question/answer": ("question", "answer"),
    "instruction/output": ("instruction", "output"),
    "prompt/response": ("prompt", "response"),
    "messages": ("messages",),
}
"""Field layouts a general-instruction JSONL line may use (the first that fits wins). ``instruction/output``
also reads an optional ``input``; ``messages`` is a chat whose last turn is the assistant's reply."""


def general_pair(row: Mapping[str, Any]) -> tuple[Messages, str] | None:
    """(prompt messages, reply) of one general-instruction line, or None when no layout fits.

    Args:
        row: one JSON object (see :data:`GENERAL_LAYOUTS`).

    Returns:
        The user turn(s) and the reply text, or None.
    """

    def text(key: str) -> str | None:
        value = row.get(key)
        return value if isinstance(value, str) and value.strip() else None

    for layout, keys in GENERAL_LAYOUTS.items():
        if layout == "messages":
            messages = row.get("messages")
            if (
                isinstance(messages, list)
                and len(messages) >= 2
                and all(isinstance(m, Mapping) and isinstance(m.get("content"), str) for m in messages)
                and messages[-1].get("role") == "assistant"
                and messages[-2].get("role") == "user"
            ):
                return [{"role": str(m["role"]), "content": m["content"]} for m in messages[:-1]], messages[-1][
                    "content"
                ]
            continue
        prompt, reply = text(keys[0]), text(keys[1])
        if prompt and reply:
            if layout == "instruction/output" and text("input"):
                prompt = f"{prompt}\n\n{row['input']}"
            return [{"role": "user", "content": prompt}], reply
    return None


def read_general(path: str | Path) -> list[tuple[Messages, str]]:
    """Every (messages, reply) pair of a general-instruction JSONL file.

    Raises:
        FileNotFoundError: no such file.
        JsonlError: a line that is not a JSON object.
        ConfigError: a line that fits none of :data:`GENERAL_LAYOUTS`, named by file and line.
    """
    from personafuse.data.jsonl import iter_jsonl
    from personafuse.errors import ConfigError

    pairs = []
    for item in iter_jsonl(path):
        pair = general_pair(item.value)
        if pair is None:
            layouts = ", ".join(GENERAL_LAYOUTS)
            raise ConfigError(
                f"data.general: {path}:{item.line} has fields {sorted(item.value)[:6]} but needs one of the layouts "
                f"{layouts} (non-empty strings)"
            )
        pairs.append(pair)
    if not pairs:
        raise ConfigError(f"data.general: {path} holds no lines; give a JSONL of question/answer pairs or set null")
    return pairs


def general_count(persona_samples: int, ratio: float) -> int:
    """How many general samples make them ``ratio`` of all samples: ``round(n * ratio / (1 - ratio))``.

    Derivation: with ``g`` general and ``n`` persona samples, ``g / (n + g) = ratio`` gives
    ``g = n * ratio / (1 - ratio)``; e.g. n = 8, ratio = 0.2 -> g = 2 (2 of 10 samples).
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    return round(persona_samples * ratio / (1.0 - ratio))


# ---------------------------------------------------------------------------------------------------- tokenising
def one_hot_gates(pole: str) -> tuple[float, ...]:
    """Gates that route a sample to ``pole``'s expert alone: ``"O-"`` -> (0, 1, 0, ..., 0)."""
    from personafuse.traits import pole_index

    index = pole_index(pole)
    return tuple(1.0 if i == index else 0.0 for i in range(len(POLES)))


def truncate(prompt: Sequence[int], reply: Sequence[int], max_length: int) -> tuple[list[int], list[int]]:
    """Fit prompt + reply into ``max_length`` tokens: the prompt loses tokens from the left (its oldest turns).

    A reply that would leave the prompt less than a quarter of ``max_length`` is cut from the right so that the
    prompt keeps ``min(len(prompt), max_length // 4)`` tokens: the model must still see the end of the question.

    Examples (max_length 6): prompt [1 2 3 4], reply [5 6] -> [1 2 3 4] [5 6]; prompt [1 2 3 4 5], reply [6 7] ->
    [2 3 4 5] [6 7]; prompt [1 2 3], reply [4 5 6 7 8 9 10] -> [3] [4 5 6 7 8] (quarter of 6 = 1 prompt token).
    """
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    if len(prompt) + len(reply) <= max_length:
        return list(prompt), list(reply)
    keep_prompt = min(len(prompt), max_length // 4)
    reply_budget = max_length - keep_prompt
    reply_kept = list(reply[:reply_budget])
    prompt_budget = max_length - len(reply_kept)
    return list(prompt[len(prompt) - prompt_budget :]) if prompt_budget else [], reply_kept


def encode_pair(tokenizer: Any, messages: Messages, reply: str, max_length: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one conversation and its reply, loss on the reply only.

    The prompt is the chat template with the generation prompt, the reply is what the template adds after it
    for the assistant turn (so the end-of-turn token is learned); each is tokenised without extra special tokens,
    matching :meth:`PersonaFuse.chat_inputs`.

    Raises:
        ValueError: a chat template whose full conversation does not start with its prompt.
    """
    prompt_text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": reply}], tokenize=False)
    if not full_text.startswith(prompt_text):
        raise ValueError(
            "the tokenizer's chat template renders the conversation with the reply differently from the prompt "
            "alone; stage 1 needs a template whose prompt is a prefix of the full conversation"
        )
    reply_text = full_text[len(prompt_text) :]
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    reply_ids = tokenizer(reply_text, add_special_tokens=False)["input_ids"]
    prompt_ids, reply_ids = truncate(prompt_ids, reply_ids, max_length)
    return prompt_ids + reply_ids, [IGNORE_INDEX] * len(prompt_ids) + reply_ids


# ---------------------------------------------------------------------------------------------------- building
@dataclass(frozen=True)
class ExpertData:
    """The stage-1 training set and what it holds."""

    samples: list[ExpertSample]
    """Shuffled samples (seeded)."""
    persona: int
    """Number of pole-reply samples."""
    general: int
    """Number of general-instruction samples."""
    truncated: int
    """Samples cut to ``max_length``."""

    @property
    def tokens(self) -> int:
        """Total tokens over all samples."""
        return sum(len(s.input_ids) for s in self.samples)

    def summary(self) -> dict[str, int]:
        """Counts for the run summary."""
        per_pole = {p: sum(s.pole == p for s in self.samples) for p in POLES}
        return {"samples": len(self.samples), "persona": self.persona, "general": self.general,
                "truncated": self.truncated, "tokens": self.tokens, **{f"pole_{p}": n for p, n in per_pole.items()}}  # fmt: skip


def persona_pairs(records: Sequence[Any], split: str = "train") -> list[tuple[Messages, str, str]]:
    """(messages, reply, pole) for every pole of every record of ``split`` (records: ``SituationRecord``)."""
    out = []
    for record in records:
        if record.split != split:
            continue
        messages = [{"role": m.role, "content": m.content} for m in record.messages]
        for pole in POLES:
            out.append((messages, record.responses[pole], pole))
    return out


def build_expert_data(
    records: Sequence[Any],
    tokenizer: Any,
    max_length: int,
    general: Sequence[tuple[Messages, str]] = (),
    general_ratio: float = 0.0,
    route: RouteFn | None = None,
    seed: int = 0,
    split: str = "train",
) -> ExpertData:
    """All stage-1 samples: ten hard-routed pole replies per ``split`` record, plus routed general data.

    Args:
        records: ``SituationRecord`` objects (the whole corpus; only ``split`` is used).
        tokenizer: the base model's tokenizer (with a chat template).
        max_length: token limit per sample (see :func:`truncate`).
        general: (messages, reply) pairs of general instruction data.
        general_ratio: the share of general samples among all samples (see :func:`general_count`); drawn
            without replacement from ``general`` (all of it when it holds fewer).
        route: texts -> gates [n, 10] for the general samples; required when any general sample is drawn.
        seed: seed of the general draw and of the shuffle.
        split: the corpus split to train on.

    Returns:
        The shuffled samples and their counts.

    Raises:
        ValueError: no record in ``split``, or general samples without ``route``.
    """
    from personafuse.model import conversation_text

    pairs = persona_pairs(records, split)
    if not pairs:
        raise ValueError(f"the corpus has no {split!r} records; stage 1 trains on the {split} split")
    rng = random.Random(seed)
    samples: list[ExpertSample] = []
    truncated = 0
    for messages, reply, pole in pairs:
        ids, labels = encode_pair(tokenizer, messages, reply, max_length)
        truncated += _was_truncated(tokenizer, messages, reply, len(ids), max_length)
        samples.append(ExpertSample(ids, labels, one_hot_gates(pole), "persona", pole))
    wanted = general_count(len(pairs), general_ratio) if general else 0
    drawn = rng.sample(list(general), min(wanted, len(general))) if wanted else []
    if drawn:
        if route is None:
            raise ValueError("general samples need a route function (texts -> gates) to be routed")
        gates = torch.cat([route([conversation_text(m) for m, _ in drawn[i : i + 64]]).cpu()
                           for i in range(0, len(drawn), 64)])  # fmt: skip  # [n_general, 10]
        for (messages, reply), row in zip(drawn, gates.tolist()):
            ids, labels = encode_pair(tokenizer, messages, reply, max_length)
            truncated += _was_truncated(tokenizer, messages, reply, len(ids), max_length)
            samples.append(ExpertSample(ids, labels, tuple(float(g) for g in row), "general"))
    rng.shuffle(samples)
    return ExpertData(samples, persona=len(pairs), general=len(drawn), truncated=truncated)


def _was_truncated(tokenizer: Any, messages: Messages, reply: str, length: int, max_length: int) -> int:
    # Cheap: only samples that reached the limit can have been cut; re-encode those without a limit.
    if length < max_length:
        return 0
    full, _ = encode_pair(tokenizer, messages, reply, 1 << 30)
    return int(len(full) > max_length)


class ExpertDataset(torch.utils.data.Dataset):
    """A list of :class:`ExpertSample` as a map-style dataset of feature dicts."""

    def __init__(self, samples: Sequence[ExpertSample]) -> None:
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.samples[index].as_features()


# ---------------------------------------------------------------------------------------------------- collating
@dataclass
class ExpertCollator:
    """Right-pads a list of features into a batch for training.

    Returns ``input_ids`` [B, T] (padded with ``pad_token_id``), ``attention_mask`` [B, T] (1 on tokens),
    ``labels`` [B, T] (``IGNORE_INDEX`` on padding) and ``persona_gates`` [B, 10] (float32), where T is the
    longest sample, rounded up to ``pad_to_multiple_of`` when set.
    """

    pad_token_id: int
    """Token id used for padding (its positions are masked and get no loss)."""
    pad_to_multiple_of: int | None = None
    """Round T up to a multiple of this (tensor-core friendly shapes on GPUs)."""

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty batch")
        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = len(features)
        input_ids = torch.full((batch, longest), self.pad_token_id, dtype=torch.long)  # [B, T]
        attention_mask = torch.zeros((batch, longest), dtype=torch.long)  # [B, T]
        labels = torch.full((batch, longest), IGNORE_INDEX, dtype=torch.long)  # [B, T]
        for row, feature in enumerate(features):
            n = len(feature["input_ids"])
            input_ids[row, :n] = torch.tensor(feature["input_ids"], dtype=torch.long)
            attention_mask[row, :n] = 1
            labels[row, :n] = torch.tensor(feature["labels"], dtype=torch.long)
        gates = torch.tensor([list(f["persona_gates"]) for f in features], dtype=torch.float32)  # [B, 10]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "persona_gates": gates}
