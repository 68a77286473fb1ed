"""EmoBench (Sabour et al., ACL 2024): emotional understanding (EU) and emotional application (EA).

- EA: a scenario and four actions or responses; which is most effective for the subject? Accuracy per
  category (Personal/Social x Self/Others).
- EU: a scenario; which emotion(s) does the subject ultimately feel (6 options), and why (4-7 options)? As in the
  official evaluation, an EU item is correct only when both the emotion and the cause are right; the emotion and
  cause accuracies are reported too. Per coarse category (complex emotions, emotional cues, personal beliefs,
  perspective taking).

Deviation from the official script: the two EU questions are asked as two prompts (one answer each) rather than
one prompt asking for a JSON object with both, so that they can be scored by option log-likelihood; the second
prompt asks why the subject feels "this way" without revealing the emotion.
Data: ``EU.jsonl`` and ``EA.jsonl`` from github.com/Sahandfer/EmoBench (MIT), 200 items each per language.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from personafuse.evaluate.choice import (
    ChoiceFormat,
    ChoiceQuestion,
    Scoring,
    choose,
    format_options,
    resolve_scoring,
)
from personafuse.evaluate.task import (
    Task,
    TaskConfig,
    build_config,
    data_file,
    find_data_file,
    register_task,
    select_items,
)

WHAT = "EmoBench EU.jsonl and EA.jsonl from github.com/Sahandfer/EmoBench"

_SYSTEM = {
    "en": "In this task you are given a scenario, a question and several choices. Analyse the scenario carefully "
    "and take the perspective of the person involved. Then pick the choice that best reflects their perspective "
    "or emotional response.",
    "zh": "在这个任务中，你会看到一个场景、一个问题和多个选项。仔细分析场景，并从当事人的角度思考。然后选择最能反映其观点或情绪反应的选项。",
}
_ANSWER = {"en": "Answer with the letter of one choice only.", "zh": "只用一个选项的字母作答。"}
_HEAD = {
    "en": ("Scenario", "Question", "Choices"),
    "zh": ("场景", "问题", "选项"),
}
_Q_EA = {
    "en": "In this scenario, what is the most effective {q_type} for {subject}?",
    "zh": "在这个场景中，{subject}最有效的{q_type}是什么？",
}
_Q_TYPE_ZH = {"Action": "行动", "Response": "回应"}
_Q_EMOTION = {
    "en": "What emotion(s) would {subject} ultimately feel in this situation?",
    "zh": "在这种情况下，{subject}最终会感受到什么情绪？",
}
_Q_CAUSE = {
    "en": "Why would {subject} feel this way in this situation?",
    "zh": "{subject}为什么会在这种情况下有这样的感受？",
}


@dataclass
class EmoBenchConfig(TaskConfig):
    """Options of the ``emobench`` task."""

    lang: Literal["en", "zh"] = "en"
    """Language of the items (each file holds 200 English and 200 Chinese)."""
    subsets: Literal["all", "EU", "EA"] = "all"
    """Which part to run; ``--limit`` applies to each part."""
    scoring: Scoring = "auto"
    """loglik (option log-likelihood), generate (generate-then-parse), or auto (loglik when the model can)."""
    choice_format: ChoiceFormat = "letter"
    """Log-likelihood of the option letter, or of the option text (length-normalised)."""
    max_new_tokens: int = 32
    """Reply length for generate-then-parse."""

    def problems(self) -> list[str]:
        """See :meth:`TaskConfig.problems`."""
        out = super().problems()
        if self.max_new_tokens < 1:
            out.append(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        return out


@dataclass(frozen=True)
class EmoItem:
    """One EmoBench item: one question (EA) or two (EU: emotion, cause)."""

    key: str
    subset: Literal["EU", "EA"]
    category: str
    subcategory: str
    questions: tuple[ChoiceQuestion, ...] = field(repr=False)


def _user_prompt(lang: str, scenario: str, question: str, options: Sequence[str]) -> str:
    scen, ques, choi = _HEAD[lang]
    return (f"## {scen}\n{scenario}\n\n## {ques}\n{question}\n\n## {choi}\n{format_options(options)}\n\n"
            f"{_ANSWER[lang]}")  # fmt: skip


def _question(lang: str, scenario: str, question: str, options: Sequence[str], gold: str) -> ChoiceQuestion:
    messages = [{"role": "system", "content": _SYSTEM[lang]},
                {"role": "user", "content": _user_prompt(lang, scenario, question, options)}]  # fmt: skip
    return ChoiceQuestion(messages, tuple(options), list(options).index(gold))


def ea_item(row: dict[str, Any], lang: str) -> EmoItem:
    """Build an EA item from one EA.jsonl row."""
    q_type = row["question type"]
    q_type_text = _Q_TYPE_ZH.get(q_type, q_type) if lang == "zh" else q_type.lower()
    text = _Q_EA[lang].format(q_type=q_type_text, subject=row["subject"])
    question = _question(lang, row["scenario"], text, row["choices"], row["label"])
    return EmoItem(f"EA-{row['qid']}", "EA", row["category"], q_type, (question,))


def eu_item(row: dict[str, Any], lang: str) -> EmoItem:
    """Build an EU item (emotion question, cause question) from one EU.jsonl row."""
    emotion = _question(lang, row["scenario"], _Q_EMOTION[lang].format(subject=row["subject"]),
                        row["emotion_choices"], row["emotion_label"])  # fmt: skip
    cause = _question(lang, row["scenario"], _Q_CAUSE[lang].format(subject=row["subject"]),
                      row["cause_choices"], row["cause_label"])  # fmt: skip
    return EmoItem(f"EU-{row['qid']}", "EU", row["coarse_category"], row["finegrained_category"], (emotion, cause))


def _read_rows(path: Path, lang: str) -> list[dict[str, Any]]:
    from personafuse.data.jsonl import iter_jsonl

    return [line.value for line in iter_jsonl(path) if line.value.get("language") == lang]


@register_task
class EmoBench(Task):
    """EmoBench EU + EA accuracy, by option log-likelihood or generate-then-parse."""

    name = "emobench"
    version = "1"
    config_class = EmoBenchConfig
    headline = "mean"
    config: EmoBenchConfig

    @classmethod
    def load(cls, path: str | Path | None, limit: int | None = None, seed: int = 0, **options: Any) -> EmoBench:
        """Read ``EU.jsonl`` / ``EA.jsonl`` under ``path`` (a folder, or a data root with ``emobench/``).

        Raises:
            MissingDataError: the files are not there.
            ConfigError: a bad option.
        """
        config = build_config(EmoBenchConfig, cls.name, {"limit": limit, "seed": seed, **options})
        items: list[EmoItem] = []
        files = []
        for subset, builder in (("EU", eu_item), ("EA", ea_item)):
            if config.subsets not in ("all", subset):
                continue
            found = find_data_file(path, f"{subset}.jsonl", "emobench", cls.name, WHAT)
            files.append(data_file(found))
            built = [builder(row, config.lang) for row in _read_rows(found, config.lang)]
            items.extend(select_items(built, config.limit, config.seed))
        return cls(config, items, files)

    @staticmethod
    def key(item: EmoItem) -> str:
        """``EU-<qid>`` or ``EA-<qid>``."""
        return item.key

    def check_model(self, model: Any) -> None:
        """Fail early when ``--scoring loglik`` meets an endpoint."""
        resolve_scoring(self.config.scoring, model)

    def process(self, model: Any, items: Sequence[EmoItem]) -> list[dict[str, Any]]:
        """Answer every question of ``items`` in one batched call."""
        scoring = resolve_scoring(self.config.scoring, model)
        questions = [q for item in items for q in item.questions]
        answers = iter(choose(model, questions, scoring, self.config.choice_format, self.config.max_new_tokens))
        rows = []
        for item in items:
            got = [next(answers) for _ in item.questions]
            row: dict[str, Any] = {
                "key": item.key, "subset": item.subset, "category": item.category, "subcategory": item.subcategory,
                "scoring": scoring, "gold": [q.gold for q in item.questions], "pred": [a.pred for a in got],
            }  # fmt: skip
            if scoring == "generate":
                row["replies"] = [a.reply for a in got]
                row["prompt"] = item.questions[0].messages[-1]["content"]
                row["reply"] = got[0].reply
            else:
                row["scores"] = [a.scores for a in got]
            rows.append(row)
        return rows

    def score(self, rows: Sequence[dict[str, Any]]) -> tuple[dict[str, float], dict[str, int], dict[str, Any]]:
        """See :func:`score_emobench`."""
        return score_emobench(rows)


def _mean(values: Sequence[bool | float]) -> float:
    return round(sum(values) / len(values), 6) if values else 0.0


def score_emobench(rows: Sequence[dict[str, Any]]) -> tuple[dict[str, float], dict[str, int], dict[str, Any]]:
    """Accuracies from per-item rows (``gold`` and ``pred`` lists; EU rows have [emotion, cause]).

    Returns metrics ``ea``, ``eu`` (both parts right), ``eu_emotion``, ``eu_cause``, ``mean`` (of ``eu`` and
    ``ea`` when both ran), and ``parse_rate`` (answers that named an option, generate mode); counts; and details
    with accuracy per category and sub-category.
    """
    by_subset: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_subset[row["subset"]].append(row)
    metrics: dict[str, float] = {}
    counts: dict[str, int] = {}
    details: dict[str, Any] = {}
    parsed = total = 0
    for subset, subset_rows in sorted(by_subset.items()):
        right = [[p == g for p, g in zip(r["pred"], r["gold"])] for r in subset_rows]
        metrics[subset.lower()] = _mean([all(r) for r in right])
        if subset == "EU":
            metrics["eu_emotion"] = _mean([r[0] for r in right])
            metrics["eu_cause"] = _mean([r[1] for r in right])
        counts[subset.lower()] = len(subset_rows)
        for level in ("category", "subcategory"):
            groups: dict[str, list[bool]] = defaultdict(list)
            for row, ok in zip(subset_rows, right):
                groups[row[level]].append(all(ok))
            details[f"{subset.lower()}_by_{level}"] = {k: _mean(v) for k, v in sorted(groups.items())}
        parsed += sum(p is not None for r in subset_rows for p in r["pred"])
        total += sum(len(r["pred"]) for r in subset_rows)
    parts = [metrics[k] for k in ("eu", "ea") if k in metrics]
    metrics["mean"] = _mean(parts)
    metrics["parse_rate"] = round(parsed / total, 6) if total else 0.0
    counts["answers"] = total
    counts["parsed"] = parsed
    return {"mean": metrics.pop("mean"), **metrics}, counts, details
