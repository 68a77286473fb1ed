"""A model that answers from Python functions: checks a task's scoring on known answers, with no weights.

    gold = ScriptedModel(loglik=lambda context, continuation: 0.0 if continuation == "B" else -5.0)
    EmoBench.load(path, limit=20).run(gold)        # scores 100% wherever "B" is gold

Tests use it to pin every task's scoring: a model that always picks the gold option must score 100%, one that
always picks option A must score the dataset's A-rate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from personafuse.evaluate.models import Messages, UnsupportedScoringError

LoglikFn = Callable[[Messages, str], float]
ReplyFn = Callable[[Messages], str]


class ScriptedModel:
    """An :class:`~personafuse.evaluate.models.EvalModel` whose log-likelihoods and replies come from functions.

    Args:
        loglik: ``(context, continuation) -> log-prob``; omitted = the model scores like an endpoint (it can't).
        reply: ``(conversation) -> reply``; omitted = replies are empty.
        name: name in results.
    """

    def __init__(self, loglik: LoglikFn | None = None, reply: ReplyFn | None = None, name: str = "scripted") -> None:
        self._loglik = loglik
        self._reply = reply
        self.name = name
        self.supports_loglikelihood = loglik is not None
        self.calls = {"loglikelihood": 0, "generate": 0}
        """How many requests each method served (lets tests check resume skips work)."""

    def info(self) -> dict[str, Any]:
        """Name, kind ``scripted``, no mode."""
        return {"name": self.name, "kind": "scripted", "mode": None, "chat_template": None}

    def loglikelihood(self, contexts: Sequence[Messages], continuations: Sequence[str]) -> list[float]:
        """The scripted log-prob of each (context, continuation) pair.

        Raises:
            UnsupportedScoringError: no ``loglik`` function was given.
        """
        if self._loglik is None:
            raise UnsupportedScoringError(
                f"scripted model {self.name!r} has no loglik function; use --scoring generate"
            )
        self.calls["loglikelihood"] += len(contexts)
        return [float(self._loglik(list(c), k)) for c, k in zip(contexts, continuations)]

    def generate(self, conversations: Sequence[Messages], max_new_tokens: int, **kwargs: Any) -> list[str]:
        """The scripted reply to each conversation (empty without a ``reply`` function)."""
        self.calls["generate"] += len(conversations)
        return [self._reply(list(c)) if self._reply else "" for c in conversations]
