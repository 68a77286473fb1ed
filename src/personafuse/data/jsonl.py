"""JSONL reading with line numbers and atomic/append-safe writing.

Why hand-written: `datasets` loads JSONL but stops at the first bad line without its number; the CLI needs
to report every bad line and optionally continue, and writers must never leave a half-written file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class JsonlError(ValueError):
    """A JSONL line that cannot be read; carries the path and 1-based line number."""

    def __init__(self, path: str | Path, line: int, reason: str) -> None:
        super().__init__(f"{path}:{line}: {reason}")
        self.path = str(path)
        self.line = line
        self.reason = reason


@dataclass(frozen=True)
class JsonlLine:
    """One parsed object and where it came from."""

    line: int
    value: dict[str, Any]


def iter_jsonl(path: str | Path, *, skip_bad: bool = False, errors: list[JsonlError] | None = None) -> Iterator[JsonlLine]:
    """Yield the JSON objects of ``path`` with their line numbers; blank lines are skipped.

    Args:
        path: the file.
        skip_bad: on a malformed line, record it in ``errors`` and continue instead of raising.
        errors: list that collects skipped-line errors when ``skip_bad`` is set.

    Raises:
        FileNotFoundError: the file does not exist.
        JsonlError: a malformed line, when ``skip_bad`` is false.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such JSONL file: {path}")
    with path.open(encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                value = json.loads(raw)
                if not isinstance(value, dict):
                    raise ValueError(f"expected a JSON object, got {type(value).__name__}")
            except ValueError as exc:
                error = JsonlError(path, number, f"not a JSON object ({exc})")
                if not skip_bad:
                    raise error from None
                if errors is not None:
                    errors.append(error)
                continue
            yield JsonlLine(number, value)


def write_jsonl_atomic(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write all ``rows`` to ``path`` through a temp file in the same folder, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a corpus file is meant to be readable like any other
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def append_jsonl(path: str | Path, row: dict[str, Any]) -> None:
    """Append one row as a single ``write`` + fsync, so a crash loses at most this row, never corrupts others.

    A torn last line (power loss mid-write) is skipped by readers with ``skip_bad=True`` on resume.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
