"""Near-duplicate filtering of synthesised situations, with no model: character shingles and Jaccard overlap.

Why character shingles: LLMs asked for "different" situations often return the same one lightly reworded
("my dog died yesterday" / "My dog passed away yesterday."). Word-level overlap misses inflections and
punctuation changes; 5-character shingles of the normalised text catch them, and unrelated texts share few.
The protocol (docs/data-protocol.md §1) also forbids two situations of a domain sharing an opening, which is
checked separately on the first words.

Every check compares against all kept texts (O(n) per check). That is fine up to some thousands of situations
per run; beyond that, swap in MinHash/LSH behind the same :class:`NearDuplicateFilter` interface.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["Duplicate", "NearDuplicateFilter", "jaccard", "normalise", "opening", "shingles"]

_NON_ALNUM = re.compile(r"[^0-9a-z]+")


def normalise(text: str) -> str:
    """Lower-case ``text`` and collapse every run of non-alphanumerics to one space: ``"Hi, THERE!"`` -> ``"hi there"``."""
    return _NON_ALNUM.sub(" ", text.lower()).strip()


def shingles(text: str, k: int = 5) -> frozenset[str]:
    """The set of ``k``-character substrings of the normalised text; a text shorter than ``k`` is one shingle.

    Args:
        text: any text.
        k: shingle length, >= 1.

    Returns:
        The shingle set; empty only for a text with no letters or digits.

    Raises:
        ValueError: ``k`` < 1.
    """
    if k < 1:
        raise ValueError(f"shingle length k must be >= 1, got {k}")
    norm = normalise(text)
    if not norm:
        return frozenset()
    if len(norm) <= k:
        return frozenset({norm})
    return frozenset(norm[i : i + k] for i in range(len(norm) - k + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    """|a ∩ b| / |a ∪ b|; two empty sets count as identical (1.0)."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def opening(text: str, words: int) -> str:
    """The first ``words`` normalised words of ``text``, or ``""`` when it has fewer (too short to judge)."""
    tokens = normalise(text).split()
    if words <= 0 or len(tokens) < words:
        return ""
    return " ".join(tokens[:words])


@dataclass(frozen=True)
class Duplicate:
    """Why a text was judged a duplicate: the kind, the key of the kept text it matches, and the overlap."""

    kind: str
    """``"near_duplicate"`` (Jaccard at or above the threshold) or ``"same_opening"``."""
    match: str
    """Key of the kept text it duplicates."""
    similarity: float
    """Jaccard similarity of the shingle sets (for ``same_opening`` too, for information)."""

    def reason(self) -> str:
        """One line for logs and the rejected-items file."""
        if self.kind == "same_opening":
            return f"same opening as {self.match} (jaccard {self.similarity:.2f})"
        return f"near-duplicate of {self.match} (jaccard {self.similarity:.2f})"


@dataclass
class NearDuplicateFilter:
    """Keeps the texts accepted so far and judges new ones against them.

    A text is a duplicate of a kept one when the Jaccard similarity of their shingle sets is at least
    ``threshold``, or (when ``opening_words`` > 0) when both are in the same group (domain) and start with the
    same ``opening_words`` normalised words.
    """

    threshold: float = 0.5
    """Jaccard similarity at or above which two texts are near-duplicates, in (0, 1]."""
    opening_words: int = 5
    """Texts of one group may not share their first this-many words; 0 turns the check off."""
    k: int = 5
    """Shingle length in characters."""
    _kept: list[tuple[str, str, frozenset[str], str]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.opening_words < 0:
            raise ValueError(f"opening_words must be >= 0, got {self.opening_words}")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")

    def __len__(self) -> int:
        return len(self._kept)

    def check(self, text: str, group: str = "") -> Duplicate | None:
        """Return why ``text`` duplicates a kept text (the most similar one), or ``None`` when it is new."""
        grams = shingles(text, self.k)
        head = opening(text, self.opening_words)
        best: Duplicate | None = None
        for key, kept_group, kept_grams, kept_head in self._kept:
            similarity = jaccard(grams, kept_grams)
            if similarity >= self.threshold:
                if best is None or best.kind != "near_duplicate" or similarity > best.similarity:
                    best = Duplicate("near_duplicate", key, similarity)
            elif head and head == kept_head and group == kept_group and best is None:
                best = Duplicate("same_opening", key, similarity)
        return best

    def add(self, key: str, text: str, group: str = "") -> None:
        """Keep ``text`` under ``key`` (no check; call :meth:`check` first for new texts)."""
        self._kept.append((key, group, shingles(text, self.k), opening(text, self.opening_words)))
