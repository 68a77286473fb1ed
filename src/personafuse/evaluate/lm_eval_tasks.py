"""Offline lm-eval-harness task folders for GSM8K and MMLU, built from the user's data files.

lm-eval's stock ``gsm8k`` and ``mmlu`` tasks download ``openai/gsm8k`` and ``cais/mmlu`` from the HF hub. The
YAMLs shipped in ``personafuse/evaluate/lm_eval_tasks/`` are those stock tasks (same prompts, few-shot splits,
filters and metrics) with ``dataset_path: json``. :func:`prepare_task_folder` copies them into a folder, fills
each ``dataset_kwargs.data_files`` with the user's files, and returns the folder for
``TaskManager(include_path=folder, include_defaults=False)``:

- ``gsm8k``: ``test.jsonl`` and ``train.jsonl`` (github.com/openai/grade-school-math) are read as they are: they
  have the hub dataset's ``{question, answer}`` fields.
- ``mmlu``: the hendrycks/test CSVs (``test/<subject>_test.csv``, ``dev/<subject>_dev.csv``) are converted into
  JSONL in the cais/mmlu schema (``{question, subject, choices, answer}``, answer = option index), one file per
  subject and split, so the stock ``doc_to_text`` runs unchanged. One ``mmlu_<subject>`` task per subject, the
  four category groups and the ``mmlu`` group, as in lm-eval.

The data path is always an argument; nothing is downloaded and nothing is copied into the repository.
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from personafuse.errors import UserError
from personafuse.evaluate.task import DataFile, MissingDataError, data_file, find_data_file

TEMPLATES = Path(__file__).with_name("lm_eval_tasks")
"""The shipped YAMLs (stock lm-eval tasks with ``dataset_path: json``)."""

MMLU_GROUPS = ("mmlu", "mmlu_stem", "mmlu_other", "mmlu_social_sciences", "mmlu_humanities")
"""The MMLU groups: everything, and lm-eval's four categories."""

TASK_HELP = "gsm8k, mmlu, mmlu_stem | mmlu_other | mmlu_social_sciences | mmlu_humanities, mmlu_<subject>"


class UnknownLmEvalTaskError(UserError):
    """A ``--tasks`` name that the offline task folder does not define."""


@dataclass
class TaskFolder:
    """A prepared include folder: what lm-eval loads, and the data it reads."""

    path: Path
    """The folder to pass as ``TaskManager(include_path=...)``."""
    tasks: list[str]
    """Task and group names, as given."""
    data_files: list[DataFile] = field(default_factory=list)
    """Path and sha256 of every source file read (MMLU: one hash per split folder, as the native task)."""


def mmlu_subjects() -> dict[str, str]:
    """Subject -> category (``stem``, ``other``, ``social_sciences``, ``humanities``) of lm-eval's MMLU."""
    return yaml.safe_load((TEMPLATES / "mmlu" / "subjects.yaml").read_text(encoding="utf-8"))


def parse_tasks(text: str) -> list[str]:
    """``--tasks gsm8k,mmlu`` -> names, each checked.

    Raises:
        UnknownLmEvalTaskError: an empty list or a name that is not defined; the message lists the valid ones.
    """
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise UnknownLmEvalTaskError(f"--tasks is empty; give a comma-separated list of: {TASK_HELP}")
    subjects = mmlu_subjects()
    unknown = [n for n in names if n != "gsm8k" and n not in MMLU_GROUPS and n.removeprefix("mmlu_") not in subjects]
    if unknown:
        raise UnknownLmEvalTaskError(
            f"--tasks {','.join(unknown)}: unknown; use {TASK_HELP} (subjects: {', '.join(sorted(subjects))})"
        )
    return list(dict.fromkeys(names))


