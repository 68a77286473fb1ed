"""Contamination check: corpus texts that are near-copies of evaluation-set texts (cosine of sentence embeddings).

A seed situation or reply copied or paraphrased from a public benchmark would leak the benchmark into training
(docs/data-protocol.md §1). Embeddings come from any ``(label, texts) -> [n, dim]`` function returning unit
vectors (:class:`personafuse.data.embeddings.TextEmbedder`), so the search below is a dot product, run in
chunks of the evaluation texts to keep memory at ``corpus x chunk`` floats.

Texts longer than ``max_words`` are cut into windows of whole sentences, because the encoder truncates its
input (all-MiniLM-L6-v2: 256 word pieces) and a short copied passage inside a long answer would otherwise be
diluted or cut off.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from personafuse.data.eval_texts import EvalText
from personafuse.data.jsonl import JsonlError, iter_jsonl
from personafuse.data.validate import corpus_files
from personafuse.traits import POLES

__all__ = [
    "ContaminationReport",
    "CorpusText",
    "Pair",
    "corpus_texts",
    "find_contamination",
    "search_similar",
    "windows",
]

Embedder = Callable[[str, list[str]], torch.Tensor]
"""``(label, texts) -> [len(texts), dim]`` unit vectors; ``label`` names the text set for progress and caching."""


@dataclass(frozen=True)
class CorpusText:
    """One corpus text and where it is: ``"data/seed/x.jsonl:3 grief_loss-003 messages[0]"``."""

    text: str
    where: str


def corpus_texts(
    path: str | Path, *, replies: bool = False, errors: list[JsonlError] | None = None
) -> list[CorpusText]:
    """The user messages and ideal reply of every record under ``path`` (read raw: invalid records count too).

    Args:
        path: a JSONL file or a folder of them.
        replies: also take the ten pole replies and the rejected reply.
        errors: collects unreadable lines, which are skipped.

    Raises:
        FileNotFoundError: ``path`` does not exist or holds no ``*.jsonl``.
    """
    fields = ["ideal", "rejected"] if replies else ["ideal"]
    out = []
    for file in corpus_files(path):
        for item in iter_jsonl(file, skip_bad=True, errors=errors):
            value = item.value
            base = f"{file}:{item.line} {value.get('id', '?')}"
            messages = value.get("messages")
            for i, message in enumerate(messages if isinstance(messages, list) else []):
                if isinstance(message, dict) and message.get("role") == "user":
                    out.append(CorpusText(str(message.get("content", "")), f"{base} messages[{i}]"))
            for name in fields:
                out.append(CorpusText(str(value.get(name, "")), f"{base} {name}"))
            responses = value.get("responses")
            if replies and isinstance(responses, dict):
                out.extend(CorpusText(str(responses.get(p, "")), f"{base} responses.{p}") for p in POLES)
    return [t for t in out if t.text.strip()]


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def windows(text: str, max_words: int) -> list[str]:
    """Cut ``text`` into consecutive pieces of at most ``max_words`` words, breaking between sentences.

    A text of at most ``max_words`` words is returned whole; sentences are packed greedily; a single sentence
    longer than ``max_words`` is cut between words. ``windows("A b. C d. E.", 2) == ["A b.", "C d.", "E."]``.

    Raises:
        ValueError: ``max_words < 1``.
    """
    if max_words < 1:
        raise ValueError(f"max_words must be >= 1, got {max_words}")
    words = text.split()
    if len(words) <= max_words:
        return [" ".join(words)] if words else []
    pieces: list[list[str]] = [[]]
    for sentence in _SENTENCE_END.split(text.strip()):
        sentence_words = sentence.split()
        while len(sentence_words) > max_words:  # an over-long sentence: its own word-cut pieces
            pieces.append(sentence_words[:max_words])
            sentence_words = sentence_words[max_words:]
        if len(pieces[-1]) + len(sentence_words) > max_words:
            pieces.append([])
        pieces[-1].extend(sentence_words)
    return [" ".join(p) for p in pieces if p]


def search_similar(
    queries: torch.Tensor,
    keys: torch.Tensor,
    threshold: float,
    *,
    chunk_size: int = 8192,
    max_hits: int = 10_000,
) -> tuple[list[tuple[int, int, float]], int, torch.Tensor, torch.Tensor]:
    """All (query, key) pairs with cosine ``>= threshold``, and each query's nearest key.

    Both inputs must be unit vectors, so cosine = dot product. Keys are scanned ``chunk_size`` rows at a time,
    so memory is ``len(queries) * chunk_size`` floats whatever the number of keys.

    Args:
        queries: ``[Q, d]``.
        keys: ``[K, d]``.
        threshold: minimum cosine of a hit.
        chunk_size: keys per matmul.
        max_hits: keep at most this many hits (the most similar); the count is still exact.

    Returns:
        ``(hits, n_hits, best_sim, best_index)``: hits as ``(query, key, cosine)`` sorted by cosine descending,
        then query and key; the number of hits before truncation; ``[Q]`` nearest cosine (``-inf`` without keys)
        and ``[Q]`` nearest key index (``-1`` without keys).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n_queries = queries.shape[0]
    best_sim = torch.full((n_queries,), float("-inf"), device=queries.device)  # [Q]
    best_index = torch.full((n_queries,), -1, dtype=torch.long, device=queries.device)  # [Q]
    hits: list[tuple[int, int, float]] = []
    n_hits = 0

    def order(hit: tuple[int, int, float]) -> tuple[float, int, int]:
        return (-hit[2], hit[0], hit[1])

    for start in range(0, keys.shape[0], chunk_size):
        sims = queries @ keys[start : start + chunk_size].T  # [Q, chunk]
        values, index = sims.max(dim=1)  # [Q], [Q]
        better = values > best_sim
        best_sim = torch.where(better, values, best_sim)
        best_index = torch.where(better, index + start, best_index)
        rows, cols = (sims >= threshold).nonzero(as_tuple=True)  # [h], [h]
        n_hits += rows.numel()
        hits.extend(zip(rows.tolist(), (cols + start).tolist(), sims[rows, cols].tolist()))
        if len(hits) > 2 * max_hits:  # bound memory: keep only the best max_hits so far
            hits = sorted(hits, key=order)[:max_hits]
    return sorted(hits, key=order)[:max_hits], n_hits, best_sim.cpu(), best_index.cpu()


