"""Rewrite the ``split`` field of corpus files from the hash of each id (`personafuse data split`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from personafuse.data.jsonl import iter_jsonl, write_jsonl_atomic
from personafuse.data.split import assign_split

__all__ = ["SplitChange", "resplit_file"]


@dataclass(frozen=True)
class SplitChange:
    """One record whose ``split`` differs from :func:`assign_split` of its id (``old`` is None when absent)."""

    path: str
    line: int
    id: str
    old: str | None
    new: str


def resplit_file(path: str | Path, *, write: bool) -> list[SplitChange]:
    """Find, and with ``write`` fix, every record of a JSONL file whose ``split`` is not ``assign_split(id)``.

    Only the ``split`` value changes (other fields and key order are kept; a missing ``split`` is added last).
    The file is rewritten atomically, and only when something changes, so a second run is a no-op.

    Args:
        path: one JSONL file.
        write: rewrite the file; otherwise only report.

    Returns:
        The records whose split differs (before the rewrite), in line order.

    Raises:
        FileNotFoundError: no such file.
        JsonlError: a line that is not a JSON object (nothing is written).
        UserError: a record without a string ``id`` (nothing is written).
    """
    from personafuse.errors import UserError

    rows = []
    changes = []
    for item in iter_jsonl(path):
        record_id = item.value.get("id")
        if not isinstance(record_id, str) or not record_id:
            raise UserError(f"{path}:{item.line}: record has no string 'id', so its split cannot be assigned; add one")
        new = assign_split(record_id)
        old = item.value.get("split")
        if old != new:
            changes.append(SplitChange(str(path), item.line, record_id, old, new))
            item.value["split"] = new
        rows.append(item.value)
    if write and changes:
        write_jsonl_atomic(path, rows)
    return changes
