"""What each synthesis stage asks the model for, as pydantic models (the JSON shapes in the prompt files).

These are the per-stage gates; the assembled record is validated once more as a
:class:`~personafuse.data.schema.SituationRecord`, which stays the single definition of a complete record.
Unknown top-level keys are ignored (chat models like to add a "notes" key); everything inside is strict.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from personafuse.data.schema import Analysis, Message, check_pole_responses
from personafuse.traits import POLES, TRAITS

__all__ = ["AnnotationReply", "IdealReply", "PolesReply", "SituationDraft", "SituationsReply"]

MAX_REPLY_CHARS = 2000
"""A pole, ideal or rejected reply longer than this is a runaway generation, not a 1–6 sentence reply."""


class SituationsReply(BaseModel):
    """Stage 1 reply: a batch of situations. Each item is validated on its own as a :class:`SituationDraft`, so
    one bad situation does not cost the good ones of the same batch."""

    model_config = ConfigDict(extra="ignore")
    situations: list[dict[str, Any]] = Field(min_length=1)


class SituationDraft(BaseModel):
    """One situation: 1–3 user turns, optionally with assistant turns between them, ending with the user."""

    model_config = ConfigDict(extra="ignore")
    messages: list[Message] = Field(min_length=1, max_length=6)

    @field_validator("messages")
    @classmethod
    def _turns(cls, value: list[Message]) -> list[Message]:
        # Same rules as SituationRecord.messages, checked here so a bad draft is rejected before it costs the
        # three later stages; the record validation re-checks them.
        if any(m.role == "system" for m in value):
            raise ValueError("situation messages hold only user and assistant turns, no system turn")
        if value[-1].role != "user":
            raise ValueError("the last message must be the user's")
        if sum(m.role == "user" for m in value) > 3:
            raise ValueError("at most 3 user turns")
        return value


class AnnotationReply(BaseModel):
    """Stage 2 reply: the trait-activation chain of thought (cues, rationale) and the activation per trait."""

    model_config = ConfigDict(extra="ignore")
    analysis: Analysis
    activation: dict[str, float]

    @field_validator("activation")
    @classmethod
    def _activation(cls, value: dict[str, float]) -> dict[str, float]:
        if set(value) != set(TRAITS):
            raise ValueError(f"activation needs exactly the keys {list(TRAITS)}, got {sorted(value)}")
        outside = {t: v for t, v in value.items() if not -1.0 <= v <= 1.0}
        if outside:
            raise ValueError(f"activation values must be in [-1, 1], got {outside}")
        return {t: round(float(value[t]), 2) for t in TRAITS}


class PolesReply(BaseModel):
    """Stage 3 reply: one reply per pole, all ten, non-blank and distinct."""

    model_config = ConfigDict(extra="ignore")
    responses: dict[str, str]

    @field_validator("responses")
    @classmethod
    def _ten_poles(cls, value: dict[str, str]) -> dict[str, str]:
        value = check_pole_responses(value)
        long = [p for p in POLES if len(value[p]) > MAX_REPLY_CHARS]
        if long:
            raise ValueError(f"responses for {long} are longer than {MAX_REPLY_CHARS} characters; keep 1-6 sentences")
        return {p: value[p].strip() for p in POLES}


class IdealReply(BaseModel):
    """Stage 4 reply: the ideal reply for the activation profile and a fluent but mismatched rejected one."""

    model_config = ConfigDict(extra="ignore")
    ideal: str = Field(min_length=1, max_length=MAX_REPLY_CHARS)
    rejected: str = Field(min_length=1, max_length=MAX_REPLY_CHARS)

    @field_validator("ideal", "rejected")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the reply is blank")
        return value.strip()

    @field_validator("rejected")
    @classmethod
    def _distinct(cls, value: str, info: ValidationInfo) -> str:
        if value == info.data.get("ideal"):
            raise ValueError("ideal and rejected replies are identical; rejected needs a mismatched personality")
        return value
