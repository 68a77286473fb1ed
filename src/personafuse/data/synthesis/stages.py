"""The four synthesis stages, each one model request per item with validation and repair:

1. ``situations``: a batch of new situations for one domain (:func:`draft_situations`);
2. ``annotate``: cues, rationale and activation for one situation;
3. ``poles``: ten pole replies for one situation;
4. ``ideal``: the ideal and the rejected reply for one annotated situation;

then :func:`assemble_record` joins the four rows of an id into a :class:`SituationRecord`. The text of every
request comes from the versioned prompt files; this module only fills in their placeholders.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from personafuse.data.schema import SituationRecord
from personafuse.data.split import assign_split
from personafuse.data.synthesis.client import ChatClient
from personafuse.data.synthesis.config import SynthesisConfig
from personafuse.data.synthesis.json_repair import ItemRejected, ask_validated, format_validation_error
from personafuse.data.synthesis.prompts import PromptTemplate, load_fragment, load_prompt
from personafuse.data.synthesis.replies import (
    AnnotationReply,
    IdealReply,
    PolesReply,
    SituationDraft,
    SituationsReply,
)
from personafuse.traits import TRAITS, activated_poles

__all__ = [
    "ITEM_STAGES",
    "ItemStage",
    "StageContext",
    "assemble_record",
    "conversation_text",
    "draft_situations",
    "parse_draft",
    "run_item",
]

Rows = dict[str, dict[str, Any]]
"""The rows of one id from the earlier stages, by stage name."""


def conversation_text(messages: list[dict[str, Any]]) -> str:
    """A conversation as the prompts show it: ``User: ...`` and ``Assistant: ...`` blocks."""
    names = {"user": "User", "assistant": "Assistant", "system": "System"}
    return "\n\n".join(f"{names[m['role']]}: {m['content']}" for m in messages)


def _request_seed(base: int | None, *parts: object) -> int | None:
    # Distinct per stage, item and attempt, so a repeated request (a repair, a new round of a domain) does not
    # get the very same sample back from a seeded server, yet the whole run stays reproducible.
    if base is None:
        return None
    digest = hashlib.sha256(":".join(str(p) for p in (base, *parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


@dataclass
class StageContext:
    """What every stage request needs: the config, the client, the prompts, and the repair counter."""

    config: SynthesisConfig
    client: ChatClient
    repairs: int = 0
    """Repair requests sent so far (requests that echoed a validation error back to the model)."""
    _repair: PromptTemplate | None = field(default=None, repr=False)

    def prompt(self, name: str) -> PromptTemplate:
        """The template ``<name>.<config.prompt_version>``."""
        return load_prompt(name, self.config.prompt_version)

    @property
    def pole_guide(self) -> str:
        """The pole table shared by the annotate, poles and ideal prompts."""
        return load_fragment("pole_guide", self.config.prompt_version)

    def repair_message(self, error: str) -> str:
        """The user turn that sends a validation error back to the model."""
        if self._repair is None:
            self._repair = self.prompt("repair")
        return self._repair.render(error=error)[-1]["content"]

    async def ask(self, stage: str, key: str, messages: list[dict[str, str]], reply: type[BaseModel]) -> Any:
        """Send ``messages`` and return the reply validated as ``reply``, repairing up to ``max_repairs`` times.

        Raises:
            ItemRejected: still invalid after the repairs.
            RequestFailed: the request itself failed (see :meth:`ChatClient.complete`).
        """

        async def complete(conversation: list[dict[str, str]], attempt: int) -> str:
            if attempt:
                self.repairs += 1
            seed = _request_seed(self.config.seed, stage, key, attempt)
            return (await self.client.complete(conversation, seed=seed)).text

        validated = await ask_validated(
            complete, messages, reply, max_repairs=self.config.max_repairs, repair_message=self.repair_message
        )
        return validated.value


async def draft_situations(
    ctx: StageContext, domain: str, count: int, avoid: list[str], key: str
) -> tuple[str, list[dict[str, Any]]]:
    """Stage 1: ask for ``count`` new situations of ``domain``.

    Args:
        ctx: the stage context.
        domain: the domain name (its description comes from the config).
        count: how many situations to ask for.
        avoid: openings of situations already kept for this domain, listed in the prompt so they are not repeated.
        key: distinguishes this request's seed from the other rounds of the domain.

    Returns:
        The prompt id and the raw situation objects (validate each with :func:`parse_draft`).

    Raises:
        ItemRejected: the reply stays invalid JSON (or lacks a non-empty ``situations`` list) after the repairs.
        RequestFailed: the request failed.
    """
    template = ctx.prompt("situations")
    avoid_block = ""
    if avoid:
        lines = "\n".join(f"- {text}" for text in avoid)
        avoid_block = (
            f"\nSituations already written for this domain; do not repeat their openings or topics:\n{lines}\n"
        )
    messages = template.render(
        count=str(count), domain=domain, description=ctx.config.domain_descriptions[domain], avoid=avoid_block
    )
    reply: SituationsReply = await ctx.ask("situations", key, messages, SituationsReply)
    return template.name, reply.situations


def parse_draft(raw: dict[str, Any]) -> SituationDraft:
    """Validate one situation object of a stage-1 reply.

    Raises:
        ItemRejected: ``schema:messages`` (or the failing field), with the validation error and the object.
    """
    try:
        return SituationDraft.model_validate(raw)
    except ValidationError as exc:
        loc = exc.errors(include_url=False)[0]["loc"]
        category = f"schema:{loc[0]}" if loc else "schema:situation"
        raise ItemRejected(category, format_validation_error(exc), reply=json.dumps(raw, ensure_ascii=False)) from None


def _annotation_vars(rows: Rows) -> dict[str, str]:
    situation = rows["situations"]
    return {"domain": situation["domain"], "conversation": conversation_text(situation["messages"])}


def _ideal_vars(rows: Rows) -> dict[str, str]:
    annotation = rows["annotate"]
    activation = annotation["activation"]
    poles = activated_poles(activation)
    return {
        **_annotation_vars(rows),
        "cues": "; ".join(annotation["analysis"]["cues"]),
        "rationale": annotation["analysis"]["rationale"],
        "activation": ", ".join(f"{t} {activation[t]:+.2f}" for t in TRAITS),
        "activated": ", ".join(poles) if poles else "none (a neutral, ordinary reply fits)",
    }


@dataclass(frozen=True)
class ItemStage:
    """A per-situation stage: which earlier rows it reads, which prompt it fills, what reply it validates."""

    name: str
    """Stage name, used in the summary and the rejected-items file."""
    filename: str
    """Its append-only JSONL file under the output folder."""
    prompt: str
    """Prompt file name without the version."""
    needs: tuple[str, ...]
    """Stages whose rows of the same id it needs."""
    reply: type[BaseModel]
    """What the model's JSON must validate as."""
    variables: Callable[[Rows], dict[str, str]]
    """Template values from the earlier rows."""
    fields: Callable[[Any], dict[str, Any]]
    """The row's payload from the validated reply."""


