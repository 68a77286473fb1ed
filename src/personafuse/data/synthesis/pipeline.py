"""The synthesis run: stage after stage, items of a stage concurrently under one semaphore, resumable.

Files under the output folder (all append-only JSONL, keyed by ``id``):

=====================  ==========================================================================
``situations.jsonl``   stage 1, one row per kept situation (``syn-<domain>-<nnnn>``)
``annotations.jsonl``  stage 2, cues, rationale and activation
``poles.jsonl``        stage 3, the ten pole replies
``ideal.jsonl``        stage 4, ideal and rejected replies
``records.jsonl``      the complete :class:`SituationRecord` s, the pipeline's output
``rejected.jsonl``     every rejected item or candidate, with stage, category and reason
``runs.jsonl``         one row per run: the config (no key), the summary, how it ended
=====================  ==========================================================================

Rerunning with the same folder skips every id a stage has already written (or rejected), so an interrupted
run loses at most the requests in flight and never writes an id twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from personafuse.data.jsonl import append_jsonl
from personafuse.data.synthesis.client import ChatClient, RequestFailed, ServerUnreachable
from personafuse.data.synthesis.config import SynthesisConfig
from personafuse.data.synthesis.dedup import NearDuplicateFilter
from personafuse.data.synthesis.json_repair import ItemRejected
from personafuse.data.synthesis.stages import (
    ITEM_STAGES,
    ItemStage,
    StageContext,
    assemble_record,
    conversation_text,
    draft_situations,
    parse_draft,
    run_item,
)
from personafuse.data.synthesis.store import RejectLog, StageStore

__all__ = ["STAGE_NAMES", "SynthesisPipeline", "SynthesisSummary", "synthesize"]

logger = logging.getLogger(__name__)

STAGE_NAMES: tuple[str, ...] = ("situations", *(s.name for s in ITEM_STAGES), "records")
"""Stages in run order; ``records`` is the assembly of the four into complete records (no request)."""

_AVOID_SHOWN = 12
_AVOID_WORDS = 14

RowHook = Callable[[str, dict[str, Any]], None]


@dataclass
class SynthesisSummary:
    """What a run did. Counts of accepted, rejected and failed items are for this run only."""

    out_dir: str
    """The output folder."""
    model: str
    """The model asked."""
    seconds: float = 0.0
    """Wall time of the run."""
    requests: int = 0
    """HTTP requests sent, retries and repairs included."""
    retries: int = 0
    """Requests repeated after a 429, 5xx, timeout or connection error."""
    repairs: int = 0
    """Requests that sent a validation error back to the model."""
    prompt_tokens: int = 0
    """Prompt tokens, from the API's ``usage`` field (0 when the server does not report it)."""
    completion_tokens: int = 0
    """Completion tokens, from the API's ``usage`` field."""
    accepted: dict[str, int] = field(default_factory=dict)
    """Items written per stage."""
    already_done: dict[str, int] = field(default_factory=dict)
    """Items per stage found done (or rejected) by an earlier run and skipped."""
    rejected: dict[str, int] = field(default_factory=dict)
    """Rejections by ``"<stage>: <category>"`` (details in ``rejected.jsonl``); final, not retried on resume."""
    failed: dict[str, int] = field(default_factory=dict)
    """Requests given up after all retries, by ``"<stage>: <category>"``; a rerun asks again."""
    incomplete_domains: dict[str, str] = field(default_factory=dict)
    """Domains that did not reach ``per_domain`` situations, with how far they got."""
    records: int = 0
    """Complete records in ``records.jsonl`` after the run (earlier runs included)."""

    @property
    def items_rejected(self) -> int:
        """Total rejections this run."""
        return sum(self.rejected.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (``--json``)."""
        out = asdict(self)
        out["items_rejected"] = self.items_rejected
        return out


class SynthesisPipeline:
    """One synthesis run over ``config.out_dir``; call :meth:`run` once."""

    def __init__(
        self,
        config: SynthesisConfig,
        *,
        client: ChatClient | None = None,
        show_progress: bool = False,
        console: Console | None = None,
        on_row: RowHook | None = None,
    ) -> None:
        """Prepare the run (reads existing stage files; sends nothing).

        Args:
            config: the validated configuration.
            client: a chat client to use instead of one built from ``config``.
            show_progress: draw a rich progress bar (on ``console``, default stderr).
            console: where the progress bar goes.
            on_row: called as ``on_row(stage, row)`` after each row is written (for tests and custom reporting;
                an exception it raises stops the run like a crash would).
        """
        self.config = config
        self.client = client or ChatClient(config)
        self.ctx = StageContext(config, self.client)
        self.on_row = on_row
        out = config.out_dir
        self.stores: dict[str, StageStore] = {"situations": StageStore(out / "situations.jsonl")}
        for stage in ITEM_STAGES:
            self.stores[stage.name] = StageStore(out / stage.filename)
        self.stores["records"] = StageStore(out / "records.jsonl")
        self.rejects = RejectLog(out / "rejected.jsonl")
        self.dedup = NearDuplicateFilter(config.dedup_threshold, config.dedup_opening_words)
        for item_id, row in self.stores["situations"].rows.items():
            self.dedup.add(item_id, conversation_text(row["messages"]), row["domain"])
        self.summary = SynthesisSummary(out_dir=str(out), model=config.model)
        self._rejected: Counter[str] = Counter()
        self._failed: Counter[str] = Counter()
        self._accepted: Counter[str] = Counter()
        self._semaphore = asyncio.Semaphore(config.concurrency)
        self._progress = Progress(
            TextColumn("{task.description:<11}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[red]{task.fields[rejected]} rejected"),
            TimeElapsedColumn(),
            console=console or Console(stderr=True),
            disable=not show_progress,
            transient=False,
        )

    # ---- bookkeeping -------------------------------------------------------------------------------------

    def _write(self, stage: str, row: dict[str, Any]) -> None:
        self.stores[stage].append(row)
        self._accepted[stage] += 1
        if self.on_row is not None:
            self.on_row(stage, row)

    def _reject(self, stage: str, item_id: str | None, domain: str, exc: ItemRejected) -> None:
        logger.info("rejected %s %s: %s", stage, item_id or domain, exc)
        self.rejects.add(stage, item_id, domain, exc.category, exc.reason, exc.reply)
        self._rejected[f"{stage}: {exc.category}"] += 1

    def _request_failed(self, stage: str, item_id: str | None, domain: str, exc: RequestFailed) -> None:
        if not exc.transient:
            if self.client.stats.answered == 0:
                raise ServerUnreachable(
                    f"{self.config.base_url} rejected the first request ({exc.message}); check --model and the "
                    "options this server supports (--json-mode, --seed, --max-tokens)"
                )
            self._reject(stage, item_id, domain, ItemRejected(exc.category, exc.message))
            return
        logger.warning("%s %s failed: %s", stage, item_id or domain, exc)
        self._failed[f"{stage}: {exc.category}"] += 1

    def _domain_of(self, item_id: str) -> str:
        row = self.stores["situations"].get(item_id)
        return row["domain"] if row else ""

    async def _gather(self, coroutines: Iterable[Awaitable[None]]) -> None:
        # Like a TaskGroup (Python 3.11+): the first exception (a fatal error, a crash in on_row, Ctrl-C) cancels
        # the siblings, so nothing keeps writing after the run has stopped.
        tasks = [asyncio.ensure_future(c) for c in coroutines]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # ---- stage 1: situations per domain ------------------------------------------------------------------

    def _avoid(self, domain: str) -> list[str]:
        rows = [r for r in self.stores["situations"].rows.values() if r["domain"] == domain][-_AVOID_SHOWN:]
        return [" ".join(r["messages"][0]["content"].split()[:_AVOID_WORDS]) + " ..." for r in rows]

    async def _fill_domain(self, domain: str, task: Any) -> None:
        cfg = self.config
        store = self.stores["situations"]
        free = [cfg.record_id(domain, k) for k in range(1, cfg.per_domain + 1)]
        free = [i for i in free if i not in store]
        rounds = 0
        while free and rounds < cfg.max_rounds_per_domain:
            rounds += 1
            key = f"{domain}:{cfg.per_domain - len(free)}:{rounds}"  # per domain, so concurrency cannot change it
            try:
                async with self._semaphore:
                    prompt, candidates = await draft_situations(
                        self.ctx, domain, min(len(free), cfg.batch_size), self._avoid(domain), key
                    )
            except ItemRejected as exc:
                self._reject("situations", None, domain, exc)
                self._progress.update(task, rejected=self._stage_rejections("situations"))
                continue
            except RequestFailed as exc:
                self._request_failed("situations", None, domain, exc)
                continue
            for raw in candidates:
                if not free:
                    break  # a model that returned more than asked: the surplus is not needed
                try:
                    draft = parse_draft(raw)
                    text = conversation_text([m.model_dump() for m in draft.messages])
                    duplicate = self.dedup.check(text, group=domain)
                    if duplicate is not None:
                        raise ItemRejected(duplicate.kind, duplicate.reason(), reply=text)
                except ItemRejected as exc:
                    self._reject("situations", None, domain, exc)
                    self._progress.update(task, rejected=self._stage_rejections("situations"))
                    continue
                item_id = free.pop(0)
                row = {
                    "id": item_id,
                    "domain": domain,
                    "messages": [m.model_dump() for m in draft.messages],
                    "prompt": prompt,
                    "model": cfg.model,
                }
                self.dedup.add(item_id, text, domain)
                self._write("situations", row)
                self._progress.advance(task)
        if free:
            done = cfg.per_domain - len(free)
            self.summary.incomplete_domains[domain] = (
                f"{done}/{cfg.per_domain} situations after {rounds} batch requests"
            )
            logger.warning(
                "domain %s: only %d of %d situations after %d batch requests", domain, done, cfg.per_domain, rounds
            )

    async def _run_situations(self) -> None:
        cfg = self.config
        store = self.stores["situations"]
        wanted = {d: [cfg.record_id(d, k) for k in range(1, cfg.per_domain + 1)] for d in cfg.domain_descriptions}
        done = sum(i in store for ids in wanted.values() for i in ids)
        self.summary.already_done["situations"] = done
        task = self._progress.add_task("situations", total=sum(map(len, wanted.values())) - done, rejected=0)
        await self._gather(self._fill_domain(domain, task) for domain in wanted)

    # ---- stages 2-4: one request per situation -----------------------------------------------------------

    def _stage_rejections(self, stage: str) -> int:
        return sum(n for key, n in self._rejected.items() if key.startswith(f"{stage}: "))

    def _ready(self, needs: tuple[str, ...]) -> list[str]:
        """Ids of this run's domains that every stage in ``needs`` has written, in id order."""
        ids = [
            i for i, row in self.stores["situations"].rows.items() if row["domain"] in self.config.domain_descriptions
        ]
        return sorted(i for i in ids if all(i in self.stores[name] for name in needs))

    def _todo(self, stage: str, needs: tuple[str, ...]) -> list[str]:
        ready = self._ready(needs)
        store = self.stores[stage]
        skip_rejected = not self.config.retry_rejected
        todo = [i for i in ready if i not in store and not (skip_rejected and self.rejects.is_rejected(stage, i))]
        self.summary.already_done[stage] = len(ready) - len(todo)
        return todo

    async def _item(self, stage: ItemStage, item_id: str, task: Any) -> None:
        rows = {name: self.stores[name].rows[item_id] for name in stage.needs}
        try:
            async with self._semaphore:
                row = await run_item(self.ctx, stage, item_id, rows)
        except ItemRejected as exc:
            self._reject(stage.name, item_id, self._domain_of(item_id), exc)
            self._progress.update(task, rejected=self._stage_rejections(stage.name))
        except RequestFailed as exc:
            self._request_failed(stage.name, item_id, self._domain_of(item_id), exc)
        else:
            self._write(stage.name, row)
        self._progress.advance(task)

    async def _run_item_stage(self, stage: ItemStage) -> None:
        todo = self._todo(stage.name, stage.needs)
        task = self._progress.add_task(stage.name, total=len(todo), rejected=0)
        await self._gather(self._item(stage, item_id, task) for item_id in todo)

    # ---- assembly ----------------------------------------------------------------------------------------

    def _assemble(self) -> None:
        needs = ("situations", *(s.name for s in ITEM_STAGES))
        todo = self._todo("records", needs)
        task = self._progress.add_task("records", total=len(todo), rejected=0)
        for item_id in todo:
            rows = {name: self.stores[name].rows[item_id] for name in needs}
            try:
                record = assemble_record(item_id, rows)
            except ItemRejected as exc:
                self._reject("records", item_id, self._domain_of(item_id), exc)
                self._progress.update(task, rejected=self._stage_rejections("records"))
            else:
                self._write("records", record.model_dump(mode="json"))
            self._progress.advance(task)

    # ---- the run -----------------------------------------------------------------------------------------

    def _finish_summary(self, started: float) -> SynthesisSummary:
        stats = self.client.stats
        summary = self.summary
        summary.seconds = round(time.monotonic() - started, 3)
        summary.requests, summary.retries, summary.repairs = stats.requests, stats.retries, self.ctx.repairs
        summary.prompt_tokens, summary.completion_tokens = stats.prompt_tokens, stats.completion_tokens
        summary.accepted = {name: self._accepted[name] for name in STAGE_NAMES}
        summary.rejected = dict(sorted(self._rejected.items()))
        summary.failed = dict(sorted(self._failed.items()))
        summary.records = len(self.stores["records"])
        return summary

    async def run(self) -> SynthesisSummary:
        """Run (or resume) every stage and return the summary.

        Raises:
            ServerUnreachable: the endpoint cannot be reached, refuses the key or does not know the model.
            asyncio.CancelledError: the run was cancelled (Ctrl-C); everything written so far is kept.
        """
        started = time.monotonic()
        begun = datetime.now(timezone.utc).isoformat(timespec="seconds")
        status = "interrupted"
        self.config.out_dir.mkdir(parents=True, exist_ok=True)
        try:
            with self._progress:
                await self._run_situations()
                for stage in ITEM_STAGES:
                    await self._run_item_stage(stage)
                self._assemble()
            status = "completed"
            return self._finish_summary(started)
        except Exception as exc:
            status = f"failed: {type(exc).__name__}: {exc}"
            raise
        finally:
            summary = self._finish_summary(started)
            append_jsonl(
                self.config.out_dir / "runs.jsonl",
                {
                    "started": begun,
                    "status": status,
                    "config": self.config.public_dict(),
                    "summary": summary.to_dict(),
                },
            )
            await self.client.aclose()


async def synthesize(
    config: SynthesisConfig, *, show_progress: bool = False, on_row: RowHook | None = None
) -> SynthesisSummary:
    """Run the synthesis pipeline of ``config`` (see :class:`SynthesisPipeline`) and return its summary."""
    return await SynthesisPipeline(config, show_progress=show_progress, on_row=on_row).run()
