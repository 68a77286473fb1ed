"""Local models for evaluation: any HF chat model (:class:`HFEvalModel`) and a PersonaFuse checkpoint in one of
the baseline modes (:class:`PersonaFuseEvalModel`). Both share :class:`CausalLMRunner`, so a checkpoint in
``base`` mode and its plain base model see byte-identical prompts.

Log-likelihood scoring follows lm-eval-harness's ``loglikelihood``: the continuation's tokens are found by
tokenising context + continuation and splitting at the context's length (so merges across the boundary are
handled), and their log-probabilities are summed. Two things make it fast and batch-invariant:
- rows are left-padded with explicit position ids, so each row computes exactly what it would alone, and only
  the last K positions' logits are kept (``logits_to_keep``);
- a one-token continuation needs only its context's forward pass, so the k options of a multiple-choice item
  whose answers are single letters cost one forward pass, not k.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from personafuse.errors import UserError
from personafuse.evaluate.models import PLAIN_ROLE, Messages, Mode, conversation_key, parse_mode
from personafuse.evaluate.persona_prompt import activation_system_prompt, with_system_prompt
from personafuse.traits import POLES

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

Scope = Callable[[list[int]], contextlib.AbstractContextManager]
"""Given the request indices of a batch's rows, the context manager to run that batch's forward pass in."""


def _no_scope(owners: list[int]) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


@dataclass
class _Row:
    """One forward-pass row: its tokens and the continuations predicted from its last positions."""

    input_ids: list[int]
    targets: list[tuple[int, list[int]]]
    """(request index, target token ids); targets are predicted from the last ``len(ids)`` positions."""

    @property
    def owner(self) -> int:
        return self.targets[0][0]


class CausalLMRunner:
    """Batched log-likelihoods and greedy generation for a HF causal LM and its chat-template tokenizer."""

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 8, max_length: int | None = None) -> None:
        if batch_size < 1:
            raise UserError(f"--batch-size must be a positive whole number, got {batch_size}")
        if not getattr(tokenizer, "chat_template", None):
            raise UserError("the model's tokenizer has no chat template; evaluation renders every prompt as a chat")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length or int(getattr(model.config, "max_position_embeddings", 0) or 2048)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        import inspect

        self._keep_logits = "logits_to_keep" in inspect.signature(model.forward).parameters

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def render(self, conversation: Messages) -> str:
        """The chat-templated prompt text, ending with the assistant's generation prompt.

        A conversation of one :data:`~personafuse.evaluate.models.PLAIN_ROLE` message is returned verbatim.

        Raises:
            UserError: a plain-text message beside other messages (e.g. ``--mode prompt``'s system prompt).
        """
        if any(m.get("role") == PLAIN_ROLE for m in conversation):
            if len(conversation) != 1:
                raise UserError(
                    f"a plain-text prompt (role {PLAIN_ROLE!r}) cannot be combined with other messages; --mode "
                    "prompt adds a system prompt, so run it with the chat template (--apply-chat-template)"
                )
            return conversation[0]["content"]
        return self.tokenizer.apply_chat_template(list(conversation), tokenize=False, add_generation_prompt=True)

    def chat_template_info(self) -> dict[str, str]:
        """The chat template text and its sha256, for result files."""
        template = str(self.tokenizer.chat_template or "")
        return {"chat_template": template, "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest()}

    def split_tokens(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of the context and of the continuation as it is tokenised after that context."""
        if not continuation:
            raise ValueError("cannot score an empty continuation")
        encode = self.tokenizer
        ctx = encode(context, add_special_tokens=False)["input_ids"]
        whole = encode(context + continuation, add_special_tokens=False)["input_ids"]
        if len(whole) > len(ctx) and whole[: len(ctx)] == ctx:
            return ctx, whole[len(ctx) :]
        return ctx, encode(continuation, add_special_tokens=False)["input_ids"]

    def _rows(self, contexts: Sequence[str], continuations: Sequence[str]) -> list[_Row]:
        single: dict[tuple[int, ...], _Row] = {}
        rows: list[_Row] = []
        for index, (context, continuation) in enumerate(zip(contexts, continuations)):
            ctx, cont = self.split_tokens(context, continuation)
            if len(cont) == 1:  # predicted from the context's last position: share one row per context
                key = tuple(ctx)
                if key not in single:
                    single[key] = _Row(ctx, [])
                    rows.append(single[key])
                single[key].targets.append((index, cont))
            else:
                rows.append(_Row(ctx + cont[:-1], [(index, cont)]))
        for row in rows:
            need = max(len(t) for _, t in row.targets) + 1
            if len(row.input_ids) > self.max_length:  # keep the end: the question and the options
                if self.max_length < need:
                    raise UserError(f"a continuation of {need - 1} tokens does not fit the model's {self.max_length}")
                row.input_ids = row.input_ids[-self.max_length :]
        return rows

    def loglikelihood(self, contexts: Sequence[Messages], continuations: Sequence[str], scope: Scope = _no_scope
                      ) -> list[float]:  # fmt: skip
        """Sum of log p(continuation tokens | chat-templated context + generation prompt), per request."""
        import torch

        if len(contexts) != len(continuations):
            raise ValueError(f"{len(contexts)} contexts but {len(continuations)} continuations")
        rendered: dict[str, str] = {}
        texts = []
        for context in contexts:
            key = conversation_key(context)
            if key not in rendered:
                rendered[key] = self.render(context)
            texts.append(rendered[key])
        rows = sorted(self._rows(texts, continuations), key=lambda r: -len(r.input_ids))
        out = [0.0] * len(contexts)
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start : start + self.batch_size]
            width = max(len(r.input_ids) for r in batch)
            keep = max(len(t) for r in batch for _, t in r.targets)
            ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for b, row in enumerate(batch):  # left padding: every row ends at the last column
                ids[b, width - len(row.input_ids) :] = torch.tensor(row.input_ids)
                mask[b, width - len(row.input_ids) :] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [B, T]: each row counts from 0 at its first token
            kwargs: dict[str, Any] = {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device),
                                      "position_ids": positions.to(self.device)}  # fmt: skip
            if self._keep_logits:
                kwargs["logits_to_keep"] = keep
            with torch.no_grad(), scope([r.owner for r in batch]):
                logits = self.model(**kwargs).logits[:, -keep:, :].float()  # [B, K, V]
            logprobs = torch.log_softmax(logits, dim=-1)
            for b, row in enumerate(batch):
                for index, target in row.targets:
                    n = len(target)
                    picked = logprobs[b, keep - n :, :].gather(
                        -1, torch.tensor(target, device=logprobs.device)[:, None]
                    )
                    out[index] = float(picked.sum())
        return out

    def generate(self, conversations: Sequence[Messages], max_new_tokens: int, scope: Scope = _no_scope,
                 **kwargs: Any) -> list[str]:  # fmt: skip
        """Replies (greedy unless ``kwargs`` say otherwise), batched by prompt length, special tokens removed."""
        import torch

        texts = [self.render(c) for c in conversations]
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        kwargs.setdefault("do_sample", False)
        if not kwargs["do_sample"]:  # silence "temperature is set but do_sample is False" from generation_config
            kwargs.setdefault("temperature", None)
            kwargs.setdefault("top_p", None)
            kwargs.setdefault("top_k", None)
        kwargs.setdefault("pad_token_id", self.pad_id)
        out: list[str] = [""] * len(texts)
        side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "left"
        try:
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                enc = self.tokenizer([texts[i] for i in chunk], return_tensors="pt", padding=True,
                                     add_special_tokens=False)  # fmt: skip
                enc = {k: v.to(self.device) for k, v in enc.items()}
                with torch.no_grad(), scope(chunk):
                    generated = self.model.generate(**enc, max_new_tokens=max_new_tokens, **kwargs)
                new = generated[:, enc["input_ids"].shape[1] :]  # [B, new]
                for i, text in zip(chunk, self.tokenizer.batch_decode(new, skip_special_tokens=True)):
                    out[i] = text.strip()
        finally:
            self.tokenizer.padding_side = side
        return out


