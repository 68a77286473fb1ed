"""General ability, to check that personas cost no reasoning or knowledge: GSM8K and MMLU, natively.

- ``gsm8k`` (Cobbe et al. 2021): greedy chain-of-thought reply, exact match of the final number. The final
  number is the one after the last "The answer is" (what the prompt asks for), else after "####", else the last
  number in the reply; "$1,234.50" and "1234.5" are equal.
- ``mmlu`` (Hendrycks et al. 2021): four-option multiple choice by the log-likelihood of the answer letter
  (zero-shot by default; ``--fewshot k`` prepends k dev examples as earlier chat turns), or generate-then-parse
  for endpoints. Micro accuracy over the sampled questions, plus per-subject accuracy.

lm-eval-harness is the reference implementation for both; these native versions exist so that PersonaFuse's
modes (routed, uniform, pole:...) can be scored without a server, and use the same chat rendering as every other
task here. Their numbers are not directly comparable to lm-eval's few-shot, non-chat prompts.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

from personafuse.evaluate.choice import ChoiceQuestion, Scoring, choose, format_options, resolve_scoring
from personafuse.evaluate.task import (
    DataFile,
    MissingDataError,
    Task,
    TaskConfig,
    build_config,
    data_file,
    file_sha256,
    find_data_file,
    register_task,
    select_items,
)

# ---------------------------------------------------------------------------------------------------- GSM8K
_GSM8K_WHAT = "GSM8K test.jsonl from github.com/openai/grade-school-math"
_GSM8K_ASK = 'Solve the problem step by step, then give the final answer on the last line as "The answer is N".'
_NUMBER = r"-?\$?\d[\d,]*(?:\.\d+)?"


def normalize_number(text: str) -> Decimal | None:
    """``"$1,234.50"`` -> ``Decimal("1234.5")``; ``None`` when ``text`` is not a number."""
    cleaned = text.replace("$", "").replace(",", "").replace(" ", "").rstrip(".")
    try:
        return Decimal(cleaned).normalize()
    except InvalidOperation:
        return None


def extract_final_number(reply: str) -> str | None:
    """The final numeric answer of a reply: after the last "The answer is", else after "####", else the last number."""
    for marker in (r"answer is[:\s]*", r"####\s*"):
        hits = list(re.finditer(marker + f"({_NUMBER})", reply, re.IGNORECASE))
        if hits:
            return hits[-1].group(1)
    numbers = re.findall(_NUMBER, reply)
    return numbers[-1] if numbers else None


def gsm8k_gold(answer: str) -> str:
    """The reference answer: the text after ``#### `` in GSM8K's ``answer`` field, commas removed."""
    return answer.split("####")[-1].strip().replace(",", "")


def is_correct(pred: str | None, gold: str) -> bool:
    """Numeric equality of a predicted and a gold answer (``None`` is wrong)."""
    if pred is None:
        return False
    a, b = normalize_number(pred), normalize_number(gold)
    return a is not None and a == b


