"""Counseling: the model answers held-out CounselChat questions; the stage-3 reward model and a judge score it.

    personafuse eval counseling --model ckpt/ --data ../shared/data --limit 10 [--reward-model DIR]

Questions: the CounselChat CSV (Bertagnolli 2020, MIT) grouped and split exactly as the reward model's data
(:func:`~personafuse.train.counsel_pairs.load_counsel_pairs`, with the reward model's own val/test shares): the
items are the question groups of its **test** split that have at least one ranked answer pair, i.e. the questions
its held-out accuracy is measured on, which it never saw in training. Each question (title + text) is one user
turn; the reply is greedy, ``--max-new-tokens`` long.

Scores per reply (:mod:`personafuse.evaluate.reply_scoring`): the reward, persona consistency with the router's
activation of the question, and optionally an LLM judge's 1-10 rubric (empathy, helpfulness, safety). The reward
scale is arbitrary, so the most-upvoted therapist answer to the same question is scored too: ``beats_best_human``
is the share of questions where the model's reply out-scores it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personafuse.errors import UserError
from personafuse.evaluate.reply_scoring import (
    COUNSELING_RUBRIC,
    ReplyScorer,
    ReplyTaskConfig,
    mean_metrics,
    rate_metrics,
    resolve_reward_model,
    reward_model_settings,
    scorer_files,
    summarise_replies,
)
from personafuse.evaluate.task import (
    DataFile,
    Task,
    build_config,
    data_file,
    find_data_file,
    register_task,
    select_items,
)

CSV_NAME = "20200325_counsel_chat.csv"
_WHAT = "the CounselChat CSV from github.com/nbertagnolli/counsel-chat"


@dataclass
class CounselingConfig(ReplyTaskConfig):
    """Options of the ``counseling`` task."""


@dataclass(frozen=True)
class CounselQuestion:
    """One held-out question group and its most-upvoted answer."""

    key: str
    group: str
    question: str
    best_answer: str
    best_upvotes: int
    answers: int
    """Distinct ranked answers to the question in the CSV."""


def held_out_questions(pairs: Sequence[Any]) -> list[CounselQuestion]:
    """One :class:`CounselQuestion` per group of ``pairs`` (test-split CounselPairs), in first-seen order."""
    groups: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        entry = groups.setdefault(pair.group, {"question": pair.question, "answers": {}})
        for text, votes in ((pair.chosen, pair.chosen_upvotes), (pair.rejected, pair.rejected_upvotes)):
            entry["answers"][text] = max(votes, entry["answers"].get(text, votes))
    out = []
    for group, entry in groups.items():
        best = max(entry["answers"].items(), key=lambda item: item[1])  # first of the top-voted on ties
        out.append(CounselQuestion(f"counsel-{group}", group, entry["question"], best[0], int(best[1]),
                                   len(entry["answers"])))  # fmt: skip
    return out


def find_counsel_csv(path: str | Path | None, task: str = "counseling") -> Path:
    """``--data``: the CSV itself (any ``*.csv``), a folder holding it, or a data root with ``counsel_chat/``.

    Raises:
        MissingDataError: nothing found (the message names the flag and the file).
    """
    if path is not None and Path(path).expanduser().is_file() and str(path).endswith(".csv"):
        return Path(path).expanduser()
    return find_data_file(path, CSV_NAME, "counsel_chat", task, _WHAT)


@register_task
class Counseling(Task):
    """Replies to held-out CounselChat questions: reward model, persona consistency, optional judge rubric."""

    name = "counseling"
    config_class = CounselingConfig
    headline = "reward"
    config: CounselingConfig

    def __init__(self, config: CounselingConfig, items: Sequence[CounselQuestion], files: Sequence[DataFile],
                 reward_model: Path | None = None, split: dict[str, Any] | None = None) -> None:  # fmt: skip
        super().__init__(config, items, files)
        self.reward_model = reward_model
        self.split = split or {}
        self.scorer: ReplyScorer | None = None
        """The loaded scorers; built on first use, or set it to reuse loaded models or judge with any EvalModel."""

    @classmethod
    def load(cls, path: str | Path | None, limit: int | None = None, seed: int = 0, **options: Any) -> Counseling:
        """Read the CSV, resolve (or train) the reward model, and keep the questions of its test split.

        Raises:
            MissingDataError: no CSV, or no usable reward model.
            UserError: the reward model was trained on another split of the CounselChat data.
        """
        from personafuse.train.counsel_pairs import load_counsel_pairs

        config = build_config(CounselingConfig, cls.name, {"limit": limit, "seed": seed, **options})
        csv = find_counsel_csv(path)
        folder = resolve_reward_model(config.reward_model, csv, config.train_reward_model, cls.name)
        settings = reward_model_settings(folder)
        val, test = int(settings["config"].get("val_percent", 15)), int(settings["config"].get("test_percent", 15))
        pairs = load_counsel_pairs(csv, val, test)
        trained_on = {part: settings["metrics"].get(part, {}).get("pairs") for part in ("fit", "test")}
        here = {"fit": len(pairs["train"]) + len(pairs["val"]), "test": len(pairs["test"])}
        if any(trained_on[k] is not None and trained_on[k] != here[k] for k in here):
            raise UserError(
                f"--reward-model {folder} was trained on another CounselChat split ({trained_on['fit']} fitted / "
                f"{trained_on['test']} test pairs there, {here['fit']} / {here['test']} in {csv}), so its training "
                "questions may overlap the evaluated ones; train it on this CSV or omit --reward-model"
            )
        questions = held_out_questions(pairs["test"])
        if not questions:
            raise UserError(f"{csv} has no ranked answer pair in its test split; give the full CounselChat CSV")
        files = [data_file(csv), *scorer_files(folder, config.persona_router)]
        split = {"val_percent": val, "test_percent": test, "test_questions": len(questions),
                 "reward_model_test_accuracy": settings["metrics"].get("test", {}).get("accuracy"),
                 "test_pairs": len(pairs["test"])}  # fmt: skip
        return cls(config, select_items(questions, config.limit, config.seed), files, folder, split)

    @staticmethod
    def key(item: CounselQuestion) -> str:
        """``counsel-<question group id>``."""
        return item.key

    def _scorer(self) -> ReplyScorer:
        if self.scorer is None:
            assert self.reward_model is not None, "load() resolves the reward model"
            self.scorer = ReplyScorer.build(self.config, self.reward_model, COUNSELING_RUBRIC)
        return self.scorer

    def process(self, model: Any, items: Sequence[CounselQuestion]) -> list[dict[str, Any]]:
        """Answer each question, score the reply, and score the best human answer with the same reward model."""
        scorer = self._scorer()
        convs = [[{"role": "user", "content": q.question}] for q in items]
        replies = model.generate(convs, self.config.max_new_tokens)
        scored = scorer.score(convs, replies, [None] * len(items))
        human = scorer.rewards(convs, [q.best_answer for q in items])
        rows = []
        for q, reply, row, h in zip(items, replies, scored, human):
            beats = 1.0 if row["reward"] > h else 0.5 if row["reward"] == h else 0.0
            rows.append({"key": q.key, "group": q.group, "prompt": q.question, "reply": reply, **row,
                         "best_human_reward": h, "best_human_upvotes": q.best_upvotes, "beats_best_human": beats})  # fmt: skip
        return rows

    def score(self, rows: Sequence[dict[str, Any]]) -> tuple[dict[str, float], dict[str, int], dict[str, Any]]:
        """See :func:`score_counseling`."""
        metrics, counts, details = score_counseling(rows)
        return metrics, counts, details | {"reward_model": str(self.reward_model), "split": self.split}


def score_counseling(rows: Sequence[dict[str, Any]]) -> tuple[dict[str, float], dict[str, int], dict[str, Any]]:
    """Reply means with 95% t intervals (:func:`summarise_replies`), the best human answer's mean reward and
    ``beats_best_human`` (ties half) with a 95% Wilson interval."""
    metrics, counts = summarise_replies(rows, list(COUNSELING_RUBRIC.criteria))
    metrics |= {k: v for k, v in mean_metrics("best_human_reward", [r["best_human_reward"] for r in rows]).items()
                if k == "best_human_reward"}  # fmt: skip
    metrics |= rate_metrics("beats_best_human", [r["beats_best_human"] for r in rows])
    details = {"ci": "95% Student-t for means, Wilson for beats_best_human (ties half)",
               "rubric": dict(COUNSELING_RUBRIC.criteria)}  # fmt: skip
    return metrics, counts, details
