"""The texts of the public evaluation sets, for the contamination check (`personafuse data contamination`).

One small loader per set, each reading the files exactly as they are laid out in ``../shared/data/<set>/``
(see each folder's SOURCE.md), registered by name in :data:`EVAL_SETS`. A loader returns every distinct
situation-like text of its set with where it came from, so a reported pair can be looked up by hand.

What is taken from each set (what a seed situation or reply could have been copied from):

| set | texts |
|---|---|
| emobench | EU.jsonl and EA.jsonl ``scenario`` (English rows; the Chinese rows translate them) |
| eq_bench | the dialogue of each v2 item (v1 too when present), without the task instructions |
| socialiqa | dev.jsonl ``context`` |
| tomi | test.jsonl ``story`` |
| counsel_chat | the csv's ``questionText`` and ``answerText`` |
| esconv | FailedESConv.json ``situation`` and dialog turns, and every turn of the *WithStrategy_short.tsv files |
| empathetic_dialogues | every utterance of valid.csv / test.csv (the prompts are not in these files), detokenised |
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["EVAL_SETS", "EvalText", "load_eval_set", "shared_eval_sets"]


@dataclass(frozen=True)
class EvalText:
    """One text of an evaluation set and where it is: ``"EU.jsonl:12"``, ``"test.csv row 40"``."""

    text: str
    where: str


EvalLoader = Callable[[Path], list[EvalText]]


def _distinct(items: Iterable[EvalText]) -> list[EvalText]:
    """Drop blank texts and repeats (first occurrence kept); whitespace is collapsed."""
    seen: set[str] = set()
    out = []
    for item in items:
        text = " ".join(item.text.split())
        if text and text not in seen:
            seen.add(text)
            out.append(EvalText(text, item.where))
    return out


def _need(folder: Path, *names: str) -> list[Path]:
    """The files ``names`` of ``folder`` that exist; raises when none does."""
    files = [folder / name for name in names if (folder / name).is_file()]
    if not files:
        raise FileNotFoundError(f"none of {', '.join(names)} found in {folder}; point at the set's folder")
    return files


def _jsonl_rows(path: Path) -> Iterable[tuple[int, dict]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield number, json.loads(line)


def load_emobench(folder: Path) -> list[EvalText]:
    """EmoBench EU + EA scenarios, English rows only."""
    return _distinct(
        EvalText(row["scenario"], f"{path.name}:{number}")
        for path in _need(folder, "EU.jsonl", "EA.jsonl")
        for number, row in _jsonl_rows(path)
        if row.get("language", "en") == "en" and isinstance(row.get("scenario"), str)
    )


_EQ_DIALOGUE = re.compile(r"dialogue:\s*\n(.*?)\[End dialogue\]", re.S)


def load_eq_bench(folder: Path) -> list[EvalText]:
    """EQ-Bench dialogues (the part of each prompt between the task line and ``[End dialogue]``)."""
    items = []
    for path in _need(folder, "eq_bench_v2_questions_171.json", "eq_bench_v1_questions_60.json"):
        for key, item in json.loads(path.read_text(encoding="utf-8")).items():
            match = _EQ_DIALOGUE.search(item["prompt"])
            items.append(EvalText(match.group(1) if match else item["prompt"], f"{path.name}[{key}]"))
    return _distinct(items)


def load_socialiqa(folder: Path) -> list[EvalText]:
    """Social IQa dev contexts."""
    return _distinct(
        EvalText(row["context"], f"dev.jsonl:{number}") for number, row in _jsonl_rows(*_need(folder, "dev.jsonl"))
    )


def load_tomi(folder: Path) -> list[EvalText]:
    """ToMi test stories."""
    return _distinct(
        EvalText(row["story"], f"test.jsonl:{number}") for number, row in _jsonl_rows(*_need(folder, "test.jsonl"))
    )


def load_counsel_chat(folder: Path) -> list[EvalText]:
    """CounselChat questions (``questionText``) and therapist answers (``answerText``)."""
    (path,) = _need(folder, "20200325_counsel_chat.csv")
    items = []
    with path.open(encoding="utf-8", newline="") as handle:
        for number, row in enumerate(csv.DictReader(handle), start=1):
            for column in ("questionText", "answerText"):
                items.append(EvalText(row.get(column) or "", f"{path.name} row {number} {column}"))
    return _distinct(items)


# "<score> <speaker 0|1> <turn index> [Strategy] text" -- one turn of the ESConv *WithStrategy_short.tsv lines.
_ESCONV_TURN = re.compile(r"^\s*[-\d.]+ [01] \d+ (?:\[[^\]]*\] )?(.*)$", re.S)


def load_esconv(folder: Path) -> list[EvalText]:
    """ESConv: FailedESConv.json situations and turns, and the turns of the *WithStrategy_short.tsv files."""
    files = _need(folder, "FailedESConv.json", "devWithStrategy_short.tsv", "testWithStrategy_short.tsv")
    items = []
    for path in files:
        if path.suffix == ".json":
            for i, conversation in enumerate(json.loads(path.read_text(encoding="utf-8"))):
                items.append(EvalText(conversation.get("situation") or "", f"{path.name}[{i}].situation"))
                for j, turn in enumerate(conversation.get("dialog", [])):
                    items.append(EvalText(turn.get("content") or "", f"{path.name}[{i}].dialog[{j}]"))
            continue
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                for k, turn in enumerate(line.rstrip("\r\n").split(" EOS ")):
                    match = _ESCONV_TURN.match(turn)
                    items.append(EvalText(match.group(1) if match else turn, f"{path.name}:{number} turn {k}"))
    return _distinct(items)


_ED_CLITIC = re.compile(r" (n't|'s|'re|'m|'ve|'ll|'d)\b", re.I)
_ED_PUNCT = re.compile(r" ([.,!?;:])")


def detokenize_ed(text: str) -> str:
    """Undo EmpatheticDialogues' tokenisation: ``"we do n't know ."`` -> ``"we don't know."``."""
    return _ED_PUNCT.sub(r"\1", _ED_CLITIC.sub(r"\1", text.replace("_comma_", ",")))