@dataclass
class GSM8KConfig(TaskConfig):
    """Options of the ``gsm8k`` task."""

    fewshot: int = 0
    """Worked examples (from train.jsonl beside test.jsonl) shown first as chat turns."""
    max_new_tokens: int = 256
    """Reply length (chain of thought + answer)."""

    def problems(self) -> list[str]:
        """See :meth:`TaskConfig.problems`."""
        out = super().problems()
        if not 0 <= self.fewshot <= 8:
            out.append(f"--fewshot must be between 0 and 8, got {self.fewshot}")
        if self.max_new_tokens < 1:
            out.append(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        return out


@dataclass(frozen=True)
class MathItem:
    """One GSM8K problem."""

    key: str
    question: str
    gold: str


def _shot(row: dict[str, Any]) -> list[dict[str, str]]:
    worked = re.sub(r"<<[^>]*>>", "", row["answer"].split("####")[0]).strip()  # drop calculator annotations
    return [{"role": "user", "content": f"{row['question']}\n\n{_GSM8K_ASK}"},
            {"role": "assistant", "content": f"{worked}\nThe answer is {gsm8k_gold(row['answer'])}."}]  # fmt: skip


@register_task
class GSM8K(Task):
    """GSM8K exact match of the final number."""

    name = "gsm8k"
    config_class = GSM8KConfig
    headline = "accuracy"
    config: GSM8KConfig

    def __init__(self, config: GSM8KConfig, items: Sequence[MathItem], files: Sequence[DataFile],
                 shots: Sequence[dict[str, str]] = ()) -> None:  # fmt: skip
        super().__init__(config, items, files)
        self.shots = list(shots)

    @classmethod
    def load(cls, path: str | Path | None, limit: int | None = None, seed: int = 0, **options: Any) -> GSM8K:
        """Read ``test.jsonl`` under ``path`` (and ``train.jsonl`` for few-shot examples).

        Raises:
            MissingDataError: the files are not there.
        """
        from personafuse.data.jsonl import iter_jsonl

        config = build_config(GSM8KConfig, cls.name, {"limit": limit, "seed": seed, **options})
        found = find_data_file(path, "test.jsonl", "gsm8k", cls.name, _GSM8K_WHAT)
        items = [MathItem(f"gsm8k-{line.line}", line.value["question"], gsm8k_gold(line.value["answer"]))
                 for line in iter_jsonl(found)]  # fmt: skip
        files = [data_file(found)]
        shots: list[dict[str, str]] = []
        if config.fewshot:
            train = found.with_name("train.jsonl")
            if not train.is_file():
                raise MissingDataError(f"--fewshot {config.fewshot} needs train.jsonl beside {found}")
            files.append(data_file(train))
            for line in iter_jsonl(train):
                shots.extend(_shot(line.value))
                if len(shots) == 2 * config.fewshot:
                    break
        return cls(config, select_items(items, config.limit, config.seed), files, shots)

    @staticmethod
    def key(item: MathItem) -> str:
        """``gsm8k-<line>``."""
        return item.key

    def process(self, model: Any, items: Sequence[MathItem]) -> list[dict[str, Any]]:
        """Generate a worked answer per problem and extract its final number."""
        convs = [self.shots + [{"role": "user", "content": f"{i.question}\n\n{_GSM8K_ASK}"}] for i in items]
        replies = model.generate(convs, self.config.max_new_tokens)
        rows = []
        for item, reply in zip(items, replies):
            pred = extract_final_number(reply)
            rows.append({"key": item.key, "prompt": item.question, "reply": reply, "pred": pred, "gold": item.gold,
                         "correct": is_correct(pred, item.gold)})  # fmt: skip
        return rows

    def score(self, rows: Sequence[dict[str, Any]]) -> tuple[dict[str, float], dict[str, int], dict[str, Any]]:
        """Exact-match accuracy and the share of replies with any number."""
        n = len(rows)
        right = sum(bool(r["correct"]) for r in rows)
        parsed = sum(r["pred"] is not None for r in rows)
        metrics = {"accuracy": round(right / n, 6) if n else 0.0, "parse_rate": round(parsed / n, 6) if n else 0.0}
        return metrics, {"items": n, "correct": right, "parsed": parsed}, {"fewshot": self.config.fewshot}


# ---------------------------------------------------------------------------------------------------- MMLU
_MMLU_WHAT = "MMLU CSVs (test/, dev/, val/) from github.com/hendrycks/test"


@dataclass
class MMLUConfig(TaskConfig):
    """Options of the ``mmlu`` task."""

    split: Literal["test", "val"] = "test"
    """Which split's questions to ask."""
    subjects: str = "all"
    """Comma-separated subject names (CSV stems without the split, e.g. high_school_psychology), or all."""
    fewshot: int = 0
    """Examples per subject from dev/ shown first as chat turns (0..5)."""
    scoring: Scoring = "auto"
    """loglik (letter log-likelihood), generate (parse the letter), or auto."""
    max_new_tokens: int = 8
    """Reply length for generate-then-parse."""

    def problems(self) -> list[str]:
        """See :meth:`TaskConfig.problems`."""
        out = super().problems()
        if not 0 <= self.fewshot <= 5:
            out.append(f"--fewshot must be between 0 and 5 (dev has 5 per subject), got {self.fewshot}")
        return out


@dataclass(frozen=True)
class MMLUItem:
    """One MMLU question."""

    key: str
    subject: str
    question: ChoiceQuestion = field(repr=False)


def _mmlu_root(path: str | Path | None, split: str) -> Path:
    if path is None:
        raise MissingDataError(f"task mmlu needs --data PATH: a folder holding {split}/*.csv ({_MMLU_WHAT})")
    root = Path(path).expanduser()
    for candidate in (root, root / "mmlu"):
        if (candidate / split).is_dir() and any((candidate / split).glob(f"*_{split}.csv")):
            return candidate
    raise MissingDataError(
        f"--data {path} has no {split}/*_{split}.csv (nor mmlu/{split}/); task mmlu needs {_MMLU_WHAT}"
    )


def _read_csv(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return [row for row in csv.reader(handle) if len(row) == 6]


def tree_file(folder: Path, files: Sequence[Path]) -> DataFile:
    """One :class:`DataFile` for many files: sha256 over the sorted ``name sha256`` lines of each."""
    lines = "".join(f"{p.name} {file_sha256(p)}\n" for p in sorted(files))
    return DataFile(str(folder.resolve()), hashlib.sha256(lines.encode()).hexdigest())


def _mmlu_messages(subject: str, row: Sequence[str]) -> str:
    title = subject.replace("_", " ")
    return (f"The following is a multiple choice question about {title}.\n\n{row[0]}\n"
            f"{format_options(row[1:5], '{letter}. {text}')}\n\nAnswer with the letter of the correct option.")  # fmt: skip


@register_task
class MMLU(Task):
    """MMLU accuracy by answer-letter log-likelihood (or generate-then-parse)."""

    name = "mmlu"
    config_class = MMLUConfig
    headline = "accuracy"
    config: MMLUConfig

    @classmethod
    def load(cls, path: str | Path | None, limit: int | None = None, seed: int = 0, **options: Any) -> MMLU:
        """Read ``<split>/*.csv`` (and ``dev/`` for few-shot) under ``path``; ``limit`` counts questions overall.

        Raises:
            MissingDataError: no CSVs there, or an unknown subject.
        """
        config = build_config(MMLUConfig, cls.name, {"limit": limit, "seed": seed, **options})
        root = _mmlu_root(path, config.split)
        available = {p.name[: -len(f"_{config.split}.csv")]: p for p in sorted((root / config.split).glob("*.csv"))}
        wanted = sorted(available) if config.subjects == "all" else [s.strip() for s in config.subjects.split(",")]
        unknown = [s for s in wanted if s not in available]
        if unknown:
            raise MissingDataError(f"--subjects {unknown} not in {root / config.split}; known: {', '.join(available)}")
        used = [available[s] for s in wanted]
        files = [tree_file(root / config.split, used)]
        items = []
        dev_used = []
        for subject in wanted:
            shots: list[dict[str, str]] = []
            if config.fewshot:
                dev = root / "dev" / f"{subject}_dev.csv"
                if not dev.is_file():
                    raise MissingDataError(f"--fewshot needs {dev}")
                dev_used.append(dev)
                for row in _read_csv(dev)[: config.fewshot]:
                    shots += [{"role": "user", "content": _mmlu_messages(subject, row)},
                              {"role": "assistant", "content": row[5].strip()}]  # fmt: skip
            for index, row in enumerate(_read_csv(available[subject])):
                messages = shots + [{"role": "user", "content": _mmlu_messages(subject, row)}]
                question = ChoiceQuestion(messages, tuple(row[1:5]), "ABCD".index(row[5].strip()))
                items.append(MMLUItem(f"{subject}-{index}", subject, question))
        if dev_used:
            files.append(tree_file(root / "dev", dev_used))
        return cls(config, select_items(items, config.limit, config.seed), files)

    @staticmethod
    def key(item: MMLUItem) -> str:
        """``<subject>-<row index>``."""
        return item.key

    def check_model(self, model: Any) -> None:
        """Fail early when ``--scoring loglik`` meets an endpoint."""
        resolve_scoring(self.config.scoring, model)

    def process(self, model: Any, items: Sequence[MMLUItem]) -> list[dict[str, Any]]:
        """Answer the questions in one batched call."""
        scoring = resolve_scoring(self.config.scoring, model)
        answers = choose(model, [i.question for i in items], scoring, "letter", self.config.max_new_tokens)
        rows = []
        for item, answer in zip(items, answers):
            row = {"key": item.key, "subject": item.subject, "gold": item.question.gold, "pred": answer.pred,
                   "scoring": scoring}  # fmt: skip
            if answer.reply is not None:
                row["reply"] = answer.reply
            rows.append(row)
        return rows

    def score(self, rows: Sequence[dict[str, Any]]) -> tuple[dict[str, float], dict[str, int], dict[str, Any]]:
        """Micro accuracy, macro accuracy over subjects, parse rate; per-subject accuracy in details."""
        by_subject: dict[str, list[bool]] = defaultdict(list)
        for row in rows:
            by_subject[row["subject"]].append(row["pred"] == row["gold"])
        n = len(rows)
        right = sum(sum(v) for v in by_subject.values())
        per_subject = {s: round(sum(v) / len(v), 6) for s, v in sorted(by_subject.items())}
        metrics = {
            "accuracy": round(right / n, 6) if n else 0.0,
            "macro_accuracy": round(sum(per_subject.values()) / len(per_subject), 6) if per_subject else 0.0,
            "parse_rate": round(sum(r["pred"] is not None for r in rows) / n, 6) if n else 0.0,
        }
        return metrics, {"items": n, "correct": right, "subjects": len(per_subject)}, {"by_subject": per_subject}