@dataclass(frozen=True)
class Pair:
    """A corpus text, an evaluation text and their cosine similarity."""

    similarity: float
    corpus_where: str
    corpus_text: str
    eval_set: str
    eval_where: str
    eval_text: str


@dataclass
class ContaminationReport:
    """The outcome of :func:`find_contamination`."""

    threshold: float
    """Cosine at or above which a pair is reported."""
    pairs: list[Pair] = field(default_factory=list)
    """Pairs at or above the threshold, most similar first (at most ``max_pairs``)."""
    n_pairs: int = 0
    """Number of pairs at or above the threshold (``pairs`` may be truncated)."""
    nearest: list[Pair] = field(default_factory=list)
    """The most similar evaluation text of the corpus texts that come closest, most similar first."""
    corpus_texts: int = 0
    """Corpus texts (windows) compared."""
    eval_texts: dict[str, int] = field(default_factory=dict)
    """Evaluation texts (windows) compared, per set."""
    skipped_short: int = 0
    """Texts left out for having fewer than ``min_words`` words (both sides)."""

    @property
    def clean(self) -> bool:
        """True when no pair reaches the threshold."""
        return self.n_pairs == 0

    def as_dict(self) -> dict:
        """JSON-ready form."""
        return {**asdict(self), "clean": self.clean}


def _units(items: Sequence[CorpusText | EvalText], max_words: int, min_words: int) -> tuple[list[str], list[str], int]:
    texts, wheres, skipped = [], [], 0
    for item in items:
        pieces = windows(item.text, max_words)
        for k, piece in enumerate(pieces):
            if len(piece.split()) < min_words:
                skipped += 1
                continue
            texts.append(piece)
            wheres.append(item.where if len(pieces) == 1 else f"{item.where} (part {k + 1}/{len(pieces)})")
    return texts, wheres, skipped


def find_contamination(
    corpus: Sequence[CorpusText],
    eval_sets: dict[str, Sequence[EvalText]],
    embed: Embedder,
    *,
    threshold: float = 0.85,
    top: int = 10,
    min_words: int = 1,
    max_words: int = 96,
    chunk_size: int = 8192,
    max_pairs: int = 10_000,
    device: str | torch.device = "cpu",
) -> ContaminationReport:
    """Compare every corpus text with every evaluation text and report the pairs at or above ``threshold``.

    Args:
        corpus: texts of the corpus (:func:`corpus_texts`).
        eval_sets: set name -> its texts (:func:`personafuse.data.eval_texts.load_eval_set`).
        embed: unit-vector embedder, called once for the corpus (label ``"corpus"``) and once per set.
        threshold: cosine in (0, 1].
        top: how many nearest pairs to keep in ``report.nearest`` (one per corpus text, whatever the threshold).
        min_words: leave out texts (windows) with fewer words, on both sides.
        max_words: cut longer texts into sentence windows (:func:`windows`).
        chunk_size: evaluation texts per similarity matmul.
        max_pairs: keep at most this many pairs over the threshold (the count stays exact).
        device: where the similarity search runs.

    Returns:
        The report.

    Raises:
        ValueError: ``threshold`` outside (0, 1], or ``top``, ``min_words``, ``max_words`` below their minimum.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if top < 0 or min_words < 0:
        raise ValueError(f"top and min_words must be >= 0, got top={top}, min_words={min_words}")
    report = ContaminationReport(threshold=threshold)
    corpus_list, corpus_where, report.skipped_short = _units(corpus, max_words, min_words)
    report.corpus_texts = len(corpus_list)
    queries = embed("corpus", corpus_list).to(device)  # [Q, d]
    best_sim = torch.full((len(corpus_list),), float("-inf"))  # [Q], over all sets
    best_pair: list[Pair | None] = [None] * len(corpus_list)
    for name, items in eval_sets.items():
        texts, wheres, skipped = _units(items, max_words, min_words)
        report.skipped_short += skipped
        report.eval_texts[name] = len(texts)
        if not texts or not corpus_list:
            continue
        keys = embed(name, texts).to(device)  # [K, d]
        hits, n_hits, set_best, set_index = search_similar(
            queries, keys, threshold, chunk_size=chunk_size, max_hits=max_pairs
        )
        report.n_pairs += n_hits
        report.pairs.extend(
            Pair(round(s, 4), corpus_where[q], corpus_list[q], name, wheres[k], texts[k]) for q, k, s in hits
        )
        for q in torch.nonzero(set_best > best_sim).flatten().tolist():
            best_sim[q] = set_best[q]
            k = int(set_index[q])
            best_pair[q] = Pair(
                round(float(set_best[q]), 4), corpus_where[q], corpus_list[q], name, wheres[k], texts[k]
            )
    report.pairs = sorted(report.pairs, key=lambda p: (-p.similarity, p.corpus_where, p.eval_set, p.eval_where))
    report.pairs = report.pairs[:max_pairs]
    nearest = [p for p in best_pair if p is not None]
    report.nearest = sorted(nearest, key=lambda p: (-p.similarity, p.corpus_where))[:top]
    return report