ITEM_STAGES: tuple[ItemStage, ...] = (
    ItemStage(
        "annotate",
        "annotations.jsonl",
        "annotate",
        ("situations",),
        AnnotationReply,
        _annotation_vars,
        lambda r: {"analysis": r.analysis.model_dump(), "activation": r.activation},
    ),
    ItemStage(
        "poles",
        "poles.jsonl",
        "poles",
        ("situations", "annotate"),
        PolesReply,
        _annotation_vars,
        lambda r: {"responses": r.responses},
    ),
    ItemStage(
        "ideal",
        "ideal.jsonl",
        "ideal",
        ("situations", "annotate", "poles"),
        IdealReply,
        _ideal_vars,
        lambda r: {"ideal": r.ideal, "rejected": r.rejected},
    ),
)
"""Stages 2–4 in order. ``poles`` waits for ``annotate`` only so that no tokens go to situations whose annotation
was rejected; ``ideal`` waits for ``poles`` for the same reason."""


async def run_item(ctx: StageContext, stage: ItemStage, item_id: str, rows: Rows) -> dict[str, Any]:
    """Run ``stage`` for one situation and return the row to append.

    Raises:
        ItemRejected: the reply stayed invalid after the repairs.
        RequestFailed: the request failed.
    """
    template = ctx.prompt(stage.prompt)
    messages = template.render(**stage.variables(rows), pole_guide=ctx.pole_guide)
    reply = await ctx.ask(stage.name, item_id, messages, stage.reply)
    return {"id": item_id, **stage.fields(reply), "prompt": template.name, "model": ctx.config.model}


def assemble_record(item_id: str, rows: Rows) -> SituationRecord:
    """Join the four stage rows of ``item_id`` into a complete record, with its split from the id's hash.

    Raises:
        ItemRejected: ``record:<field>`` when the joined record fails the schema (e.g. ideal equal to rejected).
    """
    situation, annotation = rows["situations"], rows["annotate"]
    try:
        return SituationRecord(
            id=item_id,
            domain=situation["domain"],
            messages=situation["messages"],
            analysis=annotation["analysis"],
            activation=annotation["activation"],
            responses=rows["poles"]["responses"],
            ideal=rows["ideal"]["ideal"],
            rejected=rows["ideal"]["rejected"],
            split=assign_split(item_id),
        )
    except ValidationError as exc:
        loc = exc.errors(include_url=False)[0]["loc"]
        raise ItemRejected(f"record:{loc[0] if loc else 'record'}", format_validation_error(exc)) from None
