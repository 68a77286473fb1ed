"""Strict JSON extraction from a model reply, pydantic validation, and a bounded repair conversation.

Strict means the JSON itself is never patched locally (no trailing-comma or quote fixing): a reply either holds
a valid JSON object or it is sent back to the model with the exact parser or validation error, at most
``max_repairs`` times. What is tolerated is packaging: surrounding prose and Markdown code fences, because
chat models add them even when told not to.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

__all__ = [
    "ItemRejected",
    "ReplyInvalid",
    "Validated",
    "ask_validated",
    "extract_json_object",
    "format_validation_error",
    "validate_reply",
]

ModelT = TypeVar("ModelT", bound=BaseModel)

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)
_MAX_ERRORS_SHOWN = 5


class ReplyInvalid(ValueError):
    """A reply that cannot be used; ``category`` is a short stable label, ``detail`` the message for the model."""

    def __init__(self, category: str, detail: str) -> None:
        super().__init__(f"{category}: {detail}")
        self.category = category
        self.detail = detail


class ItemRejected(Exception):
    """An item given up on: still invalid after all repairs (or judged a duplicate, or a bad request)."""

    def __init__(self, category: str, reason: str, reply: str = "") -> None:
        super().__init__(f"{category}: {reason}")
        self.category = category
        self.reason = reason
        self.reply = reply


def _balanced_objects(text: str) -> list[str]:
    """Every top-level ``{...}`` span of ``text`` whose braces balance, skipping braces inside JSON strings."""
    spans: list[str] = []
    depth = 0
    start = -1
    in_string = False
    escaped = False
    for i, char in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
            continue
        if char == '"' and depth > 0:
            in_string = True
        elif char == "{":
            if depth == 0:
                start = i
            depth += 1
        elif char == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                spans.append(text[start : i + 1])
    return spans


def extract_json_object(text: str) -> dict[str, Any]:
    """Return the JSON object that ``text`` holds: the whole text, a fenced block, or the first balanced object.

    Args:
        text: the model's reply.

    Returns:
        The parsed object.

    Raises:
        ReplyInvalid: ``no_json`` when there is no object at all, ``malformed_json`` when there is one that does not
            parse (the message carries the parser's error and position, for the repair prompt).
    """
    stripped = text.strip()
    if not stripped:
        raise ReplyInvalid("no_json", "the reply is empty; it must be one JSON object")
    candidates = [stripped, *(m.strip() for m in _FENCE.findall(stripped))]
    candidates += [span for c in candidates for span in _balanced_objects(c)]
    if "{" in stripped:  # last resort, and the source of the error message for a reply cut off mid-object
        candidates.append(stripped[stripped.index("{") :])
    first_error: json.JSONDecodeError | None = None
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except json.JSONDecodeError as exc:
            if first_error is None and candidate.lstrip().startswith("{"):
                first_error = exc
            continue
        if isinstance(value, dict):
            return value
    if first_error is not None:
        where = f"{first_error.msg} at line {first_error.lineno} column {first_error.colno}"
        if first_error.pos >= len(first_error.doc.rstrip()) or first_error.msg.startswith("Unterminated string"):
            where += " (the reply ends before the JSON object does; was it cut off by max_tokens?)"
        raise ReplyInvalid("malformed_json", f"invalid JSON: {where}")
    raise ReplyInvalid("no_json", "the reply holds no JSON object; it must be one JSON object")


def format_validation_error(exc: ValidationError) -> str:
    """Pydantic errors as ``field.path: message`` joined by ``; `` (at most five, then a count)."""
    errors = exc.errors(include_url=False)
    parts = []
    for err in errors[:_MAX_ERRORS_SHOWN]:
        loc = ".".join(str(x) for x in err["loc"]) or "object"
        parts.append(f"{loc}: {err['msg']}")
    if len(errors) > _MAX_ERRORS_SHOWN:
        parts.append(f"and {len(errors) - _MAX_ERRORS_SHOWN} more errors")
    return "; ".join(parts)


def validate_reply(text: str, model: type[ModelT]) -> ModelT:
    """Extract the JSON object of ``text`` and validate it as ``model``.

    Raises:
        ReplyInvalid: ``no_json`` / ``malformed_json`` from extraction, or ``schema:<field>`` naming the first
            top-level field that failed validation.
    """
    value = extract_json_object(text)
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]["loc"]
        field_name = str(first[0]) if first else "object"
        raise ReplyInvalid(f"schema:{field_name}", format_validation_error(exc)) from None


@dataclass(frozen=True)
class Validated(Generic[ModelT]):
    """A validated reply and how many model calls it took (1 = no repair needed)."""

    value: ModelT
    calls: int


Complete = Callable[[list[dict[str, str]], int], Awaitable[str]]
"""``complete(messages, attempt) -> reply text``; ``attempt`` is 0 for the first call, then 1, 2, ... per repair."""


async def ask_validated(
    complete: Complete,
    messages: list[dict[str, str]],
    model: type[ModelT],
    *,
    max_repairs: int,
    repair_message: Callable[[str], str],
    max_echo_chars: int = 6000,
) -> Validated[ModelT]:
    """Ask for a JSON reply, validate it, and on failure send the error back, up to ``max_repairs`` times.

    Each repair continues the conversation: the invalid reply as the assistant turn, then a user turn built by
    ``repair_message(error)``, so the model sees exactly what was wrong.

    Args:
        complete: sends a conversation and returns the reply text.
        messages: the prompt.
        model: the pydantic model the JSON must validate as.
        max_repairs: repair rounds after the first call (0 = no repair).
        repair_message: builds the repair turn from the error text.
        max_echo_chars: longer invalid replies are cut to this length when echoed back (keeps the context short).

    Returns:
        The validated reply and the number of calls made.

    Raises:
        ItemRejected: still invalid after ``max_repairs`` repairs; carries the last error's category and text.
    """
    conversation = list(messages)
    last: ReplyInvalid | None = None
    text = ""
    for attempt in range(max_repairs + 1):
        text = await complete(conversation, attempt)
        try:
            return Validated(validate_reply(text, model), attempt + 1)
        except ReplyInvalid as exc:
            last = exc
        conversation = [
            *conversation,
            {"role": "assistant", "content": text[:max_echo_chars] or "(empty reply)"},
            {"role": "user", "content": repair_message(last.detail)},
        ]
    assert last is not None  # the loop runs at least once and only falls through on an invalid reply
    raise ItemRejected(last.category, f"{last.detail} (after {max_repairs} repairs)", reply=text)
