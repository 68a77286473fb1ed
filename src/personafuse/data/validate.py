"""Corpus validation: schema, completeness, duplicates, split leakage and split assignment, with line numbers."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from personafuse.data.jsonl import JsonlError, iter_jsonl
from personafuse.data.schema import SituationRecord
from personafuse.data.split import assign_split
from personafuse.traits import POLES


@dataclass
class ValidationReport:
    """Everything wrong with a corpus, plus the records that passed."""

    records: list[SituationRecord] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems


def _normalise(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def corpus_files(path: str | Path) -> list[Path]:
    """The JSONL files of ``path``: the file itself, or every ``*.jsonl`` under a folder, sorted."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.rglob("*.jsonl"))
        if not files:
            raise FileNotFoundError(f"no *.jsonl files under {path}")
        return files
    if not path.is_file():
        raise FileNotFoundError(f"no such corpus file or folder: {path}")
    return [path]


def _format_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "record"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def validate_corpus(path: str | Path) -> ValidationReport:
    """Validate every record under ``path`` and the corpus as a whole.

    Checks: JSON and schema per line; duplicate ids; duplicate user messages (same situation twice);
    identical replies reused across situations; a situation text that occurs in two splits (leakage); a
    ``split`` that differs from :func:`personafuse.data.split.assign_split` of the id (fix: ``personafuse data
    split PATH``).

    Args:
        path: a JSONL file or a folder of them.

    Returns:
        A report with the valid records and one line per problem, each naming file and line, in file and line
        order.

    Raises:
        FileNotFoundError: ``path`` does not exist, or a folder holds no ``*.jsonl``.
    """
    report = ValidationReport()
    seen_ids: dict[str, str] = {}
    seen_context: dict[str, tuple[str, str]] = {}
    seen_reply: dict[str, str] = {}
    for file in corpus_files(path):
        errors: list[JsonlError] = []
        found: list[tuple[int, str]] = []  # (line, problem) of this file, sorted at the end
        for item in iter_jsonl(file, skip_bad=True, errors=errors):
            where = f"{file}:{item.line}"
            try:
                record = SituationRecord.model_validate(item.value)
            except ValidationError as exc:
                found.append((item.line, f"{where}: {_format_error(exc)}"))
                continue
            if record.id in seen_ids:
                found.append((item.line, f"{where}: duplicate id {record.id!r} (first at {seen_ids[record.id]})"))
                continue
            seen_ids[record.id] = where
            expected = assign_split(record.id)
            if record.split != expected:
                found.append(
                    (
                        item.line,
                        f"{where}: split {record.split!r} should be {expected!r}, the split that the hash of id "
                        f"{record.id!r} assigns; fix with `personafuse data split`",
                    )
                )
            context = _normalise(record.context_text())
            if context in seen_context:
                first, split = seen_context[context]
                kind = "split leakage" if split != record.split else "duplicate situation"
                found.append((item.line, f"{where}: {kind}: same messages as {first}"))
            else:
                seen_context[context] = (where, record.split)
            for pole in POLES:
                reply = _normalise(record.responses[pole])
                if reply in seen_reply and not seen_reply[reply].startswith(where + " "):
                    found.append((item.line, f"{where}: reply {pole} duplicates {seen_reply[reply]}"))
                seen_reply.setdefault(reply, f"{where} {pole}")
            report.records.append(record)
        found.extend((e.line, str(e)) for e in errors)
        report.problems.extend(message for _, message in sorted(found, key=lambda pair: pair[0]))
    return report


def pole_distribution(records: list[SituationRecord]) -> dict[str, float]:
    """Fraction of situations in which each pole is the activated direction (|a| >= 1/3)."""
    counts: Counter[str] = Counter()
    for record in records:
        from personafuse.traits import activated_poles

        counts.update(activated_poles(record.activation))
    total = max(len(records), 1)
    return {pole: counts[pole] / total for pole in POLES}
