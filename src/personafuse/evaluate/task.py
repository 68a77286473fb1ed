"""What every evaluation task shares: its config, the result it returns, the per-item log that makes it resumable.

A task is a small dataclass, one per module (``emobench.py``, ``eqbench.py``, ...), registered by name:

    task = EmoBench.load("shared/data/emobench", limit=50, seed=0, lang="en")
    result = task.run(model, records="runs/emobench.records.jsonl")   # resumes if the file has rows
    result.save("runs/emobench.json")

Each task implements three things and nothing else: ``load`` (read the data, hash the files, pick the subset),
``process`` (ask the model about a batch of items, return one JSON row per item) and ``score`` (a pure function
from those rows to metrics). :meth:`Task.run` strings them together with progress and resume, so the model
calls and the maths can each be tested alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import platform
import random
import time
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from personafuse.errors import ConfigError, UserError

if TYPE_CHECKING:
    from personafuse.evaluate.models import EvalModel

logger = logging.getLogger(__name__)

RESULT_SCHEMA = "personafuse.eval/1"
"""Written into every result JSON; bumped when its layout changes."""

T = TypeVar("T")


class MissingDataError(UserError):
    """A data path that does not exist or lacks the file a task needs; the message names the flag and the file."""


class UnknownTaskError(UserError):
    """A task name that is not registered."""


class ResumeMismatchError(UserError):
    """A records file written by a different task, model or configuration than the run that wants to resume it."""


# ---------------------------------------------------------------------------------------------------- data files
@dataclass(frozen=True)
class DataFile:
    """One input file of a run, identified by content so a result says exactly what it was computed on."""

    path: str
    """Path as given (resolved to absolute)."""
    sha256: str
    """Hex SHA-256 of the file's bytes."""


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_file(path: str | Path) -> DataFile:
    """A :class:`DataFile` for ``path`` (absolute path + hash)."""
    path = Path(path).resolve()
    return DataFile(str(path), file_sha256(path))


def find_data_file(path: str | Path | None, expected: str, folder: str, task: str, what: str) -> Path:
    """Locate ``expected`` given the user's ``--data``: the file itself, a folder holding it, or a data root.

    Args:
        path: what the user gave (``--data``); ``None`` when omitted.
        expected: file name (or relative path) the task reads, e.g. ``"EU.jsonl"``.
        folder: the sub-folder name under a data root, e.g. ``"emobench"`` (so ``--data shared/data`` works).
        task: task name, for the message.
        what: one phrase saying what the data is and where it comes from.

    Raises:
        MissingDataError: no path given, or none of the three places holds the file.
    """
    hint = f"a folder holding {expected} ({what}), or a data root with {folder}/{expected}"
    if path is None:
        raise MissingDataError(f"task {task} needs --data PATH: {hint}")
    root = Path(path).expanduser()
    if root.is_file():
        if root.name == Path(expected).name:
            return root
        raise MissingDataError(f"--data {path} is a file but task {task} expects {expected}; give {hint}")
    for candidate in (root / expected, root / folder / expected):
        if candidate.is_file():
            return candidate
    if not root.exists():
        raise MissingDataError(f"--data {path} does not exist; task {task} needs {hint}")
    raise MissingDataError(f"--data {path} has no {expected} (nor {folder}/{expected}); task {task} needs {hint}")


def select_items(items: Sequence[T], limit: int | None, seed: int) -> list[T]:
    """The deterministic subset of a run: all items, or ``limit`` of them sampled with ``seed``, in file order.

    Sampling (rather than taking the first ``limit``) keeps small runs representative of files sorted by
    category; sorting the sample back into file order keeps records and reports readable.
    """
    if limit is None or limit >= len(items):
        return list(items)
    chosen = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in chosen]