def prepare_task_folder(tasks: list[str], data: str | Path | None, folder: str | Path) -> TaskFolder:
    """Write the task YAMLs (and MMLU's converted JSONL) for ``tasks`` into ``folder``, reading ``data``.

    Args:
        tasks: names from :func:`parse_tasks`.
        data: ``--data``: a data root holding ``gsm8k/`` and ``mmlu/``, or the one task's own folder.
        folder: an empty or new folder (e.g. a temporary directory) that lm-eval will scan.

    Raises:
        MissingDataError: a task's files are not under ``data``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = TaskFolder(folder, list(tasks))
    if "gsm8k" in tasks:
        out.data_files += _write_gsm8k(data, folder)
    subjects = _wanted_subjects(tasks)
    if subjects:
        out.data_files += _write_mmlu(data, subjects, any(t in MMLU_GROUPS for t in tasks), folder)
    return out


def _write_gsm8k(data: str | Path | None, folder: Path) -> list[DataFile]:
    what = "GSM8K test.jsonl + train.jsonl from github.com/openai/grade-school-math"
    test = find_data_file(data, "test.jsonl", "gsm8k", "gsm8k", what).resolve()
    train = test.with_name("train.jsonl")
    if not train.is_file():
        raise MissingDataError(f"lm-eval's gsm8k takes its few-shot examples from train.jsonl; none beside {test}")
    config = yaml.safe_load((TEMPLATES / "gsm8k.yaml").read_text(encoding="utf-8"))
    config["dataset_kwargs"] = {"data_files": {"train": str(train), "test": str(test)}, "cache_dir": _cache(folder)}
    (folder / "gsm8k.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return [data_file(test), data_file(train)]


def _cache(folder: Path) -> str:
    """The HF datasets cache of this folder's tasks (inside it, so a temporary folder leaves nothing behind)."""
    return str((folder / "hf_datasets_cache").resolve())


def _wanted_subjects(tasks: list[str]) -> list[str]:
    subjects = mmlu_subjects()
    wanted: list[str] = []
    for name in tasks:
        if name == "mmlu":
            wanted += sorted(subjects)
        elif name in MMLU_GROUPS:
            category = name.removeprefix("mmlu_")
            wanted += sorted(s for s, c in subjects.items() if c == category)
        elif name != "gsm8k":
            wanted.append(name.removeprefix("mmlu_"))
    return list(dict.fromkeys(wanted))


def _mmlu_root(data: str | Path | None) -> Path:
    what = "the MMLU CSVs (test/, dev/) from github.com/hendrycks/test"
    if data is None:
        raise MissingDataError(f"mmlu needs --data PATH: a data root holding mmlu/, or {what}")
    root = Path(data).expanduser()
    for candidate in (root, root / "mmlu"):
        if (candidate / "test").is_dir() and (candidate / "dev").is_dir():
            return candidate
    if not root.exists():
        raise MissingDataError(f"--data {data} does not exist; mmlu needs {what}")
    raise MissingDataError(f"--data {data} has no test/ and dev/ folders (nor mmlu/test, mmlu/dev); mmlu needs {what}")


def _read_mmlu_csv(path: Path, subject: str) -> list[dict]:
    """hendrycks/test CSV rows (question, A, B, C, D, letter) in the cais/mmlu schema."""
    with path.open(encoding="utf-8", newline="") as handle:
        rows = [row for row in csv.reader(handle) if len(row) == 6]  # the native task keeps the same rows
    return [{"question": r[0], "subject": subject, "choices": r[1:5], "answer": "ABCD".index(r[5].strip())}
            for r in rows]  # fmt: skip


def _write_mmlu(data: str | Path | None, subjects: list[str], groups: bool, folder: Path) -> list[DataFile]:
    from personafuse.evaluate.general import tree_file

    root = _mmlu_root(data)
    categories = mmlu_subjects()
    files = {split: [root / split / f"{s}_{split}.csv" for s in subjects] for split in ("test", "dev")}
    missing = [str(p) for split in files.values() for p in split if not p.is_file()]
    if missing:
        raise MissingDataError(f"--data {data}: the mmlu tasks asked for need {', '.join(missing[:3])}"
                               f"{f' and {len(missing) - 3} more' if len(missing) > 3 else ''}")  # fmt: skip
    target = folder / "mmlu"
    target.mkdir(exist_ok=True)
    shutil.copy(TEMPLATES / "mmlu" / "_default_template_yaml", target / "_default_template_yaml")
    if groups:
        for name in MMLU_GROUPS:
            shutil.copy(TEMPLATES / "mmlu" / f"_{name}.yaml", target / f"_{name}.yaml")
    for subject in subjects:
        data_files = {}
        for split in ("test", "dev"):
            jsonl = target / f"{subject}_{split}.jsonl"
            rows = _read_mmlu_csv(root / split / f"{subject}_{split}.csv", subject)
            jsonl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
            data_files[split] = str(jsonl.resolve())
        config = {
            "dataset_kwargs": {"data_files": data_files, "cache_dir": _cache(folder)},
            "description": f"The following are multiple choice questions (with answers) about "
            f"{subject.replace('_', ' ')}.\n\n",
            "tag": f"mmlu_{categories[subject]}_tasks",
            "include": "_default_template_yaml",
            "task": f"mmlu_{subject}",
            "task_alias": subject,
        }
        (target / f"mmlu_{subject}.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return [tree_file(root / split, paths) for split, paths in files.items()]
