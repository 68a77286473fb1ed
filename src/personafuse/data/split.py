"""Train/val/test assignment by a stable hash of the situation id.

Why a hash of the id and not a random draw: the split of a situation must not change when the corpus is
re-synthesised, extended or reordered, so a situation never moves from train into test. Python's built-in
``hash`` is salted per process (PYTHONHASHSEED), hence SHA-256.
"""

from __future__ import annotations

import hashlib
from typing import Literal

__all__ = ["SPLIT_PERCENT", "Split", "assign_split", "split_bucket"]

Split = Literal["train", "val", "test"]

SPLIT_PERCENT: dict[str, int] = {"train": 80, "val": 10, "test": 10}
"""Share of situations per split, in percent (docs/data-protocol.md §5)."""


def split_bucket(record_id: str) -> int:
    """The bucket in ``[0, 100)`` of ``record_id``: the first 8 bytes of its SHA-256, big-endian, modulo 100."""
    digest = hashlib.sha256(record_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 100


def assign_split(record_id: str) -> Split:
    """The split of a situation: buckets 0–79 are ``train``, 80–89 ``val``, 90–99 ``test``.

    Args:
        record_id: the situation's ``id``.

    Returns:
        ``"train"``, ``"val"`` or ``"test"``; the same id always gets the same split.
    """
    bucket = split_bucket(record_id)
    if bucket < SPLIT_PERCENT["train"]:
        return "train"
    if bucket < SPLIT_PERCENT["train"] + SPLIT_PERCENT["val"]:
        return "val"
    return "test"
