"""What a task may ask of a model (:class:`EvalModel`), the persona modes, and ``--model`` resolution.

Three implementations ship: :class:`~personafuse.evaluate.local.PersonaFuseEvalModel` (a checkpoint in one of
the baseline modes), :class:`~personafuse.evaluate.local.HFEvalModel` (any HF chat model, optionally with a
PEFT adapter: the "plain SFT LoRA" baseline) and :class:`~personafuse.evaluate.endpoint.OpenAIEvalModel` (an
OpenAI-compatible server, generation only). :class:`~personafuse.evaluate.scripted.ScriptedModel` answers from
Python functions, for tests and for checking a task's scoring on known answers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from personafuse.errors import UserError
from personafuse.evaluate.persona_prompt import with_system_prompt
from personafuse.traits import POLES, Routing

Messages = list[dict[str, str]]
"""One conversation: ``[{"role": "user", "content": "..."}, ...]``."""

ModeKind = Literal["base", "routed", "uniform", "pole", "prompt", "fixed"]

PLAIN_ROLE = "text"
"""Role of a message that is a whole prompt already: ``[{"role": PLAIN_ROLE, "content": "Question: ...\\nAnswer:"}]``
is scored and continued verbatim by local models, without the chat template (lm-eval-harness's plain prompts,
:mod:`personafuse.evaluate.lm_eval_model`). The router reads its content like any user turn."""


class UnsupportedScoringError(UserError):
    """The model cannot score the way the task was asked to (e.g. log-likelihoods from an API endpoint)."""


@runtime_checkable
class EvalModel(Protocol):
    """The model interface every task uses."""

    name: str
    """Short name for tables and records headers."""
    supports_loglikelihood: bool
    """Whether :meth:`loglikelihood` works (local models) or tasks must generate and parse (endpoints)."""

    def info(self) -> dict[str, Any]:
        """JSON-ready description stored in each result: name, kind, mode, chat template, versions."""
        ...

    def loglikelihood(self, contexts: Sequence[Messages], continuations: Sequence[str]) -> list[float]:
        """Sum of the log-probabilities of each continuation's tokens after its chat-templated context.

        The context is rendered with the model's chat template and the generation prompt, so a continuation is
        scored as the start of the assistant's reply.
        """
        ...

    def generate(self, conversations: Sequence[Messages], max_new_tokens: int, **kwargs: Any) -> list[str]:
        """Greedy replies (unless ``kwargs`` say otherwise), one per conversation, special tokens removed."""
        ...


@runtime_checkable
class PersonaModel(EvalModel, Protocol):
    """An :class:`EvalModel` whose experts can be steered: forced to a persona, or routed from a text."""

    def with_persona(self, persona: Any) -> EvalModel:
        """A view of this model that uses ``persona`` (a pole mapping, Gates or Routing) for every context."""
        ...

    def route(self, texts: Sequence[str]) -> list[Routing]:
        """The router's decision for each text."""
        ...


# ---------------------------------------------------------------------------------------------------- modes
@dataclass(frozen=True)
class Mode:
    """How a PersonaFuse checkpoint is run: ``base``, ``routed``, ``uniform``, ``pole:<P>`` or ``prompt``."""

    kind: ModeKind
    pole: str | None = None

    def __str__(self) -> str:
        return f"pole:{self.pole}" if self.kind == "pole" else self.kind


MODE_HELP = "base | routed | uniform | pole:<P> (e.g. pole:A+) | prompt"


def parse_mode(mode: str) -> Mode:
    """Parse ``--mode``.

    Raises:
        UserError: anything else; the message lists the modes and the poles.
    """
    text = mode.strip()
    if text in ("base", "routed", "uniform", "prompt"):
        return Mode(text)  # type: ignore[arg-type]
    if text.startswith("pole:"):
        pole = text.split(":", 1)[1].strip()
        if pole in POLES:
            return Mode("pole", pole)
        raise UserError(f"--mode {mode!r} names an unknown pole; use pole:<P> with P one of {' '.join(POLES)}")
    raise UserError(f"unknown --mode {mode!r}; use one of: {MODE_HELP}")


