"""The situation record: one JSON line per situation, shared by the synthesis pipeline, the seed corpus,
training and evaluation. Versioned so that a later change of fields is detected rather than misread.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from personafuse.traits import POLES, TRAITS

SCHEMA_VERSION = 1

DOMAINS: tuple[str, ...] = (
    "grief_loss",
    "mental_health",
    "customer_service",
    "workplace_conflict",
    "good_news",
    "creative_brainstorming",
    "technical_help",
    "factual_questions",
    "planning",
    "critique_negotiation",
    "emergency_safety",
    "casual_chat",
)
"""Domains of the seed corpus; user corpora may use any other snake_case name."""


def check_pole_responses(value: dict[str, str]) -> dict[str, str]:
    """The ten pole replies in :data:`POLES` order; shared by the record schema and the synthesis stage.

    Raises:
        ValueError: a missing or unknown pole, a blank reply, or two identical replies.
    """
    missing = [p for p in POLES if p not in value]
    extra = sorted(set(value) - set(POLES))
    if missing or extra:
        raise ValueError(f"responses need all ten poles; missing {missing}, unknown {extra}")
    blank = [p for p in POLES if not value[p].strip()]
    if blank:
        raise ValueError(f"responses for {blank} are blank")
    texts = [value[p].strip() for p in POLES]
    if len(set(texts)) != len(texts):
        raise ValueError("two pole responses are identical; each pole needs its own reply")
    return {p: value[p] for p in POLES}


class Message(BaseModel):
    """One chat turn."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1)

    @field_validator("content")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("message content is blank")
        return value


class Analysis(BaseModel):
    """The trait-activation chain of thought: situational cues, then why they make traits relevant."""

    model_config = ConfigDict(extra="forbid")
    cues: list[str] = Field(min_length=1)
    rationale: str = Field(min_length=20)


class SituationRecord(BaseModel):
    """One situation with its annotation, ten pole replies, an ideal and a rejected reply."""

    model_config = ConfigDict(extra="forbid")
    schema_version: int = SCHEMA_VERSION
    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    domain: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    messages: list[Message] = Field(min_length=1, max_length=6)
    analysis: Analysis
    activation: dict[str, float]
    responses: dict[str, str]
    ideal: str = Field(min_length=1)
    rejected: str = Field(min_length=1)
    split: Literal["train", "val", "test"] = "train"

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value != SCHEMA_VERSION:
            raise ValueError(f"schema_version {value} is not supported; this personafuse reads {SCHEMA_VERSION}")
        return value

    @field_validator("messages")
    @classmethod
    def _ends_with_user(cls, value: list[Message]) -> list[Message]:
        turns = [m for m in value if m.role != "system"]
        if not turns or turns[-1].role != "user":
            raise ValueError("messages must end with a user turn")
        if sum(m.role == "user" for m in turns) > 3:
            raise ValueError("messages hold at most 3 user turns")
        return value

    @field_validator("activation")
    @classmethod
    def _activation_complete(cls, value: dict[str, float]) -> dict[str, float]:
        if set(value) != set(TRAITS):
            raise ValueError(f"activation needs exactly the keys {list(TRAITS)}, got {sorted(value)}")
        for trait, number in value.items():
            if not -1.0 <= float(number) <= 1.0:
                raise ValueError(f"activation {trait}={number} is outside [-1, 1]")
        return {t: float(value[t]) for t in TRAITS}

    @field_validator("responses")
    @classmethod
    def _responses_complete(cls, value: dict[str, str]) -> dict[str, str]:
        return check_pole_responses(value)

    @model_validator(mode="after")
    def _distinct_replies(self) -> SituationRecord:
        if self.ideal.strip() == self.rejected.strip():
            raise ValueError("ideal and rejected replies are identical")
        return self

    def context_text(self) -> str:
        """The conversation as one string, the input of the persona encoder."""
        return "\n".join(m.content for m in self.messages if m.role != "system")
