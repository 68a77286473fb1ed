"""Chat completions against any OpenAI-compatible endpoint, with bounded retries and exponential backoff.

The SDK's own retry loop is switched off (``max_retries=0``) and replaced by :meth:`ChatClient.complete`, so
that the retry policy is ours, counted in the run summary, and testable with a scripted server: 429, 5xx,
408/409, timeouts and connection errors are retried; other 4xx are not (retrying cannot fix them).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import openai

from personafuse.data.synthesis.config import SynthesisConfig
from personafuse.errors import UserError

__all__ = ["ChatClient", "Completion", "RequestFailed", "ServerUnreachable", "UsageStats", "backoff_delay"]

logger = logging.getLogger(__name__)

_RETRY_STATUS = frozenset({408, 409, 429})


class ServerUnreachable(UserError):
    """The endpoint cannot be reached or refuses every request (wrong URL, key or model); the run stops."""


class RequestFailed(Exception):
    """One request gave up: retries exhausted on a transient error, or a non-retryable 4xx for this item.

    ``category`` is ``rate_limited``, ``server_error``, ``timeout``, ``connection`` or ``bad_request``;
    ``transient`` says whether a later run may well succeed (items that failed so are asked again on resume).
    """

    def __init__(self, category: str, message: str, *, transient: bool) -> None:
        super().__init__(f"{category}: {message}")
        self.category = category
        self.message = message
        self.transient = transient


@dataclass(frozen=True)
class Completion:
    """One reply and its token usage (0 when the server does not report usage)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None


@dataclass
class UsageStats:
    """Counters over the whole run."""

    requests: int = 0
    """HTTP requests sent, retries included."""
    answered: int = 0
    """Requests that got a 2xx reply."""
    retries: int = 0
    """Requests that were retries after a transient error."""
    prompt_tokens: int = 0
    """Sum of ``usage.prompt_tokens`` of the answered requests."""
    completion_tokens: int = 0
    """Sum of ``usage.completion_tokens`` of the answered requests."""


def backoff_delay(
    attempt: int, *, initial: float, maximum: float, retry_after: float | None = None, rng: random.Random
) -> float:
    """Seconds to wait before retry number ``attempt + 1``: ``initial · 2^attempt``, jittered to 50–100%, capped.

    A server's ``Retry-After`` (429/503) is honoured as a lower bound, itself capped at ``maximum``. The jitter
    spreads the retries of concurrent requests that failed together, so they do not hit the server in a burst.
    """
    delay = min(maximum, initial * 2.0**attempt) * (0.5 + 0.5 * rng.random())
    if retry_after is not None and retry_after > 0:
        delay = max(delay, min(retry_after, maximum))
    return delay


def _retry_after(exc: openai.APIStatusError) -> float | None:
    value = exc.response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:  # an HTTP date; not worth parsing for a capped backoff
        return None


def _short(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())[:300]


