"""What flows between the app and the engine: a job (one prompt, its persona and sampling settings), the
events the worker sends back for it, and the handle through which the app waits for them or cancels them.

The worker thread hands events to the app's event loop with ``call_soon_threadsafe``; an ``asyncio.Queue``
per request keeps them in order: ``Started`` (the routing used) before any ``Delta`` of that job, and one
``Finished`` per choice (or one ``Failed`` for the whole request).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from personafuse.serve.protocol import PersonaChoice, PersonaReport


class EngineOverloaded(RuntimeError):
    """The queue is full (or the engine is draining): the app answers 503 with Retry-After."""


@dataclass(frozen=True)
class SamplingParams:
    """Per-request generation settings (OpenAI's names)."""

    max_tokens: int
    """New tokens at most, per choice."""
    temperature: float = 1.0
    """0 = greedy."""
    top_p: float = 1.0
    """Nucleus sampling mass (1 = off)."""
    seed: int | None = None
    """Seed of a sampled request: it then runs alone, so the seed alone decides its reply."""
    stop: tuple[str, ...] = ()
    """Stop sequences; the reply ends before the first one."""
    n: int = 1
    """Choices (rows) for this prompt."""

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError(f"temperature must be in [0, 2], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if any(not s for s in self.stop):
            raise ValueError("stop sequences must be non-empty")

    @property
    def greedy(self) -> bool:
        """True when decoding is greedy (temperature 0)."""
        return self.temperature == 0.0

    def batch_key(self) -> tuple | None:
        """Jobs with equal keys can share a ``generate`` call; None = must run alone (seeded sampling)."""
        if self.greedy:
            return ("greedy",)
        if self.seed is not None:
            return None
        return ("sample", self.temperature, self.top_p)


@dataclass
class GenerationJob:
    """One prompt to complete ``params.n`` times: what the app hands to :meth:`Engine.submit`."""

    prompt_ids: list[int]
    """The tokenised prompt (chat template already applied for chat requests)."""
    route_text: str
    """The text the persona encoder reads when ``persona`` is automatic."""
    persona: PersonaChoice
    """Where the gates come from."""
    params: SamplingParams
    """Generation settings."""
    stream: bool = False
    """Send :class:`Delta` events as tokens arrive."""
    index: int = 0
    """Position of this job within its request (set by :meth:`HFEngine.submit`)."""
    handle: RequestHandle | None = field(default=None, repr=False)

    @property
    def cancelled(self) -> bool:
        """True once the request was cancelled (client gone, timeout)."""
        return self.handle is not None and self.handle.cancelled


@dataclass(frozen=True)
class Started:
    """A job's batch started; ``persona`` is the routing used for all its choices."""

    job: int
    persona: PersonaReport


@dataclass(frozen=True)
class Delta:
    """New text of one streamed choice."""

    job: int
    choice: int
    text: str


@dataclass(frozen=True)
class Finished:
    """One choice is complete."""

    job: int
    choice: int
    text: str
    finish_reason: str
    completion_tokens: int


@dataclass(frozen=True)
class Failed:
    """The batch failed; the app answers 500."""

    message: str


Event = Started | Delta | Finished | Failed


class RequestHandle:
    """The app's side of a submitted request: an asyncio queue of events, and cancellation."""

    def __init__(self, jobs: Sequence[GenerationJob], loop: asyncio.AbstractEventLoop) -> None:
        self.jobs = list(jobs)
        self.loop = loop
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self._cancelled = threading.Event()

    @property
    def cancelled(self) -> bool:
        """True after :meth:`cancel`."""
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Stop the request's rows at their next token (or drop them if still queued)."""
        self._cancelled.set()

    def push(self, event: Event) -> None:
        """Hand an event to the app's event loop (called from the worker thread)."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancel()

    async def next_event(self, timeout: float | None) -> Event:
        """The next event; ``asyncio.TimeoutError`` after ``timeout`` seconds."""
        return await asyncio.wait_for(self.queue.get(), timeout)


__all__ = [
    "Delta",
    "EngineOverloaded",
    "Event",
    "Failed",
    "Finished",
    "GenerationJob",
    "RequestHandle",
    "SamplingParams",
    "Started",
]