# ---------------------------------------------------------------------------------------------------- config
@dataclass
class TaskConfig:
    """Settings every task has; each task extends it with its own typed fields."""

    limit: int | None = None
    """Evaluate at most this many items (per subset where the task says so), sampled with ``seed``."""
    seed: int = 0
    """Seed of the subset sample (and of any bootstrap); the same seed and data give the same items."""
    batch_items: int = 8
    """Items sent to the model per step: the granularity of progress and of the resumable records file."""

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError("; ".join(problems))

    def problems(self) -> list[str]:
        """Every invalid value, as messages that name the flag; subclasses extend the list."""
        out = []
        if self.limit is not None and (
            isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1
        ):
            out.append(f"--limit must be a positive whole number (or omitted for the full set), got {self.limit!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            out.append(f"--seed must be a whole number, got {self.seed!r}")
        if isinstance(self.batch_items, bool) or not isinstance(self.batch_items, int) or self.batch_items < 1:
            out.append(f"--batch-items must be a positive whole number, got {self.batch_items!r}")
        for name, hint in typing.get_type_hints(type(self)).items():
            if typing.get_origin(hint) is typing.Literal and getattr(self, name) not in typing.get_args(hint):
                allowed = ", ".join(str(a) for a in typing.get_args(hint))
                out.append(f"--{name.replace('_', '-')} must be one of {allowed}; got {getattr(self, name)!r}")
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        return dataclasses.asdict(self)


def build_config(cls: type[TaskConfig], task: str, options: dict[str, Any]) -> TaskConfig:
    """Build ``cls`` from keyword options; an option the task does not have is a :class:`ConfigError`."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - names)
    if unknown:
        known = ", ".join(sorted(names))
        raise ConfigError(f"task {task} has no option(s) {unknown}; its options are: {known}")
    return cls(**options)


# ---------------------------------------------------------------------------------------------------- result
@dataclass
class TaskResult:
    """The outcome of one task on one model: metrics plus everything needed to reproduce and compare it."""

    task: str
    """Registered task name."""
    task_version: str
    """Version of the task's prompts and scoring (EQ-Bench: ``v2``)."""
    headline: str
    """Key of the one metric a summary shows first."""
    metrics: dict[str, float]
    """Flat name -> number; accuracies in [0, 1], EQ-Bench on its 0-100 scale."""
    counts: dict[str, int]
    """Item counts: evaluated, parsed, per subset."""
    details: dict[str, Any]
    """Nested breakdowns (per category, per condition), not compared across runs."""
    config: dict[str, Any]
    """The task config as run."""
    data_files: list[dict[str, str]]
    """Path and sha256 of every input file."""
    model: dict[str, Any]
    """``EvalModel.info()``: name, mode, chat template, versions."""
    wall_s: float = 0.0
    """Seconds this call spent (a resumed run counts only its own part)."""
    records: str | None = None
    """Per-item records file, when the run wrote one."""
    schema: str = RESULT_SCHEMA
    """Layout version of this JSON."""
    versions: dict[str, str] = field(default_factory=dict)
    """personafuse, python and library versions of the process that scored it."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> Path:
        """Write the result as indented JSON (parents created); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> TaskResult:
        """Read a result JSON written by :meth:`save`.

        Raises:
            UserError: the file is missing, not JSON, or not a personafuse eval result.
        """
        path = Path(path)
        if not path.is_file():
            raise UserError(f"no such result file: {path}; give the JSON written by `personafuse eval TASK --out`")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise UserError(f"{path} is not JSON ({exc}); give a result written by `personafuse eval`") from None
        if not isinstance(raw, dict) or raw.get("schema") != RESULT_SCHEMA:
            raise UserError(f"{path} is not a personafuse eval result (schema {RESULT_SCHEMA!r} expected)")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})

    @property
    def label(self) -> str:
        """Short run label for tables: model name and mode (the probe, for tasks that compare personas inside a run)."""
        mode = self.model.get("mode")
        name = str(self.model.get("name", "model"))
        probe = self.config.get("probe")
        if probe:
            return f"{name} [probe {probe}]"
        return f"{name} [{mode}]" if mode else name


