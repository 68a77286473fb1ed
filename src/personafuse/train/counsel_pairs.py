"""CounselChat as pairwise human preferences: answers to the same question ranked by upvotes.

The CSV (``../shared/data/counsel_chat/20200325_counsel_chat.csv``, Bertagnolli 2020, MIT) holds 2,129 therapist
answers to 815 questions. Every two answers to one question with different upvotes make a pair (chosen = more
upvotes); ties are skipped. Some questions were posted twice under two ids (same title or text, answers copied),
so ids sharing a normalised title or text are merged into one question group and duplicate answers within a group
are dropped; groups are split into train/val/test by a stable hash, so no question is in two splits.
"""

from __future__ import annotations

import csv
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personafuse.data.split import split_bucket

__all__ = ["CounselPair", "grouped_bootstrap_ci", "length_baseline_accuracy", "load_counsel_pairs"]

REQUIRED_COLUMNS = ("questionID", "questionTitle", "questionText", "answerText", "upvotes")


@dataclass(frozen=True)
class CounselPair:
    """Two answers to one question; ``chosen`` got more upvotes."""

    group: str
    question: str
    chosen: str
    rejected: str
    chosen_upvotes: int = 0
    rejected_upvotes: int = 0


def _normalise(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def _split_of(group: str, val_percent: int, test_percent: int) -> str:
    bucket = split_bucket(f"counselchat:{group}")
    if bucket < 100 - val_percent - test_percent:
        return "train"
    return "val" if bucket < 100 - test_percent else "test"


def load_counsel_pairs(
    path: str | Path, val_percent: int = 15, test_percent: int = 15
) -> dict[str, list[CounselPair]]:
    """Pairwise preferences from the CounselChat CSV, split by question group.

    Args:
        path: ``20200325_counsel_chat.csv`` (columns include questionID, questionTitle, questionText,
            answerText, upvotes).
        val_percent, test_percent: shares of question groups held out.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``; pairs are ordered by group then answer order.

    Raises:
        FileNotFoundError: no such file.
        UserError: a column is missing.
    """
    from personafuse.errors import UserError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no CounselChat CSV at {path}; set data.counsel_chat to 20200325_counsel_chat.csv")
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(
                f"{path} lacks the column(s) {missing}; expected the CounselChat CSV with {list(REQUIRED_COLUMNS)}"
            )
        rows = [row for row in reader if (row["answerText"] or "").strip()]

    # Union question ids that share a normalised title or text (the same question posted twice).
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    first_by_key: dict[tuple[str, str], str] = {}
    for row in rows:
        qid = str(row["questionID"])
        find(qid)
        for column in ("questionTitle", "questionText"):
            key = (column, _normalise(row[column] or ""))
            if not key[1]:
                continue
            if key in first_by_key:
                parent[find(qid)] = find(first_by_key[key])
            else:
                first_by_key[key] = qid

    groups: dict[str, dict[str, Any]] = {}
    for row in rows:
        group = find(str(row["questionID"]))
        entry = groups.setdefault(group, {"question": "", "answers": {}})
        if not entry["question"]:
            entry["question"] = "\n".join(
                t.strip() for t in (row["questionTitle"], row["questionText"]) if t and t.strip()
            )
        text = row["answerText"].strip()
        key = _normalise(text)
        votes = int(float(row["upvotes"] or 0))
        previous = entry["answers"].get(key)
        if previous is None or votes > previous[1]:
            entry["answers"][key] = (text, votes)

    out: dict[str, list[CounselPair]] = {"train": [], "val": [], "test": []}
    for group, entry in groups.items():
        answers = list(entry["answers"].values())
        split = _split_of(group, val_percent, test_percent)
        for i in range(len(answers)):
            for j in range(i + 1, len(answers)):
                (a, va), (b, vb) = answers[i], answers[j]
                if va == vb:
                    continue
                (w, vw), (lo, vl) = ((a, va), (b, vb)) if va > vb else ((b, vb), (a, va))
                out[split].append(CounselPair(group, entry["question"], w, lo, vw, vl))
    return out


def length_baseline_accuracy(pairs: Sequence[CounselPair]) -> float:
    """Accuracy of "the longer answer (in characters) wins"; equal lengths count as half right."""
    if not pairs:
        return float("nan")
    score = sum(
        1.0 if len(p.chosen) > len(p.rejected) else 0.5 if len(p.chosen) == len(p.rejected) else 0.0 for p in pairs
    )
    return score / len(pairs)


def grouped_bootstrap_ci(
    correct: Sequence[float], groups: Sequence[str], samples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """95% bootstrap interval of the mean of ``correct`` resampling whole groups (questions), not pairs.

    Pairs of one question are not independent (one 49-answer question yields hundreds of pairs), so the
    interval resamples questions with replacement and pools their pairs.
    """
    by_group: dict[str, list[float]] = {}
    for value, group in zip(correct, groups):
        by_group.setdefault(group, []).append(float(value))
    keys = sorted(by_group)
    if not keys:
        return float("nan"), float("nan")
    rng = random.Random(seed)
    means = []
    for _ in range(samples):
        total = count = 0.0
        for key in rng.choices(keys, k=len(keys)):
            total += sum(by_group[key])
            count += len(by_group[key])
        means.append(total / count)
    means.sort()
    return means[int(0.025 * samples)], means[min(int(0.975 * samples), samples - 1)]