# ---------------------------------------------------------------------------------------------------- wrappers
class SystemPromptModel:
    """Any :class:`EvalModel` with a fixed system prompt put in front of every conversation (prompt-only persona)."""

    def __init__(self, inner: EvalModel, system_prompt: str, label: str) -> None:
        self.inner = inner
        self.system_prompt = system_prompt
        self.name = f"{inner.name}+prompt:{label}"
        self.supports_loglikelihood = inner.supports_loglikelihood

    def info(self) -> dict[str, Any]:
        """The inner model's info plus the system prompt."""
        return {**self.inner.info(), "name": self.name, "system_prompt": self.system_prompt}

    def loglikelihood(self, contexts: Sequence[Messages], continuations: Sequence[str]) -> list[float]:
        """See :meth:`EvalModel.loglikelihood`."""
        return self.inner.loglikelihood(
            [with_system_prompt(list(c), self.system_prompt) for c in contexts], continuations
        )

    def generate(self, conversations: Sequence[Messages], max_new_tokens: int, **kwargs: Any) -> list[str]:
        """See :meth:`EvalModel.generate`."""
        convs = [with_system_prompt(list(c), self.system_prompt) for c in conversations]
        return self.inner.generate(convs, max_new_tokens, **kwargs)


def conversation_key(conversation: Messages) -> str:
    """Canonical string of a conversation (dict keys sorted), for de-duplicating repeated contexts."""
    return json.dumps(conversation, sort_keys=True, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------------- factory
def is_personafuse_checkpoint(path: str | Path) -> bool:
    """True for a folder whose ``config.json`` was written by ``PersonaFuse.save_pretrained``."""
    config = Path(path).expanduser() / "config.json"
    if not config.is_file():
        return False
    try:
        return "personafuse_version" in json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return False


def load_eval_model(
    spec: str,
    mode: str | None = None,
    adapter: str | None = None,
    device: str | None = None,
    batch_size: int = 8,
) -> EvalModel:
    """Resolve ``--model``: ``openai:URL#MODEL``, a PersonaFuse checkpoint folder, or an HF model / alias.

    Args:
        spec: ``openai:http://127.0.0.1:8000/v1#personafuse``; a checkpoint folder; an HF folder, hub id or
            built-in alias such as ``smollm2-135m-instruct``.
        mode: persona mode for checkpoints (default ``routed``); other models only run ``base``.
        adapter: a PEFT LoRA folder applied on top of an HF model (the plain-SFT baseline).
        device: torch device (default: CUDA when available).
        batch_size: sequences per forward pass.

    Raises:
        UserError / ModelLoadError: bad spec, a mode the model cannot run, or a model that fails to load.
    """
    if spec.startswith("openai:"):
        from personafuse.evaluate.endpoint import OpenAIEvalModel

        _only_base(spec, mode, "an OpenAI-compatible endpoint")
        if adapter:
            raise UserError(f"--adapter cannot apply to the endpoint {spec}; serve the adapter there instead")
        return OpenAIEvalModel.from_spec(spec)
    if is_personafuse_checkpoint(spec):
        from personafuse.evaluate.local import PersonaFuseEvalModel
        from personafuse.model import PersonaFuse

        if adapter:
            raise UserError(f"--adapter applies to plain HF models, not to the PersonaFuse checkpoint {spec}")
        parsed = parse_mode(mode or "routed")  # validate before the slow load
        pf = PersonaFuse.from_pretrained(spec, device=device)
        return PersonaFuseEvalModel(pf, str(parsed), batch_size=batch_size, name=Path(spec).name, path=spec)
    from personafuse.evaluate.local import HFEvalModel

    _only_base(spec, mode, "a plain Hugging Face model")
    return HFEvalModel.from_pretrained(spec, adapter=adapter, device=device, batch_size=batch_size)


def _only_base(spec: str, mode: str | None, what: str) -> None:
    if mode is None or mode == "base":
        return
    parse_mode(mode)  # an invalid mode gets its own message first
    raise UserError(
        f"--mode {mode} needs a PersonaFuse checkpoint, but --model {spec} is {what}; use --mode base, or give "
        "a checkpoint folder (config.json + experts/ + router.safetensors)"
    )