def runtime_versions() -> dict[str, str]:
    """Versions of python and the libraries a score can depend on (absent libraries are skipped)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for package in ("personafuse", "torch", "transformers", "peft", "openai"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return out


# ---------------------------------------------------------------------------------------------------- records
class RecordLog:
    """Per-item result rows in a JSONL file: the first line identifies the run, each later line is one item.

    Rows are appended as they finish (one write + fsync each, see :func:`personafuse.data.jsonl.append_jsonl`),
    so an interrupted run loses at most the batch in flight; running again with the same file skips every item
    already there. Without a path the log lives in memory.
    """

    def __init__(self, path: str | Path | None, header: dict[str, Any]) -> None:
        self.path = Path(path) if path is not None else None
        self.header = json.loads(json.dumps(header))  # compare as it reads back: tuples become lists
        self.rows: dict[str, dict[str, Any]] = {}
        if self.path is not None and self.path.exists() and self.path.stat().st_size > 0:
            self._read()
        elif self.path is not None:
            self._append({"header": header})

    def _read(self) -> None:
        from personafuse.data.jsonl import iter_jsonl

        assert self.path is not None
        lines = iter(iter_jsonl(self.path, skip_bad=True, errors=[]))
        first = next(lines, None)
        if first is None or first.value.get("header") != self.header:
            found = first.value.get("header") if first is not None else None
            raise ResumeMismatchError(
                f"records file {self.path} belongs to another run ({_header_diff(found, self.header)}); "
                "delete it to start over, or pass another --out / --records"
            )
        for line in lines:
            key = line.value.get("key")
            if isinstance(key, str):
                self.rows[key] = line.value
        with self.path.open("rb+") as handle:  # a torn last line (killed mid-write) must not swallow the next row
            handle.seek(-1, 2)
            if handle.read(1) != b"\n":
                handle.write(b"\n")

    def _append(self, row: dict[str, Any]) -> None:
        from personafuse.data.jsonl import append_jsonl

        if self.path is not None:
            append_jsonl(self.path, row)

    def add(self, rows: Sequence[dict[str, Any]]) -> None:
        """Record finished items (each row has a unique string ``key``)."""
        for row in rows:
            self.rows[row["key"]] = row
            self._append(row)


def _header_diff(found: Any, wanted: dict[str, Any]) -> str:
    if not isinstance(found, dict):
        return "no header line"
    diffs = [f"{k}: {found.get(k)!r} there vs {wanted.get(k)!r} now" for k in wanted if found.get(k) != wanted.get(k)]
    return "; ".join(diffs)[:400] or "different header"


# ---------------------------------------------------------------------------------------------------- progress
@contextlib.contextmanager
def _progress(total: int, description: str, enabled: bool) -> Iterator[Callable[[int], None]]:
    """Yield an ``advance(n)`` callback that drives a rich progress bar on stderr (a no-op when disabled)."""
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        handle = bar.add_task(escape(description), total=total)
        yield lambda n: bar.advance(handle, n)


# ---------------------------------------------------------------------------------------------------- task
class Task(ABC):
    """One benchmark: items loaded from data files, a model-facing ``process`` step and a pure ``score``."""

    name: ClassVar[str]
    """Registered name (``personafuse eval NAME``)."""
    version: ClassVar[str] = "1"
    """Version of prompts + scoring; stored in results so changed tasks are not compared silently."""
    config_class: ClassVar[type[TaskConfig]] = TaskConfig
    """The task's typed options."""

    def __init__(self, config: TaskConfig, items: Sequence[Any], files: Sequence[DataFile]) -> None:
        self.config = config
        self.items = list(items)
        self.files = list(files)
        keys = [self.key(item) for item in self.items]
        if len(set(keys)) != len(keys):
            raise ValueError(f"{self.name}: item keys are not unique")

    @classmethod
    @abstractmethod
    def load(cls, path: str | Path | None, limit: int | None = None, seed: int = 0, **options: Any) -> Task:
        """Read the data at ``path``, hash it and select the subset; ``options`` are the task's config fields."""

    @staticmethod
    @abstractmethod
    def key(item: Any) -> str:
        """Stable unique id of an item (the records-file key)."""

    @abstractmethod
    def process(self, model: EvalModel, items: Sequence[Any]) -> list[dict[str, Any]]:
        """Ask ``model`` about ``items``; one JSON-ready row per item, each with ``key`` = :meth:`key`."""

    @abstractmethod
    def score(self, rows: Sequence[dict[str, Any]]) -> tuple[dict[str, float], dict[str, int], dict[str, Any]]:
        """Metrics, counts and details from the rows of every item (pure: no model, no I/O)."""

    headline: ClassVar[str] = "accuracy"
    """Metric a one-line summary shows."""

    def check_model(self, model: EvalModel) -> None:
        """Raise a :class:`UserError` when ``model`` cannot run this task as configured (before any work)."""
        return None

    def run(self, model: EvalModel, records: str | Path | None = None, progress: bool = False) -> TaskResult:
        """Evaluate ``model`` on every item not already in ``records``, then score all of them.

        Args:
            model: what is evaluated (any :class:`~personafuse.evaluate.models.EvalModel`).
            records: per-item JSONL to append to and resume from; ``None`` keeps rows in memory.
            progress: show a progress bar on stderr.

        Raises:
            ResumeMismatchError: ``records`` was written by a different task, model or config.
        """
        self.check_model(model)
        started = time.perf_counter()
        log = RecordLog(records, self.fingerprint(model))
        todo = [item for item in self.items if self.key(item) not in log.rows]
        if len(todo) < len(self.items):
            logger.info("%s: resuming, %d of %d items already in %s", self.name, len(self.items) - len(todo),
                        len(self.items), records)  # fmt: skip
        step = self.config.batch_items
        with _progress(len(todo), f"{self.name} · {model.name}", progress) as advance:
            for start in range(0, len(todo), step):
                batch = todo[start : start + step]
                rows = self.process(model, batch)
                if [r["key"] for r in rows] != [self.key(i) for i in batch]:
                    raise RuntimeError(f"{self.name}.process returned rows that do not match its items")
                log.add(rows)
                advance(len(batch))
        rows = [log.rows[self.key(item)] for item in self.items]
        metrics, counts, details = self.score(rows)
        return TaskResult(
            task=self.name,
            task_version=self.version,
            headline=self.headline,
            metrics=metrics,
            counts=counts,
            details=details,
            config=self.config.to_dict(),
            data_files=[dataclasses.asdict(f) for f in self.files],
            model=model.info(),
            wall_s=round(time.perf_counter() - started, 3),
            records=str(records) if records is not None else None,
            versions=runtime_versions(),
        )

    def fingerprint(self, model: EvalModel) -> dict[str, Any]:
        """What a records file must match to be resumed: task, version, model (name, mode, adapter), config, data."""
        config = {k: v for k, v in self.config.to_dict().items() if k != "batch_items"}
        info = model.info()
        return {
            "task": self.name,
            "version": self.version,
            "model": model.name,
            "mode": info.get("mode"),
            "adapter": info.get("adapter"),
            "config": config,
            "data": sorted(f.sha256 for f in self.files),
        }


# ---------------------------------------------------------------------------------------------------- registry
TASKS: dict[str, type[Task]] = {}
"""Registered task classes by name; filled by :func:`register_task` when the task modules are imported."""


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator that adds a task to :data:`TASKS` under ``cls.name``."""
    if cls.name in TASKS and TASKS[cls.name] is not cls:
        raise ValueError(f"task name {cls.name!r} is already registered by {TASKS[cls.name].__qualname__}")
    TASKS[cls.name] = cls
    return cls


def get_task(name: str) -> type[Task]:
    """The task class registered as ``name``.

    Raises:
        UnknownTaskError: no such task; the message lists the registered ones.
    """
    import personafuse.evaluate  # noqa: F401  (registers the built-in tasks)

    try:
        return TASKS[name]
    except KeyError:
        raise UnknownTaskError(f"unknown eval task {name!r}; use one of: {', '.join(sorted(TASKS))}") from None
