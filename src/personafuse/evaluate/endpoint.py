"""An OpenAI-compatible chat endpoint as an :class:`~personafuse.evaluate.models.EvalModel` (generation only).

Works with ``personafuse serve``, vLLM, llama.cpp's server, or the OpenAI API itself. Chat endpoints do not
return the log-probability of a *given* continuation, so tasks score these models by generate-then-parse and
report the parse rate; :meth:`OpenAIEvalModel.loglikelihood` says so instead of guessing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from personafuse.errors import UserError
from personafuse.evaluate.models import Messages, UnsupportedScoringError


class OpenAIEvalModel:
    """Replies from ``POST {base_url}/chat/completions``; requests run ``concurrency`` at a time, in order."""

    supports_loglikelihood = False

    def __init__(self, base_url: str, model: str, api_key: str | None = None, concurrency: int = 4,
                 timeout_s: float = 120.0, client: Any = None) -> None:  # fmt: skip
        if not base_url.startswith(("http://", "https://")):
            raise UserError(f"endpoint URL {base_url!r} must start with http:// or https://")
        if concurrency < 1:
            raise UserError(f"concurrency must be >= 1, got {concurrency}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.name = model
        self.concurrency = concurrency
        if client is None:
            from openai import OpenAI

            key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"  # local servers accept any key
            client = OpenAI(base_url=self.base_url, api_key=key, timeout=timeout_s, max_retries=2)
        self.client = client

    @classmethod
    def from_spec(cls, spec: str, **kwargs: Any) -> OpenAIEvalModel:
        """Parse ``openai:URL#MODEL`` (e.g. ``openai:http://127.0.0.1:8000/v1#personafuse``).

        Raises:
            UserError: a spec without ``#MODEL`` or without a URL.
        """
        body = spec.removeprefix("openai:")
        url, sep, model = body.rpartition("#")
        if not sep or not url or not model:
            raise UserError(
                f"--model {spec!r} needs the form openai:URL#MODEL, e.g. openai:http://127.0.0.1:8000/v1#personafuse"
            )
        return cls(url, model, **kwargs)

    def info(self) -> dict[str, Any]:
        """Name, kind, endpoint URL and model id (the chat template lives on the server)."""
        from personafuse.evaluate.task import runtime_versions

        return {"name": self.name, "kind": "openai", "mode": None, "base_url": self.base_url, "model": self.model,
                "chat_template": None, "versions": runtime_versions()}  # fmt: skip

    def loglikelihood(self, contexts: Sequence[Messages], continuations: Sequence[str]) -> list[float]:
        """Not available from a chat endpoint.

        Raises:
            UnsupportedScoringError: always; the message says to use generate-then-parse scoring.
        """
        raise UnsupportedScoringError(
            f"the endpoint model {self.name!r} cannot score log-likelihoods; run this task with "
            "--scoring generate (generate-then-parse; the result reports the parse rate)"
        )

    def _one(self, conversation: Messages, max_new_tokens: int, kwargs: dict[str, Any]) -> str:
        from openai import APIConnectionError, APIStatusError

        try:
            response = self.client.chat.completions.create(
                model=self.model, messages=list(conversation), max_tokens=max_new_tokens, **kwargs
            )
        except APIConnectionError as exc:
            raise UserError(f"cannot reach the endpoint {self.base_url} ({exc}); is the server running?") from None
        except APIStatusError as exc:
            raise UserError(f"the endpoint {self.base_url} answered HTTP {exc.status_code}: {exc.message}") from None
        return (response.choices[0].message.content or "").strip()

    def generate(self, conversations: Sequence[Messages], max_new_tokens: int, **kwargs: Any) -> list[str]:
        """One reply per conversation; greedy (``temperature=0``) unless ``kwargs`` say otherwise."""
        kwargs = dict(kwargs)
        if not kwargs.pop("do_sample", False):
            kwargs.setdefault("temperature", 0.0)
        if self.concurrency == 1 or len(conversations) <= 1:
            return [self._one(c, max_new_tokens, kwargs) for c in conversations]
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(lambda c: self._one(c, max_new_tokens, kwargs), conversations))
