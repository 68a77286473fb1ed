"""Stage-2 data: the contexts and activation labels of a corpus, and a cache of their frozen embeddings.

The router stage needs only three fields of a situation record (``messages``, ``activation``, ``split``), so a
corpus of just those is enough; everything else in the record is ignored here. Every problem of the corpus is
collected into one :class:`~personafuse.errors.ConfigError` before any model loads.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from personafuse.traits import TRAITS

__all__ = ["RouterExample", "cached_embeddings", "load_router_examples"]

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class RouterExample:
    """One context: the text the encoder reads, its signed activation labels and its split."""

    id: str
    text: str
    activation: tuple[float, ...]
    split: str


def _example(value: dict, where: str, problems: list[str]) -> RouterExample | None:
    messages = value.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) and "content" in m for m in messages):
        problems.append(f"{where}: 'messages' must be a list of {{role, content}} objects")
        return None
    # The same text as PersonaFuse.route reads at inference (model.conversation_text).
    text = "\n".join(str(m.get("content", "")) for m in messages if m.get("role") != "system")
    if not text.strip():
        problems.append(f"{where}: the messages have no text")
        return None
    activation = value.get("activation")
    if not isinstance(activation, dict) or set(activation) != set(TRAITS):
        problems.append(f"{where}: 'activation' must map exactly {list(TRAITS)} to numbers in [-1, 1]")
        return None
    numbers = []
    for trait in TRAITS:
        number = activation[trait]
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not -1.0 <= number <= 1.0:
            problems.append(f"{where}: activation {trait}={number!r} must be a number in [-1, 1]")
            return None
        numbers.append(float(number))
    split = value.get("split", "train")
    if split not in SPLITS:
        problems.append(f"{where}: split {split!r} must be one of {list(SPLITS)}")
        return None
    return RouterExample(str(value.get("id", where)), text, tuple(numbers), split)


def load_router_examples(corpus: str | Path) -> list[RouterExample]:
    """All contexts of ``corpus`` (a JSONL file or a folder of them), in file then line order.

    Raises:
        ConfigError: a missing corpus, malformed lines or records, or no train / val contexts; all problems in
            one line, each naming ``data.corpus`` and the file:line.
    """
    from personafuse.data.jsonl import JsonlError, iter_jsonl
    from personafuse.data.validate import corpus_files
    from personafuse.errors import ConfigError

    try:
        files = corpus_files(corpus)
    except FileNotFoundError as exc:
        raise ConfigError(f"data.corpus={str(corpus)!r}: {exc}; give a JSONL file or a folder of them") from None
    problems: list[str] = []
    examples: list[RouterExample] = []
    for file in files:
        errors: list[JsonlError] = []
        for item in iter_jsonl(file, skip_bad=True, errors=errors):
            example = _example(item.value, f"{file}:{item.line}", problems)
            if example is not None:
                examples.append(example)
        problems.extend(str(e) for e in errors)
    for split in ("train", "val"):
        if not problems and not any(e.split == split for e in examples):
            problems.append(f"no '{split}' records (the router trains on train and is scored on val)")
    if problems:
        shown = problems[:5] + ([f"... and {len(problems) - 5} more"] if len(problems) > 5 else [])
        raise ConfigError(f"data.corpus={str(corpus)!r} cannot train the router: " + "; ".join(shown))
    return examples


def _text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:40]


def cached_embeddings(
    embed: Callable[[list[str]], torch.Tensor], texts: Sequence[str], cache_path: str | Path, encoder: str
) -> tuple[torch.Tensor, int]:
    """Embeddings of ``texts`` [n, d], computing only those missing from the safetensors cache.

    The cache is one safetensors file per encoder; each tensor is named by the SHA-256 of its text, so a
    changed or added context is a miss and never a stale hit. New embeddings are added and the file is
    rewritten atomically.

    Args:
        embed: texts -> [n, d] float32 embeddings (``PersonaRouter.embed_texts``).
        texts: the contexts.
        cache_path: the cache file (created when missing).
        encoder: the encoder's name, stored in the file and checked on reuse.

    Returns:
        (embeddings [n, d] float32 on CPU, how many texts were embedded now).
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    cache_path = Path(cache_path)
    cached: dict[str, torch.Tensor] = {}
    if cache_path.is_file():
        with safe_open(str(cache_path), framework="pt") as handle:
            if (handle.metadata() or {}).get("encoder") == encoder:
                cached = {key: handle.get_tensor(key) for key in handle.keys()}
    keys = [_text_key(t) for t in texts]
    missing = sorted({k: t for k, t in zip(keys, texts) if k not in cached}.items())
    if missing:
        fresh = embed([t for _, t in missing]).detach().to("cpu", torch.float32)  # [m, d]
        cached.update({key: fresh[i].contiguous() for i, (key, _) in enumerate(missing)})
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_name(f".{cache_path.name}.tmp")
        save_file(cached, str(tmp), metadata={"encoder": encoder})
        os.replace(tmp, cache_path)
    return torch.stack([cached[k] for k in keys]), len(missing)
