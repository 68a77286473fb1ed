"""EQ-Bench v2 (Paech 2023, arXiv:2312.06281): rate the intensity of four emotions of a dialogue character.

The model reads a dialogue and gives each of four emotions a 0-10 score, first pass, then a critique, then
revised scores. Scoring is the reference v2 ("fullscale") rule of github.com/EQ-bench/EQ-Bench (``lib/scoring.py``
at d28c60c, re-implemented here):

- parse ``Emotion: N`` pairs (markdown ``*`` and ``#`` stripped; regex ``(\\w+):\\s+(\\d+)``) from the text
  between "First pass scores:" and "Revised scores:" (first pass) and after "Revised scores:" (revised);
- an answer counts only if it has exactly four pairs naming the four reference emotions (case-insensitive);
- per emotion, d = |answer - reference|; scaled to 0 when d = 0, to 6.5 / (1 + e^(-1.2 (d - 4))) when d <= 5
  (an S-curve that forgives small misses), and to d itself above 5;
- item score = 10 - 0.7477 * sum of the four scaled differences (0.7477 makes random answers score about 0);
- benchmark score = 10 x mean item score over the parseable items, on a 0-100 scale, separately for first pass
  and revised; the reported score is the revised one when it is at least the first-pass one and at least 95% as
  many revised answers parsed, else the first-pass one.

Differences from the reference runner: one greedy attempt per item (the reference retries unparseable answers
up to 5 times at rising temperature), so the parseable count is reported and matters.
Data: ``eq_bench_v2_questions_171.json`` (MIT).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personafuse.evaluate.task import (
    Task,
    TaskConfig,
    build_config,
    data_file,
    find_data_file,
    register_task,
    select_items,
)

FILE = "eq_bench_v2_questions_171.json"
WHAT = "EQ-Bench v2 questions from github.com/EQ-bench/EQ-Bench"
BENCHMARK = "EQ-Bench v2"
ADJUST = 0.7477
"""Reference constant: scales the tally so that answering at random scores about zero."""

_PAIR = re.compile(r"(\w+):\s+(\d+)")


@dataclass
class EQBenchConfig(TaskConfig):
    """Options of the ``eqbench`` task."""

    revise: bool = True
    """Ask for first-pass scores, a critique and revised scores (the v2 prompt as published)."""
    max_new_tokens: int | None = None
    """Reply length; default 600 with revision, 60 without (the reference values)."""

    def problems(self) -> list[str]:
        """See :meth:`TaskConfig.problems`."""
        out = super().problems()
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            out.append(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        return out

    @property
    def reply_tokens(self) -> int:
        """The resolved ``max_new_tokens``."""
        return self.max_new_tokens or (600 if self.revise else 60)


@dataclass(frozen=True)
class EQItem:
    """One EQ-Bench question: the prompt and the reference intensities."""

    key: str
    prompt: str
    reference: dict[str, Any]


# ---------------------------------------------------------------------------------------------------- pure scoring
def strip_revision(prompt: str) -> str:
    """The v2 prompt without its critique/revision part (the reference ``remove_revision_instructions``, en)."""
    prompt = prompt.replace(
        " Then critique your answer by thinking it through step by step. Finally, give your revised scores.", ""
    )
    prompt = prompt.replace("First pass scores:\n", "")
    start, end = prompt.find("Critique: <your critique here>"), prompt.find("[End of answer]")
    if start != -1 and end != -1:
        prompt = prompt[:start] + "\n" + prompt[end:]
    return prompt + "\nYour answer:\n"


def parse_answers(text: str, revise: bool) -> tuple[dict[str, str], dict[str, str]]:
    """First-pass and revised ``{emotion: score}`` pairs of a reply (strings, as matched).

    Without ``revise`` every pair in the text is a first-pass answer and the revised dict is empty.
    """
    text = text.replace("*", "").replace("#", "")
    if not revise:
        return dict(_PAIR.findall(text)), {}
    first: dict[str, str] = {}
    revised: dict[str, str] = {}
    match = re.search(r"First pass scores:(.*?)Revised scores:", text, re.DOTALL)
    if match:
        first = dict(_PAIR.findall(match.group(1)))
    match = re.search(r"Revised scores:(.*?)$", text, re.DOTALL)
    if match:
        revised = dict(_PAIR.findall(match.group(1)))
    return first, revised


def scaled_difference(d: float) -> float:
    """The v2 penalty for missing a reference intensity by ``d`` (0..10): 0, an S-curve up to 5, then linear.

    Hand values: d=0 -> 0; d=4 -> 6.5 / 2 = 3.25; d=1 -> 6.5 / (1 + e^3.6) = 0.172880; d=6 -> 6.
    """
    if d == 0:
        return 0.0
    if d <= 5:
        return 6.5 / (1.0 + math.exp(-1.2 * (d - 4.0)))
    return float(d)


def score_item(reference: Mapping[str, Any], answer: Mapping[str, Any]) -> float | None:
    """v2 score of one answer (10 = perfect, about 0 = random, can be negative); ``None`` when unparseable.

    Args:
        reference: ``reference_answer_fullscale``: ``emotion1..4`` names and ``emotion{i}_score`` values.
        answer: parsed ``{emotion: score}``.
    """
    if len(answer) != 4:
        return None
    names = {str(reference[f"emotion{i}"]).lower(): float(reference[f"emotion{i}_score"]) for i in range(1, 5)}
    if len({e.lower() for e in answer} & set(names)) != 4:
        return None
    tally = sum(scaled_difference(abs(float(score) - names[emotion.lower()])) for emotion, score in answer.items())
    return 10.0 - ADJUST * tally


def aggregate(first: Sequence[float | None], revised: Sequence[float | None]) -> dict[str, float]:
    """Benchmark scores (0-100) and parseable counts from per-item first-pass and revised scores."""

    def mean100(scores: Sequence[float | None]) -> tuple[float, int]:
        ok = [s for s in scores if s is not None]
        return (100.0 * (sum(ok) / len(ok)) / 10.0 if ok else 0.0), len(ok)

    first_score, first_n = mean100(first)
    revised_score, revised_n = mean100(revised)
    use_revised = revised_score >= first_score and revised_n >= 0.95 * first_n and revised_n > 0
    return {
        "score": round(revised_score if use_revised else first_score, 4),
        "first_pass": round(first_score, 4),
        "revised": round(revised_score, 4),
        "parseable": revised_n if use_revised else first_n,
        "first_pass_parseable": first_n,
        "revised_parseable": revised_n,
        "final_is_revised": float(use_revised),
    }


# ---------------------------------------------------------------------------------------------------- task
@register_task
class EQBench(Task):
    """EQ-Bench v2 score (first pass, revised, final) with parseable counts."""

    name = "eqbench"
    version = "v2"
    config_class = EQBenchConfig
    headline = "score"
    config: EQBenchConfig

    @classmethod
    def load(cls, path: str | Path | None, limit: int | None = None, seed: int = 0, **options: Any) -> EQBench:
        """Read the 171 v2 questions under ``path`` (the JSON file, its folder, or a data root with ``eq_bench/``).

        Raises:
            MissingDataError: the file is not there.
        """
        config = build_config(EQBenchConfig, cls.name, {"limit": limit, "seed": seed, **options})
        found = find_data_file(path, FILE, "eq_bench", cls.name, WHAT)
        raw = json.loads(found.read_text(encoding="utf-8"))
        items = []
        for key in sorted(raw, key=lambda k: (len(k), k)):  # "1".."171" in numeric order
            prompt = raw[key]["prompt"]
            items.append(EQItem(key, prompt if config.revise else strip_revision(prompt),
                                raw[key]["reference_answer_fullscale"]))  # fmt: skip
        return cls(config, select_items(items, config.limit, config.seed), [data_file(found)])

    @staticmethod
    def key(item: EQItem) -> str:
        """The question id ("1".."171")."""
        return item.key

    def process(self, model: Any, items: Sequence[EQItem]) -> list[dict[str, Any]]:
        """Generate one reply per question and score its first-pass and revised answers."""
        replies = model.generate([[{"role": "user", "content": i.prompt}] for i in items], self.config.reply_tokens)
        rows = []
        for item, reply in zip(items, replies):
            first, revised = parse_answers(reply, self.config.revise)
            rows.append({
                "key": item.key, "prompt": item.prompt, "reply": reply, "first_pass_answer": first,
                "revised_answer": revised, "first_pass_score": score_item(item.reference, first),
                "revised_score": score_item(item.reference, revised) if self.config.revise else None,
            })  # fmt: skip
        return rows

    def score(self, rows: Sequence[dict[str, Any]]) -> tuple[dict[str, float], dict[str, int], dict[str, Any]]:
        """See :func:`aggregate`; counts include the items and the parseable answers."""
        scores = aggregate([r["first_pass_score"] for r in rows], [r["revised_score"] for r in rows])
        counts = {"items": len(rows), "parseable": int(scores.pop("parseable")),
                  "first_pass_parseable": int(scores.pop("first_pass_parseable")),
                  "revised_parseable": int(scores.pop("revised_parseable"))}  # fmt: skip
        scores["parse_rate"] = round(counts["parseable"] / len(rows), 6) if rows else 0.0
        details = {"benchmark": BENCHMARK, "scale": "0-100 (v2 fullscale)", "revise": self.config.revise}
        return scores, counts, details
