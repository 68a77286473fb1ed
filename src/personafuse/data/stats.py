"""Corpus statistics: counts per domain and split, activated-pole shares, activation histograms, reply lengths.

Pure functions over validated records (no I/O); `personafuse data stats` renders them as tables and a PNG
(:mod:`personafuse.data.stats_plot`). A pole is *activated* in a situation when its trait's activation has that
sign and magnitude ``>= 1/3`` (:data:`personafuse.traits.ACTIVATION_THRESHOLD`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from personafuse.data.schema import SituationRecord
from personafuse.traits import ACTIVATION_THRESHOLD, POLES, TRAITS, activated_poles

__all__ = [
    "CorpusStats",
    "activated_trait_counts",
    "activation_histograms",
    "compute_stats",
    "count_by",
    "histogram_edges",
    "mean_reply_words",
    "pole_shares",
    "pole_shares_by",
]


def count_by(records: Sequence[SituationRecord], key: Callable[[SituationRecord], str]) -> dict[str, int]:
    """Number of records per ``key(record)``, keys sorted: ``count_by(rs, lambda r: r.domain)``."""
    counts = Counter(key(r) for r in records)
    return {k: counts[k] for k in sorted(counts)}


def pole_shares(records: Sequence[SituationRecord], threshold: float = ACTIVATION_THRESHOLD) -> dict[str, float]:
    """Fraction of situations in which each pole is activated (sign of the trait, ``|a| >= threshold``).

    The two poles of a trait are exclusive in one situation, so ``share[T+] + share[T-] <= 1``; an empty list
    gives zeros. Example: activations ``O=0.5`` and ``O=-0.4, A=0.2`` give ``O+ = O- = 0.5``, ``A+ = 0``.
    """
    counts: Counter[str] = Counter()
    for record in records:
        counts.update(activated_poles(record.activation, threshold))
    total = len(records)
    return {pole: counts[pole] / total if total else 0.0 for pole in POLES}


def pole_shares_by(
    records: Sequence[SituationRecord],
    key: Callable[[SituationRecord], str],
    threshold: float = ACTIVATION_THRESHOLD,
) -> dict[str, dict[str, float]]:
    """:func:`pole_shares` within each group ``key(record)``, groups sorted."""
    groups: dict[str, list[SituationRecord]] = {}
    for record in records:
        groups.setdefault(key(record), []).append(record)
    return {name: pole_shares(groups[name], threshold) for name in sorted(groups)}


def histogram_edges(bins: int) -> list[float]:
    """``bins + 1`` equal-width edges over [-1, 1]: ``histogram_edges(4) == [-1, -0.5, 0, 0.5, 1]``.

    Raises:
        ValueError: ``bins < 1``.
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    return [-1.0 + 2.0 * i / bins for i in range(bins + 1)]


def _bin_index(value: float, bins: int) -> int:
    # Bin i holds [edge_i, edge_{i+1}); the last also holds 1.0. Rounding first keeps values that sit on an
    # edge (0.5 with 4 bins; -0.6 with 10 bins, where (v + 1) / 0.2 = 1.9999999999999998) in the upper bin.
    position = round((value + 1.0) * bins / 2.0, 9)
    return min(max(math.floor(position), 0), bins - 1)


def activation_histograms(records: Sequence[SituationRecord], bins: int = 10) -> dict[str, list[int]]:
    """Counts of each trait's activation in ``bins`` equal bins over [-1, 1] (edges: :func:`histogram_edges`).

    Bin ``i`` holds ``[edge_i, edge_i+1)``, the last bin also holds 1.0. With 4 bins, activations
    ``-1, -0.5, 0, 0.49, 1`` fall in bins ``0, 1, 2, 2, 3``.
    """
    histogram_edges(bins)  # validates bins
    out = {trait: [0] * bins for trait in TRAITS}
    for record in records:
        for trait in TRAITS:
            out[trait][_bin_index(record.activation[trait], bins)] += 1
    return out


def activated_trait_counts(
    records: Sequence[SituationRecord], threshold: float = ACTIVATION_THRESHOLD
) -> dict[int, int]:
    """How many situations activate 0, 1, …, 5 traits: ``{n_traits: n_situations}`` for n_traits 0..5."""
    counts = Counter(len(activated_poles(r.activation, threshold)) for r in records)
    return {n: counts[n] for n in range(len(TRAITS) + 1)}


def _words(text: str) -> int:
    return len(text.split())


def mean_reply_words(records: Sequence[SituationRecord]) -> dict[str, float]:
    """Mean length in whitespace-separated words of each pole's reply, then of ``ideal`` and ``rejected``.

    Keys: the ten poles in :data:`POLES` order, then ``"ideal"`` and ``"rejected"``; an empty list gives zeros.
    """
    total = len(records)
    out = {}
    for pole in POLES:
        out[pole] = sum(_words(r.responses[pole]) for r in records) / total if total else 0.0
    out["ideal"] = sum(_words(r.ideal) for r in records) / total if total else 0.0
    out["rejected"] = sum(_words(r.rejected) for r in records) / total if total else 0.0
    return out


@dataclass(frozen=True)
class CorpusStats:
    """Everything `personafuse data stats` reports; ``as_dict()`` is its JSON form."""

    records: int
    """Number of valid situations."""
    per_domain: dict[str, int]
    """Situations per domain."""
    per_split: dict[str, int]
    """Situations per split."""
    per_domain_split: dict[str, dict[str, int]]
    """Situations per domain, then per split."""
    pole_share: dict[str, float]
    """Fraction of situations in which each pole is activated."""
    pole_share_per_domain: dict[str, dict[str, float]]
    """The same within each domain."""
    activated_traits: dict[int, int]
    """Situations per number of activated traits (0..5)."""
    histogram_edges: list[float]
    """Bin edges of the activation histograms, over [-1, 1]."""
    histograms: dict[str, list[int]]
    """Per trait, situations per activation bin."""
    reply_words: dict[str, float]
    """Mean reply length in words per pole, then ideal and rejected."""

    def as_dict(self) -> dict:
        """JSON-ready dict (the int keys of ``activated_traits`` become strings)."""
        out = asdict(self)
        out["activated_traits"] = {str(k): v for k, v in self.activated_traits.items()}
        return out


def compute_stats(records: Sequence[SituationRecord], bins: int = 12) -> CorpusStats:
    """All statistics of ``records``; see :class:`CorpusStats`.

    The default 12 bins have width 1/6, so ±1/3 (the activation threshold) are bin edges.

    Raises:
        ValueError: ``bins < 1``.
    """
    splits = ("train", "val", "test")
    per_domain = count_by(records, lambda r: r.domain)
    per_domain_split = {}
    for domain in per_domain:
        in_domain = Counter(r.split for r in records if r.domain == domain)
        per_domain_split[domain] = {s: in_domain[s] for s in splits}
    split_counts = Counter(r.split for r in records)
    return CorpusStats(
        records=len(records),
        per_domain=per_domain,
        per_split={s: split_counts[s] for s in splits},
        per_domain_split=per_domain_split,
        pole_share=pole_shares(records),
        pole_share_per_domain=pole_shares_by(records, lambda r: r.domain),
        activated_traits=activated_trait_counts(records),
        histogram_edges=histogram_edges(bins),
        histograms=activation_histograms(records, bins),
        reply_words=mean_reply_words(records),
    )