class ChatClient:
    """An ``AsyncOpenAI`` client with the run's model, sampling settings and retry policy."""

    def __init__(
        self,
        config: SynthesisConfig,
        *,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        client: openai.AsyncOpenAI | None = None,
    ) -> None:
        """Create the client.

        Args:
            config: the run's configuration (endpoint, key, model, sampling, retries, backoff).
            sleep: the backoff wait; tests may pass a fake.
            client: an SDK client to use instead of building one (its own retries should be off).
        """
        self.config = config
        self.stats = UsageStats()
        self._sleep = sleep
        self._rng = random.Random(config.seed)
        self._client = client or openai.AsyncOpenAI(
            base_url=config.base_url, api_key=config.api_key, max_retries=0, timeout=config.timeout
        )

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        await self._client.close()

    async def complete(self, messages: list[dict[str, str]], *, seed: int | None = None) -> Completion:
        """Send one chat completion, retrying transient failures up to ``config.max_retries`` times.

        Args:
            messages: the conversation.
            seed: sampling seed for this request, or ``None`` to send none.

        Returns:
            The reply text (``""`` when the server sent no content) with its usage.

        Raises:
            RequestFailed: retries exhausted on 429/5xx/timeout, or a 4xx such as a too-long prompt.
            ServerUnreachable: connection errors through every retry, or 401/403/404 (wrong key, URL or model).
        """
        cfg = self.config
        kwargs: dict[str, Any] = {"model": cfg.model, "messages": messages, "temperature": cfg.temperature}
        if seed is not None:
            kwargs["seed"] = seed
        if cfg.max_tokens is not None:
            kwargs["max_tokens"] = cfg.max_tokens
        if cfg.json_mode:
            kwargs["response_format"] = {"type": "json_object"}
        failure: RequestFailed | None = None
        for attempt in range(cfg.max_retries + 1):
            if attempt:
                self.stats.retries += 1
            self.stats.requests += 1
            retry_after: float | None = None
            try:
                response = await self._client.chat.completions.create(**kwargs, timeout=cfg.timeout)
            except openai.APITimeoutError as exc:  # before APIConnectionError: it is a subclass
                failure = RequestFailed("timeout", f"no reply within --timeout {cfg.timeout:g} s", transient=True)
                logger.debug("timeout: %s", _short(exc))
            except openai.APIConnectionError as exc:
                failure = RequestFailed("connection", _short(exc), transient=True)
            except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
                raise ServerUnreachable(
                    f"{cfg.base_url} refused the API key (HTTP {exc.status_code}: {_short(exc)}); set the key in the "
                    "environment variable named by --api-key-env"
                ) from None
            except openai.NotFoundError as exc:
                raise ServerUnreachable(
                    f"{cfg.base_url} answered 404 for model {cfg.model!r} ({_short(exc)}); check --base-url (it "
                    "usually ends in /v1) and --model (see the server's /v1/models)"
                ) from None
            except openai.RateLimitError as exc:
                failure = RequestFailed("rate_limited", _short(exc), transient=True)
                retry_after = _retry_after(exc)
            except openai.InternalServerError as exc:
                failure = RequestFailed("server_error", f"HTTP {exc.status_code}: {_short(exc)}", transient=True)
                retry_after = _retry_after(exc)
            except openai.APIStatusError as exc:
                if exc.status_code not in _RETRY_STATUS:
                    raise RequestFailed(
                        "bad_request", f"HTTP {exc.status_code}: {_short(exc)}", transient=False
                    ) from None
                failure = RequestFailed("server_error", f"HTTP {exc.status_code}: {_short(exc)}", transient=True)
            else:
                return self._completion(response)
            if attempt < cfg.max_retries:
                delay = backoff_delay(
                    attempt,
                    initial=cfg.backoff_initial,
                    maximum=cfg.backoff_max,
                    retry_after=retry_after,
                    rng=self._rng,
                )
                logger.debug("%s; retry %d/%d in %.2f s", failure, attempt + 1, cfg.max_retries, delay)
                await self._sleep(delay)
        assert failure is not None
        if failure.category == "connection":
            raise ServerUnreachable(
                f"cannot reach {cfg.base_url} ({failure.message}) after {cfg.max_retries + 1} attempts; check "
                "--base-url and that the server is running"
            )
        raise RequestFailed(failure.category, f"{failure.message} (after {cfg.max_retries} retries)", transient=True)

    def _completion(self, response: Any) -> Completion:
        self.stats.answered += 1
        usage = getattr(response, "usage", None)
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        self.stats.prompt_tokens += prompt_tokens
        self.stats.completion_tokens += completion_tokens
        choices = getattr(response, "choices", None) or []
        if not choices:
            return Completion("", prompt_tokens, completion_tokens, None)
        choice = choices[0]
        text = getattr(choice.message, "content", None) or ""
        return Completion(text, prompt_tokens, completion_tokens, choice.finish_reason)
