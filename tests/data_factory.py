"""Hand-made situation records for the data-tool tests: valid by default, every field overridable."""

from __future__ import annotations

import json
from itertools import count
from pathlib import Path
from typing import Any

from personafuse.data.split import assign_split
from personafuse.traits import POLES


def make_record(record_id: str, *, domain: str = "casual_chat", user: str | None = None, **fields: Any) -> dict:
    """A valid record whose split is the hash split of ``record_id`` and whose replies mention the id."""
    record = {
        "schema_version": 1,
        "id": record_id,
        "domain": domain,
        "messages": [{"role": "user", "content": user or f"Tell me something about situation {record_id}."}],
        "analysis": {"cues": ["asks a question"], "rationale": "A plain question calls for a calm, direct reply."},
        "activation": {"O": 0.0, "C": 0.5, "E": 0.0, "A": 0.0, "N": -0.5},
        "responses": {pole: f"The {pole} reply to {record_id}." for pole in POLES},
        "ideal": f"The ideal reply to {record_id}.",
        "rejected": f"The rejected reply to {record_id}.",
        "split": assign_split(record_id),
    }
    record.update(fields)
    return record


def id_with_split(prefix: str, split: str) -> str:
    """The first id ``prefix-N`` that the hash assigns to ``split``."""
    for n in count():
        if assign_split(f"{prefix}-{n}") == split:
            return f"{prefix}-{n}"
    raise AssertionError("unreachable")


def write_jsonl(path: Path, rows: list[dict | str]) -> Path:
    """Write ``rows`` one per line; a str row is written verbatim (for malformed lines)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path