def _model_info(runner: CausalLMRunner) -> dict[str, Any]:
    from personafuse.evaluate.task import runtime_versions

    param = next(runner.model.parameters())
    return {**runner.chat_template_info(), "dtype": str(param.dtype).replace("torch.", ""), "device": str(param.device),
            "versions": runtime_versions()}  # fmt: skip


class HFEvalModel:
    """A Hugging Face chat model (optionally with a PEFT LoRA adapter merged in), run as is."""

    supports_loglikelihood = True

    def __init__(self, model: Any, tokenizer: Any, name: str, path: str | None = None, adapter: str | None = None,
                 batch_size: int = 8) -> None:  # fmt: skip
        self.runner = CausalLMRunner(model, tokenizer, batch_size)
        self.name = name
        self.path = path
        self.adapter = adapter

    @classmethod
    def from_pretrained(cls, spec: str, adapter: str | None = None, device: str | None = None, batch_size: int = 8,
                        dtype: str = "float32") -> HFEvalModel:  # fmt: skip
        """Load by HF folder, hub id or built-in alias, plus an optional PEFT adapter folder.

        Raises:
            ModelLoadError: the model or adapter cannot be loaded.
        """
        import torch

        from personafuse.errors import ModelLoadError
        from personafuse.models import load_base_model

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model, tokenizer = load_base_model(spec, dtype=getattr(torch, dtype), device=device)
        name = Path(spec).name or spec
        if adapter:
            if not (Path(adapter).expanduser() / "adapter_config.json").is_file():
                raise ModelLoadError(f"--adapter {adapter} is not a PEFT adapter folder (no adapter_config.json)")
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter).merge_and_unload()  # merged: plain forward speed
            model.eval()
            name = f"{name}+{Path(adapter).name}"
        return cls(model, tokenizer, name, path=spec, adapter=adapter, batch_size=batch_size)

    def info(self) -> dict[str, Any]:
        """Name, kind, mode ``base``, path, adapter, chat template, dtype, device, versions."""
        return {"name": self.name, "kind": "hf", "mode": "base", "path": self.path, "adapter": self.adapter,
                **_model_info(self.runner)}  # fmt: skip

    def loglikelihood(self, contexts: Sequence[Messages], continuations: Sequence[str]) -> list[float]:
        """See :meth:`personafuse.evaluate.models.EvalModel.loglikelihood`."""
        return self.runner.loglikelihood(contexts, continuations)

    def generate(self, conversations: Sequence[Messages], max_new_tokens: int, **kwargs: Any) -> list[str]:
        """See :meth:`personafuse.evaluate.models.EvalModel.generate`."""
        return self.runner.generate(conversations, max_new_tokens, **kwargs)


