"""OpenAI's chat / completions / models / error dialect as pydantic models, plus the ``persona`` extension.

Requests are validated here (ranges, types, NaN) and nowhere else; the app turns a validation failure into a 400
in OpenAI's error envelope. Fields OpenAI defines that this server does not act on are declared, so that they
are accepted, and either ignored (``user``, ``logit_bias``, penalties: see :data:`IGNORED_FIELDS`) or refused
with a clear message (``logprobs``, ``echo``). Fields nobody declared are kept in ``model_extra`` and logged by
the app, never fatal: clients send vendor extensions freely.

The persona extension (an extra body field, ``extra_body={"persona": ...}`` in the openai SDK):

- absent / ``null`` / ``"auto"``: routed automatically from the conversation;
- ``"off"``: the base model (experts disabled);
- ``{"A+": 0.7, "N-": 0.3}``: fixed gates (unknown poles, negative or NaN weights, or a sum above 1 are 400s);
- ``{"activation": {"A": 0.9, "N": -0.6}}``: a trait activation that the router turns into gates;
- a preset name such as ``"grief-support"`` (see :mod:`personafuse.serve.presets`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from personafuse.serve.presets import find_preset
from personafuse.traits import POLES, Activation, Gates, PersonaError

IGNORED_FIELDS = ("user", "logit_bias", "frequency_penalty", "presence_penalty", "service_tier", "store", "metadata")
"""Declared OpenAI fields that are accepted and have no effect here (logged when set to a non-default value)."""

MAX_STOP_SEQUENCES = 4
"""OpenAI accepts at most four stop sequences."""

# ---------------------------------------------------------------------------------------------------- persona


@dataclass(frozen=True)
class PersonaChoice:
    """A parsed ``persona`` field: where the gates come from, and the fixed part when there is one."""

    source: Literal["auto", "off", "gates", "activation", "preset"]
    gates: Gates | None = None
    activation: Activation | None = None
    preset: str | None = None

    @classmethod
    def auto(cls) -> PersonaChoice:
        """Routed from the conversation."""
        return cls("auto")


def parse_persona(value: Any) -> PersonaChoice:
    """Parse the ``persona`` field (see the module docstring for the accepted forms).

    Raises:
        PersonaError: an unknown pole, trait or preset, a negative / NaN / non-numeric weight, or another type.
    """
    if value is None or value == "auto":
        return PersonaChoice.auto()
    if value == "off":
        return PersonaChoice("off", gates=Gates((0.0,) * len(POLES)))
    if isinstance(value, str):
        preset = find_preset(value)
        if preset is None:
            from personafuse.serve.presets import PRESETS

            raise PersonaError(
                f"persona {value!r} is not 'auto', 'off' or a preset ({', '.join(sorted(PRESETS))}); "
                'for a mix send gates like {"A+": 0.7, "N-": 0.3}'
            )
        return PersonaChoice("preset", gates=preset.gates, preset=preset.name)
    if isinstance(value, dict):
        if "activation" in value:
            if set(value) != {"activation"} or not isinstance(value["activation"], dict):
                raise PersonaError('persona {"activation": {...}} takes only a mapping like {"A": 0.9, "N": -0.6}')
            return PersonaChoice("activation", activation=Activation.from_mapping(value["activation"]))
        if not value:
            raise PersonaError('persona {} has no gates; send e.g. {"A+": 0.7, "N-": 0.3}, "off" or null (auto)')
        return PersonaChoice("gates", gates=Gates.from_mapping(value))
    raise PersonaError(
        f"persona must be null, 'auto', 'off', a preset name, gates like {{\"A+\": 0.7}} or "
        f'{{"activation": {{"A": 0.9}}}}; got {type(value).__name__}'
    )


class PersonaReport(BaseModel):
    """The routing used for a reply: carried by every response as its ``persona`` field."""

    source: Literal["auto", "off", "gates", "activation", "preset"]
    """Where the gates came from."""
    preset: str | None = None
    """The preset's name when ``source`` is ``preset``."""
    activations: dict[str, float] | None = None
    """Trait activations (O C E A N): predicted (auto) or given (activation); null when gates were fixed."""
    gates: dict[str, float]
    """The ten expert gates that were applied (all zero for ``off``)."""


# ---------------------------------------------------------------------------------------------------- requests


class _Request(BaseModel):
    """Base of request bodies: unknown fields kept (and logged by the app), NaN / inf refused."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


class TextPart(BaseModel):
    """A text content part (``{"type": "text", "text": ...}``); other part types are refused."""

    model_config = ConfigDict(extra="allow")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One message; ``developer`` is treated as ``system``, content parts are joined."""

    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        """The message's text (content parts concatenated)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def as_template_message(self) -> dict[str, str]:
        """``{"role", "content"}`` for the chat template."""
        return {"role": "system" if self.role == "developer" else self.role, "content": self.text()}


class StreamOptions(BaseModel):
    """OpenAI's ``stream_options``."""

    include_usage: bool = False