def load_empathetic_dialogues(folder: Path) -> list[EvalText]:
    """EmpatheticDialogues utterances of valid.csv and test.csv (each conversation repeats as prefixes)."""
    items = []
    for path in _need(folder, "valid.csv", "test.csv"):
        with path.open(encoding="utf-8", newline="") as handle:
            for number, row in enumerate(csv.DictReader(handle), start=1):
                items.append(EvalText(detokenize_ed(row.get("text") or ""), f"{path.name} row {number}"))
    return _distinct(items)


EVAL_SETS: dict[str, EvalLoader] = {
    "emobench": load_emobench,
    "eq_bench": load_eq_bench,
    "socialiqa": load_socialiqa,
    "tomi": load_tomi,
    "counsel_chat": load_counsel_chat,
    "esconv": load_esconv,
    "empathetic_dialogues": load_empathetic_dialogues,
}
"""Set name -> loader of its folder; the names are the folder names of ``../shared/data``."""


def load_eval_set(name: str, folder: str | Path) -> list[EvalText]:
    """The texts of evaluation set ``name`` read from ``folder``.

    Args:
        name: a key of :data:`EVAL_SETS`.
        folder: the set's folder, laid out as in ``../shared/data/<name>``.

    Returns:
        Distinct non-blank texts with their locations.

    Raises:
        UserError: ``name`` is not a known set.
        FileNotFoundError: the folder or its files are missing.
    """
    from personafuse.errors import UserError

    if name not in EVAL_SETS:
        raise UserError(f"unknown evaluation set {name!r}; known sets: {', '.join(EVAL_SETS)}")
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder for evaluation set {name!r}: {folder}")
    return EVAL_SETS[name](folder)


def shared_eval_sets(root: str | Path) -> dict[str, Path]:
    """The known sets present in a folder laid out like ``../shared/data``: name -> its folder.

    Raises:
        FileNotFoundError: ``root`` is not a folder, or holds none of the known sets.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no such folder: {root} (--against-shared wants a folder like ../shared/data)")
    found = {name: root / name for name in EVAL_SETS if (root / name).is_dir()}
    if not found:
        raise FileNotFoundError(f"{root} holds none of the evaluation sets {', '.join(EVAL_SETS)}")
    return found