class PersonaFuseEvalModel:
    """A PersonaFuse model run in one mode: ``base`` (experts off), ``routed``, ``uniform`` (all gates 0.1),
    ``pole:<P>`` (one expert at gate 1), ``prompt`` (experts off + a system prompt written from the routed
    activation), or a fixed persona (:meth:`with_persona`, used by the personality probes)."""

    supports_loglikelihood = True

    def __init__(self, pf: Any, mode: str = "routed", batch_size: int = 8, name: str | None = None,
                 path: str | None = None, persona: Any = None) -> None:  # fmt: skip
        self.pf = pf
        self.mode: Mode = Mode("fixed") if persona is not None else parse_mode(mode)
        self.persona = persona
        self.runner = CausalLMRunner(pf.model, pf.tokenizer, batch_size)
        base = name or "personafuse"
        self.name = base if self.mode.kind != "fixed" else f"{base}@{_persona_label(persona)}"
        self._base_name = base
        self.path = path

    def info(self) -> dict[str, Any]:
        """Name, kind, mode, checkpoint path, base and encoder names, chat template, versions."""
        config = getattr(self.pf, "config", None)
        return {"name": self._base_name, "kind": "personafuse", "mode": str(self.mode), "path": self.path,
                "persona": _persona_label(self.persona) if self.persona is not None else None,
                "base": getattr(config, "base", None), "encoder": getattr(config, "encoder", None),
                **_model_info(self.runner)}  # fmt: skip

    def with_persona(self, persona: Any) -> PersonaFuseEvalModel:
        """This model with ``persona`` (pole mapping, Gates, Routing, "off") fixed for every context."""
        view = PersonaFuseEvalModel(self.pf, batch_size=self.runner.batch_size, name=self._base_name,
                                    path=self.path, persona=persona)  # fmt: skip
        view.runner = self.runner
        return view

    def route(self, texts: Sequence[str]) -> list[Any]:
        """The router's :class:`~personafuse.traits.Routing` for each text."""
        return self.pf.route(list(texts))

    # ---------------------------------------------------------------- mode plumbing
    def _prepare(self, conversations: Sequence[Messages]) -> tuple[list[Messages], Scope]:
        """Conversations as the model will see them, and the scope (gates or experts off) per batch of rows."""
        convs = [list(c) for c in conversations]
        kind = self.mode.kind
        if kind == "base":
            return convs, lambda owners: self.pf.experts_disabled()
        if kind == "prompt":
            routings = self._route_unique(convs)
            convs = [with_system_prompt(c, activation_system_prompt(r.activation)) for c, r in zip(convs, routings)]
            return convs, lambda owners: self.pf.experts_disabled()
        gates = self._gates(convs)  # [N, 10]
        return convs, lambda owners: self.pf.using_gates(gates[owners])

    def _gates(self, convs: list[Messages]) -> torch.Tensor:
        """Gates [N, 10] for each conversation under this mode, computed once per distinct conversation."""
        import torch

        keys = [conversation_key(c) for c in convs]
        unique = list(dict.fromkeys(keys))
        first = {k: keys.index(k) for k in unique}
        distinct = [convs[first[k]] for k in unique]
        kind = self.mode.kind
        if kind == "uniform":
            rows = torch.full((len(distinct), len(POLES)), 1.0 / len(POLES))
        elif kind == "pole":
            rows = self.pf.gates_for(distinct, persona={self.mode.pole: 1.0})
        elif kind == "fixed":
            rows = self.pf.gates_for(distinct, persona=self.persona)
        else:  # routed
            rows = self.pf.gates_for(distinct)
        index = {k: i for i, k in enumerate(unique)}
        return rows.to(self.runner.device, torch.float32)[[index[k] for k in keys]]

    def _route_unique(self, convs: list[Messages]) -> list[Any]:
        from personafuse.model import conversation_text

        texts = [conversation_text(c) for c in convs]
        unique = list(dict.fromkeys(texts))
        routed = dict(zip(unique, self.pf.route(unique)))
        return [routed[t] for t in texts]

    def loglikelihood(self, contexts: Sequence[Messages], continuations: Sequence[str]) -> list[float]:
        """See :meth:`personafuse.evaluate.models.EvalModel.loglikelihood`; gates come from each context."""
        convs, scope = self._prepare(contexts)
        return self.runner.loglikelihood(convs, continuations, scope)

    def generate(self, conversations: Sequence[Messages], max_new_tokens: int, **kwargs: Any) -> list[str]:
        """See :meth:`personafuse.evaluate.models.EvalModel.generate`; gates come from each conversation."""
        convs, scope = self._prepare(conversations)
        return self.runner.generate(convs, max_new_tokens, scope, **kwargs)


def _persona_label(persona: Any) -> str:
    """Short text for a persona spec: ``A+``, ``A+=0.7,N-=0.3``, ``routed(...)`` or ``off``."""
    if isinstance(persona, str):
        return persona
    if isinstance(persona, dict):
        items = [(k, v) for k, v in persona.items() if v]
        if len(items) == 1 and float(items[0][1]) == 1.0:
            return str(items[0][0])
        return ",".join(f"{k}={float(v):g}" for k, v in items)
    gates = getattr(persona, "gates", persona)
    values = getattr(gates, "values", None)
    if values is not None:
        return ",".join(f"{p}={v:.2f}" for p, v in zip(POLES, values) if v > 0.005) or "off"
    return type(persona).__name__