class _Sampling(_Request):
    """Fields shared by chat and text completions."""

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=128)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    persona: Any = None
    user: str | None = None
    logit_bias: dict[str, float] | None = None
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    service_tier: str | None = None
    store: bool | None = None
    metadata: dict[str, Any] | None = None

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty strings")
        return value

    @field_validator("persona")
    @classmethod
    def _check_persona(cls, value: Any) -> Any:
        parse_persona(value)  # raises PersonaError (a ValueError): pydantic reports it under `persona`
        return value

    def stop_sequences(self) -> tuple[str, ...]:
        """``stop`` as a tuple."""
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def persona_choice(self) -> PersonaChoice:
        """The parsed ``persona`` field."""
        return parse_persona(self.persona)

    def ignored_fields(self) -> list[str]:
        """Declared-but-ignored fields the client set to a non-default value."""
        defaults = {"frequency_penalty": 0.0, "presence_penalty": 0.0}
        return [f for f in IGNORED_FIELDS if getattr(self, f) not in (None, defaults.get(f))]


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None

    @model_validator(mode="after")
    def _check(self) -> ChatCompletionRequest:
        if self.logprobs:
            raise ValueError("logprobs are not supported by this server; omit `logprobs`")
        if self.max_completion_tokens is not None:
            if self.max_tokens is not None and self.max_tokens != self.max_completion_tokens:
                raise ValueError("max_tokens and max_completion_tokens differ; send only one")
            self.max_tokens = self.max_completion_tokens
        return self

    def template_messages(self) -> list[dict[str, str]]:
        """The conversation for the chat template."""
        return [m.as_template_message() for m in self.messages]


class CompletionRequest(_Sampling):
    """``POST /v1/completions``: a raw text prompt (no chat template), or a list of prompts."""

    prompt: str | list[str]
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None
    best_of: int | None = None

    @model_validator(mode="after")
    def _check(self) -> CompletionRequest:
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt is an empty list; send a string or a non-empty list of strings")
        if self.echo:
            raise ValueError("echo is not supported by this server; omit `echo`")
        if self.logprobs is not None:
            raise ValueError("logprobs are not supported by this server; omit `logprobs`")
        if self.suffix:
            raise ValueError("suffix (insertion) is not supported by this server; omit `suffix`")
        if self.best_of not in (None, 1, self.n):
            raise ValueError("best_of is not supported by this server; omit `best_of`")
        return self

    def prompts(self) -> list[str]:
        """``prompt`` as a list."""
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class RouteRequest(_Request):
    """``POST /v1/route``: routing only. Give ``messages`` (one conversation) or ``input`` (texts)."""

    messages: list[ChatMessage] | None = None
    input: str | list[str] | None = None
    persona: Any = None
    model: str | None = None

    @model_validator(mode="after")
    def _check(self) -> RouteRequest:
        if (self.messages is None) == (self.input is None):
            raise ValueError("give exactly one of `messages` (a conversation) or `input` (a text or list of texts)")
        if isinstance(self.input, list) and not self.input:
            raise ValueError("input is an empty list; send a text or a non-empty list of texts")
        if self.messages is not None and not self.messages:
            raise ValueError("messages is empty; send at least one message")
        parse_persona(self.persona)
        return self


# ---------------------------------------------------------------------------------------------------- responses


class Usage(BaseModel):
    """Token counts of one response."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    """The reply message of a chat choice."""

    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    """One choice of a chat completion."""

    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"] | None
    logprobs: None = None


class ChatCompletionResponse(BaseModel):
    """A non-streaming chat completion, with the routing used in ``persona``."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage
    persona: PersonaReport
    system_fingerprint: str | None = None


class ChoiceDelta(BaseModel):
    """The increment of a streamed chat choice."""

    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    """One choice of a streamed chat chunk."""

    index: int
    delta: ChoiceDelta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """One SSE event of a streamed chat completion; the first one carries ``persona``."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    persona: PersonaReport | None = None
    usage: Usage | None = None
    system_fingerprint: str | None = None


class CompletionChoice(BaseModel):
    """One choice of a text completion (also the shape of a streamed text chunk's choice)."""

    index: int
    text: str
    finish_reason: Literal["stop", "length"] | None
    logprobs: None = None


class CompletionResponse(BaseModel):
    """A text completion; ``persona`` is one report for one prompt, a list (in prompt order) for several."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    persona: PersonaReport | list[PersonaReport] | None = None
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    """One entry of ``/v1/models``: the served model, or a persona preset (``persona`` set)."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "personafuse"
    root: str
    parent: str | None = None
    persona: dict[str, Any] | None = None


class ModelList(BaseModel):
    """``GET /v1/models``."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class RouteResult(BaseModel):
    """The routing of one input of ``/v1/route``."""

    index: int
    persona: PersonaReport


class RouteResponse(BaseModel):
    """``POST /v1/route``."""

    object: Literal["route"] = "route"
    data: list[RouteResult]


class ErrorInfo(BaseModel):
    """The body of OpenAI's error envelope."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error envelope ``{"error": {message, type, param, code}}``."""

    error: ErrorInfo


def validation_message(error: dict[str, Any]) -> tuple[str, str | None]:
    """One pydantic error -> (one-line message, the field path as OpenAI's ``param``)."""
    loc = [str(p) for p in error.get("loc", ()) if p not in ("body",)]
    # drop pydantic's union-branch tags such as "str" / "list[TextPart]" from the path
    loc = [p for p in loc if not (p.startswith(("str", "list[", "dict[", "function-")) or p in ("int", "float"))]
    param = ".".join(loc) or None
    message = str(error.get("msg", "invalid value"))
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    if error.get("type") == "extra_forbidden":
        message = "unknown field"
    if param and not message.startswith(param):
        message = f"{param}: {message}"
    if "input" in error and error.get("type") not in ("missing",) and not isinstance(error["input"], (dict, list)):
        message += f" (got {error['input']!r})"
    return message, param


__all__ = [
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatCompletionResponse",
    "CompletionRequest",
    "CompletionResponse",
    "ErrorResponse",
    "ModelList",
    "PersonaChoice",
    "PersonaReport",
    "RouteRequest",
    "RouteResponse",
    "parse_persona",
]
