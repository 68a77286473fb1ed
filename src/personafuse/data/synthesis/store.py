"""Append-only JSONL stage files keyed by item id: what makes every stage resumable on its own.

Each accepted item is one ``append_jsonl`` call (one ``write`` + fsync), so a crash or Ctrl-C loses at most
the items in flight. On load, a torn last line is skipped and a repeated id keeps its first row, so a
file is always safe to resume from.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from personafuse.data.jsonl import JsonlError, append_jsonl, iter_jsonl

__all__ = ["RejectLog", "StageStore"]

logger = logging.getLogger(__name__)


class StageStore:
    """One stage's output file: ``{id: row}`` in memory, appended to disk row by row."""

    def __init__(self, path: str | Path, key: str = "id") -> None:
        """Open (and read, if it exists) the stage file ``path``; rows are keyed by their ``key`` field."""
        self.path = Path(path)
        self.key = key
        self.rows: dict[str, dict[str, Any]] = {}
        self.torn_lines = 0
        if self.path.is_file():
            errors: list[JsonlError] = []
            for item in iter_jsonl(self.path, skip_bad=True, errors=errors):
                item_id = item.value.get(key)
                if isinstance(item_id, str) and item_id not in self.rows:
                    self.rows[item_id] = item.value
            self.torn_lines = len(errors)
            for error in errors:
                logger.warning("skipping unreadable line (an interrupted write?) %s", error)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self.rows

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, item_id: str) -> dict[str, Any] | None:
        """The row of ``item_id``, or ``None``."""
        return self.rows.get(item_id)

    def append(self, row: dict[str, Any]) -> None:
        """Write ``row`` (which must carry a new id) and keep it in memory.

        Raises:
            ValueError: the row has no id, or its id is already stored (that would be a duplicate).
        """
        item_id = row.get(self.key)
        if not isinstance(item_id, str):
            raise ValueError(f"row without a string {self.key!r}: {sorted(row)}")
        if item_id in self.rows:
            raise ValueError(f"{item_id!r} is already in {self.path}; refusing to write a duplicate")
        append_jsonl(self.path, row)
        self.rows[item_id] = row


class RejectLog:
    """``rejected.jsonl``: one row per rejected item or candidate, with stage, category, reason and the reply.

    A rejection is final for its (stage, id): a rerun does not ask again unless told to
    (``SynthesisConfig.retry_rejected``). Stage-1 candidates have no id; they only leave a row for inspection.
    """

    def __init__(self, path: str | Path) -> None:
        """Open (and read, if it exists) the log at ``path``."""
        self.path = Path(path)
        self.final: set[tuple[str, str]] = set()
        if self.path.is_file():
            for item in iter_jsonl(self.path, skip_bad=True, errors=[]):
                stage, item_id = item.value.get("stage"), item.value.get("id")
                if isinstance(stage, str) and isinstance(item_id, str):
                    self.final.add((stage, item_id))

    def is_rejected(self, stage: str, item_id: str) -> bool:
        """Whether an earlier rejection of ``item_id`` at ``stage`` is on file."""
        return (stage, item_id) in self.final

    def add(self, stage: str, item_id: str | None, domain: str, category: str, reason: str, reply: str = "") -> None:
        """Append one rejection (the reply is cut to 2,000 characters)."""
        row = {"stage": stage, "id": item_id, "domain": domain, "category": category, "reason": reason}
        if reply:
            row["reply"] = reply[:2000]
        append_jsonl(self.path, row)
        if item_id is not None:
            self.final.add((stage, item_id))
