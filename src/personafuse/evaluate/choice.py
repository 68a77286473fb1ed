"""Multiple-choice answering, two ways: by option log-likelihood (local models) or generate-then-parse (any).

Log-likelihood: each option is scored as the start of the assistant's reply; the highest wins (the first one
on a tie, so a model that scores all options equally "picks A"). With ``letter`` options the continuation is
the letter itself ("B"), as in MMLU's standard prompt; with ``text`` options it is the option's text and the
score is divided by its length in characters (lm-eval-harness's ``acc_norm``), so long options are not
penalised for having more tokens.

Generate-then-parse: the reply is searched for the chosen letter (:func:`parse_choice`); a reply that names no
option counts as wrong and lowers the parse rate, which every task reports.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from personafuse.errors import UserError

if TYPE_CHECKING:
    from personafuse.evaluate.models import EvalModel, Messages

LETTERS = "ABCDEFGHIJ"
Scoring = Literal["auto", "loglik", "generate"]
ChoiceFormat = Literal["letter", "text"]


@dataclass(frozen=True)
class ChoiceQuestion:
    """One multiple-choice question as the model sees it."""

    messages: list[dict[str, str]]
    """The prompt conversation (options already listed in it)."""
    options: tuple[str, ...]
    """The option texts, in order."""
    gold: int
    """Index of the correct option."""


@dataclass(frozen=True)
class ChoiceAnswer:
    """What the model chose for one question."""

    pred: int | None
    """Chosen option index; ``None`` when a generated reply named no option."""
    scores: list[float] | None = None
    """Per-option scores (log-likelihood mode)."""
    reply: str | None = None
    """The generated reply (generate mode)."""


def resolve_scoring(scoring: Scoring, model: EvalModel) -> Literal["loglik", "generate"]:
    """``auto`` -> log-likelihood when the model supports it, else generate-then-parse.

    Raises:
        UserError: ``loglik`` asked of a model that cannot score log-likelihoods.
    """
    if scoring == "auto":
        return "loglik" if model.supports_loglikelihood else "generate"
    if scoring == "loglik" and not model.supports_loglikelihood:
        raise UserError(
            f"--scoring loglik needs a local model, but {model.name!r} cannot score log-likelihoods; "
            "use --scoring generate (or auto)"
        )
    return scoring


def format_options(options: Sequence[str], style: str = "{letter}) {text}") -> str:
    """``A) first\\nB) second`` (or another ``style`` with ``{letter}`` and ``{text}``)."""
    if len(options) > len(LETTERS):
        raise ValueError(f"at most {len(LETTERS)} options, got {len(options)}")
    return "\n".join(style.format(letter=LETTERS[i], text=text) for i, text in enumerate(options))


def argmax_first(values: Sequence[float]) -> int:
    """Index of the largest value; the first one on a tie."""
    best = 0
    for i, value in enumerate(values):
        if value > values[best]:
            best = i
    return best


def option_continuations(question: ChoiceQuestion, fmt: ChoiceFormat) -> list[str]:
    """The continuation scored for each option: its letter, or its text."""
    if fmt == "letter":
        return [LETTERS[i] for i in range(len(question.options))]
    return list(question.options)


def choose_by_loglikelihood(model: EvalModel, questions: Sequence[ChoiceQuestion], fmt: ChoiceFormat = "letter"
                            ) -> list[ChoiceAnswer]:  # fmt: skip
    """Score every option of every question in one batched call; pick the best option per question."""
    contexts: list[Messages] = []
    continuations: list[str] = []
    spans = []
    for question in questions:
        options = option_continuations(question, fmt)
        spans.append((len(continuations), len(options)))
        contexts.extend([question.messages] * len(options))
        continuations.extend(options)
    logliks = model.loglikelihood(contexts, continuations)
    answers = []
    for question, (start, n) in zip(questions, spans):
        raw = logliks[start : start + n]
        scores = raw if fmt == "letter" else [lp / max(1, len(text)) for lp, text in zip(raw, question.options)]
        answers.append(ChoiceAnswer(argmax_first(scores), [round(s, 6) for s in scores]))
    return answers


def choose_by_generation(model: EvalModel, questions: Sequence[ChoiceQuestion], max_new_tokens: int
                         ) -> list[ChoiceAnswer]:  # fmt: skip
    """Generate a reply per question and parse the chosen letter (or the one option text it quotes)."""
    replies = model.generate([q.messages for q in questions], max_new_tokens)
    return [ChoiceAnswer(parse_choice(r, len(q.options), q.options), reply=r) for q, r in zip(questions, replies)]


def choose(model: EvalModel, questions: Sequence[ChoiceQuestion], scoring: Literal["loglik", "generate"],
           fmt: ChoiceFormat = "letter", max_new_tokens: int = 32) -> list[ChoiceAnswer]:  # fmt: skip
    """Answer ``questions`` with the resolved scoring method."""
    if not questions:
        return []
    if scoring == "loglik":
        return choose_by_loglikelihood(model, questions, fmt)
    return choose_by_generation(model, questions, max_new_tokens)


_JSON_ANSWER = re.compile(r'"answer[\w ]*"\s*:\s*"\(?([A-Ja-j])\)?"', re.IGNORECASE)
_STATED = re.compile(r"\b(?i:answer|choice|option)\s*(?:(?i:is|would be)\s*)?:?\s*\(?([A-J])\b(?![\w'])")
_LEADING = re.compile(r"^\W*\(?([A-J])(?:[).:\]]|\s*$|\s+[-–—])")
_PAREN = re.compile(r"\(([A-J])\)")


def parse_choice(reply: str, n_options: int, options: Sequence[str] | None = None) -> int | None:
    """The option a free-text reply chose, or ``None``.

    Tried in order, and only letters among the first ``n_options`` count:
    1. a JSON-style ``"answer": "B"`` (EmoBench's requested format);
    2. "answer is B" / "Answer: (B)" / "option B";
    3. a reply that starts with the letter: "B", "B)", "B. text", "(B)";
    4. exactly one "(B)" anywhere;
    5. exactly one option text quoted verbatim (case-insensitive).
    """
    text = reply.strip()
    if not text:
        return None
    valid = LETTERS[:n_options]
    for pattern in (_JSON_ANSWER, _STATED):
        match = pattern.search(text)
        if match and match.group(1).upper() in valid:
            return valid.index(match.group(1).upper())
    match = _LEADING.match(text)
    if match and match.group(1) in valid:
        return valid.index(match.group(1))
    parens = {m for m in _PAREN.findall(text) if m in valid}
    if len(parens) == 1:
        return valid.index(parens.pop())
    if options:
        lowered = text.lower()
        hits = [i for i, option in enumerate(options) if option.strip() and option.strip().lower() in lowered]
        if len(hits) == 1:
            return hits[0]
    return None
