"""The serving engine: a bounded request queue and one batching worker thread over a :class:`PersonaFuse`.

Concurrent requests, each with its own persona mix, are grouped into one ``generate`` call: the expert layers
take gates ``[batch, 10]`` (one row per reply), so distinct mixes cost one forward pass, not one per mix
(DESIGN.md "stacked experts"). The worker:

1. waits for a job, then up to ``batch_wait_ms`` for more (so a burst of arrivals lands in one batch);
2. takes, in arrival order, the jobs whose generation settings are compatible with the first one
   (:meth:`SamplingParams.batch_key`: all greedy jobs together; sampled jobs by temperature / top_p; a
   sampled job with a ``seed`` alone, so that its seed reproduces its reply) up to ``max_batch`` rows and the
   model's context window;
3. routes the batch's automatic jobs with one encoder call, left-pads the prompts, and runs ``generate``
   with a :class:`RowTracker` stopping criterion that follows each row: per-row ``max_tokens``, ``stop``
   sequences, EOS, cancellation (client gone, timeout), and streamed text deltas.

Batching is static (a batch runs to its longest row; new arrivals wait for the next batch), the trade-off
for using ``transformers.generate`` unchanged; streaming works for every row of a batch, because the tracker
sees each row's new token at every step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch

from personafuse.serve.jobs import (
    Delta,
    EngineOverloaded,
    Event,
    Failed,
    Finished,
    GenerationJob,
    RequestHandle,
    SamplingParams,
    Started,
)
from personafuse.serve.protocol import PersonaChoice, PersonaReport
from personafuse.serve.tracker import RowState, RowTracker, find_stop, held_back, left_pad, stopping_criteria
from personafuse.traits import POLES, TRAITS, Activation, Gates, Routing

if TYPE_CHECKING:
    from personafuse.model import PersonaFuse

logger = logging.getLogger("personafuse.serve")

# ---------------------------------------------------------------------------------------------------- protocol


class Engine(Protocol):
    """What the app needs from an engine (HFEngine below; a scripted one in tests is possible)."""

    model_name: str
    max_context: int
    max_batch: int

    def encode_chat(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        """Token ids of a conversation with the chat template and the generation prompt."""
        ...

    def encode_text(self, text: str) -> list[int]:
        """Token ids of a raw prompt."""
        ...

    def route(self, texts: Sequence[str], personas: Sequence[PersonaChoice]) -> list[PersonaReport]:
        """The routing each text gets under each persona choice (no generation)."""
        ...

    def submit(self, jobs: Sequence[GenerationJob]) -> RequestHandle:
        """Queue the jobs of one request (all or none); raises :class:`EngineOverloaded` when full."""
        ...

    def start(self) -> None:
        """Start the worker (idempotent)."""
        ...

    def shutdown(self, timeout: float | None = None) -> None:
        """Refuse new work, finish the queued and running jobs, stop the worker."""
        ...

    def health(self) -> dict[str, object]:
        """Queue and batch counters for ``/health``."""
        ...


# ---------------------------------------------------------------------------------------------------- statistics


@dataclass
class EngineStats:
    """Counters, for tests (one batch for eight requests?) and ``/health``."""

    requests: int = 0
    """Requests accepted by :meth:`HFEngine.submit`."""
    rejected: int = 0
    """Requests refused because the queue was full or the engine was draining."""
    batches: int = 0
    """``generate`` calls."""
    rows: int = 0
    """Rows generated, over all batches."""
    cancelled: int = 0
    """Jobs dropped or stopped early because their request was cancelled."""
    failed: int = 0
    """Batches that raised."""
    batch_sizes: Counter = field(default_factory=Counter)
    """Rows per batch -> how many batches had that many rows."""
    last_batch_rows: int = 0
    """Rows of the most recent batch."""
    last_batch_mixes: int = 0
    """Distinct gate rows of the most recent batch."""


# ---------------------------------------------------------------------------------------------------- the engine


class HFEngine:
    """Batches requests over one :class:`PersonaFuse` in a background worker thread.

    Args:
        pf: the model.
        model_name: the id under which ``/v1/models`` lists it.
        max_batch: rows per ``generate`` call at most (a request's ``n`` counts as ``n`` rows).
        queue_size: queued jobs at most; beyond, :meth:`submit` raises :class:`EngineOverloaded`.
        batch_wait_ms: how long the worker waits after a first arrival for more to join its batch.
    """

    def __init__(self, pf: PersonaFuse, model_name: str, max_batch: int = 8, queue_size: int = 64,
                 batch_wait_ms: float = 5.0) -> None:  # fmt: skip
        problems = []
        if max_batch < 1:
            problems.append(f"max_batch must be >= 1, got {max_batch}")
        if queue_size < 1:
            problems.append(f"queue_size must be >= 1, got {queue_size}")
        if batch_wait_ms < 0:
            problems.append(f"batch_wait_ms must be >= 0, got {batch_wait_ms}")
        if problems:
            raise ValueError("; ".join(problems))
        self.pf = pf
        self.model_name = model_name
        self.max_batch = max_batch
        self.queue_size = queue_size
        self.batch_wait_s = batch_wait_ms / 1000.0
        config = pf.model.config
        self.max_context = int(getattr(config, "max_position_embeddings", None) or pf.tokenizer.model_max_length)
        self.stats = EngineStats()
        self._tokenizer_lock = threading.Lock()  # HF fast tokenizers are not safe to share across threads
        self._router_lock = threading.Lock()  # the encoder runs in the worker and in /v1/route's thread pool
        self._cond = threading.Condition()
        self._pending: deque[GenerationJob] = deque()
        self._running_rows = 0
        self._held = False
        self._closing = False
        self._thread: threading.Thread | None = None
        self._eos_ids = self._collect_eos_ids()
        pad = pf.tokenizer.pad_token_id
        self._pad_id = int(pad if pad is not None else min(self._eos_ids))

    def _collect_eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for value in (getattr(self.pf.model.generation_config, "eos_token_id", None), self.pf.tokenizer.eos_token_id):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        if not ids:
            raise ValueError("the tokenizer has no EOS token; the engine cannot tell when a reply ends")
        return ids

    # ------------------------------------------------------------------ tokenizer and router
    def encode_chat(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        """Token ids of the conversation with the generation prompt (as ``PersonaFuse.chat_inputs``)."""
        with self._tokenizer_lock:
            text = self.pf.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
            return list(self.pf.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_text(self, text: str) -> list[int]:
        """Token ids of a raw prompt (the tokenizer's special tokens added, as ``pipeline`` does)."""
        with self._tokenizer_lock:
            return list(self.pf.tokenizer(text)["input_ids"])

    def _decode(self, ids: list[int]) -> str:
        with self._tokenizer_lock:
            return self.pf.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def route(self, texts: Sequence[str], personas: Sequence[PersonaChoice]) -> list[PersonaReport]:
        """The routing of each text under each persona choice; automatic ones share one encoder call."""
        reports, _ = self._routing(list(texts), list(personas))
        return reports

    def _routing(self, texts: list[str], personas: list[PersonaChoice]) -> tuple[list[PersonaReport], torch.Tensor]:
        """(reports, gates [len(texts), 10] on CPU)."""
        auto = [i for i, p in enumerate(personas) if p.source == "auto"]
        routed: dict[int, Routing] = {}
        if auto:
            with self._router_lock:
                for i, routing in zip(auto, self.pf.persona_router.route([texts[i] for i in auto])):
                    routed[i] = routing
        reports, rows = [], []
        for i, persona in enumerate(personas):
            activation: Activation | None = None
            if persona.source == "auto":
                activation, gates = routed[i].activation, routed[i].gates
            elif persona.source == "activation":
                assert persona.activation is not None
                activation = persona.activation
                with self._router_lock:
                    values = self.pf.persona_router.gates_from_activation(activation).clamp_min(0).tolist()
                gates = Gates(tuple(values))
            else:
                assert persona.gates is not None
                gates = persona.gates
            reports.append(
                PersonaReport(
                    source=persona.source,
                    preset=persona.preset,
                    activations=None
                    if activation is None
                    else {t: round(v, 6) for t, v in zip(TRAITS, activation.values)},
                    gates={p: round(v, 6) for p, v in zip(POLES, gates.values)},
                )
            )
            rows.append(torch.tensor(gates.values, dtype=torch.float32))
        return reports, torch.stack(rows)  # [batch, 10]

    # ------------------------------------------------------------------ queue
    def submit(self, jobs: Sequence[GenerationJob]) -> RequestHandle:
        """Queue one request's jobs (all or none) and return its handle; call from the event loop.

        Raises:
            EngineOverloaded: the queue is full or the engine is shutting down.
            ValueError: a job with more rows (``n``) than ``max_batch``, or no jobs.
        """
        if not jobs:
            raise ValueError("submit needs at least one job")
        for job in jobs:
            if job.params.n > self.max_batch:
                raise ValueError(f"n={job.params.n} exceeds the server's max batch of {self.max_batch}; lower n")
        handle = RequestHandle(jobs, asyncio.get_running_loop())
        with self._cond:
            if self._closing:
                self.stats.rejected += 1
                raise EngineOverloaded("the server is shutting down")
            self._drop_cancelled()  # a timed-out or disconnected request no longer holds a queue slot
            if len(self._pending) + len(jobs) > self.queue_size:
                self.stats.rejected += 1
                raise EngineOverloaded(f"the request queue is full ({self.queue_size} waiting)")
            for index, job in enumerate(jobs):
                job.index, job.handle = index, handle
                self._pending.append(job)
            self.stats.requests += 1
            self._cond.notify_all()
        self.start()
        return handle

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Inside, the worker starts no new batch (queued jobs wait): deterministic batching for tests."""
        with self._cond:
            self._held = True
        try:
            yield
        finally:
            with self._cond:
                self._held = False
                self._cond.notify_all()

    def pending(self) -> int:
        """Jobs waiting in the queue."""
        with self._cond:
            return len(self._pending)

    def health(self) -> dict[str, object]:
        """Queue and batch counters."""
        with self._cond:
            return {
                "pending": len(self._pending),
                "queue_size": self.queue_size,
                "running_rows": self._running_rows,
                "max_batch": self.max_batch,
                "batches": self.stats.batches,
                "requests": self.stats.requests,
                "rejected": self.stats.rejected,
                "draining": self._closing,
            }

    # ------------------------------------------------------------------ worker
    def start(self) -> None:
        """Start the worker thread if it is not running (also after :meth:`shutdown`)."""
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                return
            self._closing = False
            self._thread = threading.Thread(target=self._work, name="personafuse-engine", daemon=True)
            self._thread.start()

    def shutdown(self, timeout: float | None = None) -> None:
        """Refuse new jobs, let the worker finish every queued and running job, then stop it."""
        with self._cond:
            self._closing = True
            self._held = False
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                logger.warning("engine worker still busy after %.1fs; leaving it to finish", timeout or 0)

    def _take_batch(self) -> list[GenerationJob] | None:
        """Block until a batch is ready; None when shutting down with nothing left."""
        with self._cond:
            while True:
                self._drop_cancelled()
                if self._pending and not self._held:
                    break
                if self._closing and not self._pending:
                    return None
                self._cond.wait()
            deadline = time.monotonic() + self.batch_wait_s
            while not self._closing and sum(j.params.n for j in self._pending) < self.max_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            self._drop_cancelled()
            if not self._pending:
                return []
            batch = self._select()
            self._running_rows = sum(j.params.n for j in batch)
            return batch

    def _drop_cancelled(self) -> None:
        kept = deque(j for j in self._pending if not j.cancelled)
        self.stats.cancelled += len(self._pending) - len(kept)
        self._pending = kept

    def _select(self) -> list[GenerationJob]:
        """Remove and return the first job and the later compatible ones that fit (arrival order)."""
        first = self._pending.popleft()
        batch, key = [first], first.params.batch_key()
        rows, longest_prompt, longest_reply = first.params.n, len(first.prompt_ids), first.params.max_tokens
        if key is not None:
            for job in list(self._pending):
                if job.params.batch_key() != key or rows + job.params.n > self.max_batch:
                    continue
                width = max(longest_prompt, len(job.prompt_ids)) + max(longest_reply, job.params.max_tokens)
                if width > self.max_context:  # the padded batch must fit the position table
                    continue
                self._pending.remove(job)
                batch.append(job)
                rows += job.params.n
                longest_prompt = max(longest_prompt, len(job.prompt_ids))
                longest_reply = max(longest_reply, job.params.max_tokens)
        return batch

    def _work(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            if not batch:
                continue
            try:
                self._run_batch(batch)
            except Exception as exc:  # one bad batch must not kill the server: fail its requests, go on
                logger.exception("batch of %d job(s) failed", len(batch))
                self.stats.failed += 1
                for handle in {id(j.handle): j.handle for j in batch}.values():
                    if handle is not None:
                        handle.push(Failed(f"generation failed: {type(exc).__name__}: {exc}"))
            finally:
                with self._cond:
                    self._running_rows = 0

    def _run_batch(self, jobs: list[GenerationJob]) -> None:
        reports, job_gates = self._routing([j.route_text for j in jobs], [j.persona for j in jobs])
        for job, report in zip(jobs, reports):
            job.handle.push(Started(job.index, report))  # type: ignore[union-attr]
        rows = [RowState(job, choice) for job in jobs for choice in range(job.params.n)]
        row_gates = torch.cat([g.expand(j.params.n, -1) for j, g in zip(jobs, job_gates.unsqueeze(1))])  # [rows, 10]
        input_ids, attention_mask = left_pad([r.job.prompt_ids for r in rows], self._pad_id)  # [rows, width]
        params = jobs[0].params
        tracker = RowTracker(rows, self._decode, self._eos_ids)
        kwargs: dict[str, object] = {
            "max_new_tokens": max(j.params.max_tokens for j in jobs),
            "pad_token_id": self._pad_id,
            "eos_token_id": sorted(self._eos_ids),
            "stopping_criteria": stopping_criteria(tracker),
        }
        if params.greedy:
            kwargs["do_sample"] = False
        else:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0)
            if params.seed is not None:  # a seeded job runs alone (batch_key), so the global seed is its own
                torch.manual_seed(params.seed)
        device = self.pf.device
        self.stats.batches += 1
        self.stats.rows += len(rows)
        self.stats.batch_sizes[len(rows)] += 1
        self.stats.last_batch_rows = len(rows)
        self.stats.last_batch_mixes = len({tuple(g.tolist()) for g in row_gates})
        with torch.inference_mode(), self.pf.using_gates(row_gates.to(device)):
            self.pf.model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), **kwargs)
        tracker.finish()
        self.stats.cancelled += sum(1 for j in jobs if j.cancelled)


__all__ = [  # the job and tracker names are re-exported: the app and tests import them from here
    "Delta",
    "Engine",
    "EngineOverloaded",
    "EngineStats",
    "Failed",
    "Finished",
    "GenerationJob",
    "HFEngine",
    "RequestHandle",
    "RowTracker",
    "SamplingParams",
    "Started",
    "Event",
    "find_stop",
    "held_back",
    "left_pad",
]
