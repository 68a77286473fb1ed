"""lm-eval-harness's ``LM`` interface over any local eval model, registered as ``personafuse``.

Why a wrapper: lm-eval's ``HFLM`` runs a plain ``PreTrainedModel``, one forward pass per batch, and has no hook
to set PersonaFuse's per-request expert gates. A checkpoint in ``routed`` mode must route *each* request from its
own text, and ``base``, ``uniform``, ``pole:X`` and ``prompt`` modes change the forward pass or the prompt per
request. :class:`PersonaFuseLM` hands lm-eval's requests to an :class:`~personafuse.evaluate.models.EvalModel`
(:func:`~personafuse.evaluate.models.load_eval_model`: a checkpoint in any mode, an HF model or alias, optionally
with a PEFT adapter), whose batched ``loglikelihood`` / ``generate`` apply the mode row by row.

How lm-eval's text maps to the eval model's chat messages:

- **Plain prompts** (lm-eval's default: few-shot text such as ``"Question: ...\\nAnswer:"``): the context becomes
  one :data:`~personafuse.evaluate.models.PLAIN_ROLE` message, which local models score and continue verbatim,
  without the chat template, as ``HFLM`` does (no BOS token is added). The router reads the whole context
  (task description, shots and question). ``--mode prompt`` needs a chat (its persona is a system prompt).
- **Chat prompts** (``apply_chat_template=True``, optionally ``fewshot_as_multiturn``): lm-eval calls
  :meth:`PersonaFuseLM.apply_chat_template` with the message list; the wrapper renders it with the model's chat
  template and remembers the messages, so the request is scored from the messages exactly as the native tasks
  score (the router reads the non-system turns; ``prompt`` mode adds its system prompt).

Log-likelihoods are lm-eval's (sum over the continuation's tokens, split at the context's token length).
``is_greedy`` is not computed and is reported as ``False``: multiple-choice tasks (MMLU) and generation tasks
(GSM8K) do not use it, but a ``loglikelihood`` task's ``acc`` (e.g. LAMBADA) would be wrong, so do not run those.
``loglikelihood_rolling`` (perplexity tasks) is not supported.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from typing import Any

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from personafuse.errors import UserError
from personafuse.evaluate.models import PLAIN_ROLE, EvalModel, Messages

logger = logging.getLogger(__name__)

_SAMPLING_KEYS = ("temperature", "top_p", "top_k")
_CHUNK = 256
"""Requests handed to the eval model per call (it batches them further by ``batch_size``)."""


def first_stop(text: str, until: Sequence[str]) -> str:
    """``text`` cut before the earliest occurrence of any stop string (lm-eval's ``until``)."""
    cut = min((i for i in (text.find(s) for s in until if s) if i >= 0), default=len(text))
    return text[:cut]


@register_model("personafuse")
class PersonaFuseLM(LM):
    """An lm-eval ``LM`` over a PersonaFuse eval model (``lm_eval --model personafuse`` once this is imported).

    Args:
        model: a ready eval model (e.g. ``load_eval_model(...)`` or a ``ScriptedModel``); or give ``pretrained``.
        pretrained: ``--model`` spec: a PersonaFuse checkpoint folder, an HF folder / hub id / alias.
        mode: checkpoint mode (``base | routed | uniform | pole:<P> | prompt``; default ``routed``).
        adapter: PEFT LoRA folder applied to an HF model.
        device: torch device.
        batch_size: sequences per forward pass.
        max_gen_toks: generation length when a request does not say (lm-eval's default 256).
        max_batch_size: accepted for lm-eval's model arguments; unused.

    Raises:
        UserError: neither ``model`` nor ``pretrained``, or an endpoint (which cannot run plain prompts).
    """

    def __init__(self, model: EvalModel | None = None, pretrained: str | None = None, mode: str | None = None,
                 adapter: str | None = None, device: str | None = None, batch_size: int | str = 8,
                 max_gen_toks: int | str = 256, max_batch_size: int | None = None) -> None:  # fmt: skip
        super().__init__()
        if model is None:
            if not pretrained:
                raise UserError("the personafuse lm-eval model needs pretrained=<checkpoint, HF folder or alias>")
            from personafuse.evaluate.models import load_eval_model

            if str(batch_size).startswith("auto"):
                raise UserError("batch_size=auto is not supported by the personafuse lm-eval model; give a number")
            model = load_eval_model(pretrained, mode, adapter, device, int(batch_size))
        if model.info().get("kind") == "openai":
            raise UserError(
                f"{model.name} is an OpenAI-compatible endpoint; run lm-eval's own local-chat-completions model "
                "against it (`personafuse serve` speaks that API) instead of the in-process personafuse model"
            )
        self.model = model
        self.max_gen_toks = int(max_gen_toks)
        self._chats: dict[str, Messages] = {}

    # ---------------------------------------------------------------- prompts
    def _messages(self, context: str) -> Messages:
        """The eval model's messages for an lm-eval context (a chat this wrapper rendered, else plain text)."""
        chat = self._chats.get(context)
        if chat is not None:
            return chat
        if not context:
            raise NotImplementedError(
                "the personafuse lm-eval model cannot score an empty context (unconditional log-likelihoods, "
                "e.g. acc_mutual_info); use a task without it"
            )
        return [{"role": PLAIN_ROLE, "content": context}]

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """Render lm-eval's messages with the model's chat template; the messages are kept for scoring.

        Raises:
            NotImplementedError: ``add_generation_prompt=False`` (a task's ``gen_prefix``): eval models always
                start the assistant's reply.
        """
        if not add_generation_prompt:
            raise NotImplementedError(
                "the personafuse lm-eval model always renders the assistant's generation prompt; tasks with a "
                "gen_prefix (assistant prefill) are not supported"
            )
        messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in chat_history]
        runner = getattr(self.model, "runner", None)
        text = runner.render(messages) if runner is not None else json.dumps(messages, ensure_ascii=False)
        self._chats[text] = messages
        return text

    @property
    def tokenizer_name(self) -> str:
        """The model's name (lm-eval keys its request cache on it)."""
        return self.model.name.replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        """The model's chat template text (lm-eval stores it in the results)."""
        runner = getattr(self.model, "runner", None)
        return str(getattr(getattr(runner, "tokenizer", None), "chat_template", "") or "")

    def get_model_info(self) -> dict[str, Any]:
        """The eval model's ``info()`` (name, kind, mode, adapter, ...), merged into lm-eval's results config."""
        return {"personafuse_model": self.model.info()}

    # ---------------------------------------------------------------- requests
    def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
        """``(log p(continuation | context), False)`` per request, from the eval model's ``loglikelihood``."""
        out: list[tuple[float, bool]] = []
        for start in range(0, len(requests), _CHUNK):
            chunk = requests[start : start + _CHUNK]
            contexts = [self._messages(r.args[0]) for r in chunk]
            scores = self.model.loglikelihood(contexts, [r.args[1] for r in chunk])
            for request, score in zip(chunk, scores):
                out.append((score, False))
                self.cache_hook.add_partial("loglikelihood", request.args, (score, False))
        return out

    def loglikelihood_rolling(self, requests: list[Any]) -> list[float]:
        """Not supported.

        Raises:
            NotImplementedError: always; the message names the task kind.
        """
        raise NotImplementedError(
            "the personafuse lm-eval model does not compute rolling log-likelihoods (perplexity tasks such as "
            "wikitext, output_type loglikelihood_rolling); it runs multiple-choice and generation tasks"
        )

    def generate_until(self, requests: list[Any]) -> list[str]:
        """Greedy (unless ``do_sample``) continuations, cut at the first ``until`` string, ``max_gen_toks`` long.

        Requests are grouped by their generation settings and each group goes to the eval model's ``generate``.
        Local models also get ``until`` as HF ``stop_strings`` so generation stops early; the text is cut at the
        first stop string either way. Keys other than ``until``, ``max_gen_toks``, ``do_sample``, ``temperature``,
        ``top_p`` and ``top_k`` are ignored with a warning.
        """
        groups: dict[str, list[int]] = {}
        settings: dict[str, tuple[list[str], int, dict[str, Any]]] = {}
        for index, request in enumerate(requests):
            until, max_new, kwargs = self._generation_settings(request.args[1])
            key = json.dumps([until, max_new, kwargs], sort_keys=True, default=str)
            groups.setdefault(key, []).append(index)
            settings[key] = (until, max_new, kwargs)
        out = [""] * len(requests)
        for key, indices in groups.items():
            until, max_new, kwargs = settings[key]
            for start in range(0, len(indices), _CHUNK):
                chunk = indices[start : start + _CHUNK]
                convs = [self._messages(requests[i].args[0]) for i in chunk]
                replies = self.model.generate(convs, max_new, **self._stop_kwargs(until), **kwargs)
                for i, reply in zip(chunk, replies):
                    out[i] = first_stop(reply, until)
                    self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
        return out

    def _generation_settings(self, gen_kwargs: dict[str, Any] | None) -> tuple[list[str], int, dict[str, Any]]:
        kwargs = dict(gen_kwargs or {})
        until = kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else [str(s) for s in until]
        max_new = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
        do_sample = bool(kwargs.pop("do_sample", False))
        sampling = {k: kwargs.pop(k) for k in _SAMPLING_KEYS if k in kwargs}
        if sampling.get("temperature") == 0.0:  # lm-eval's greedy spelling
            do_sample = False
        if kwargs:
            warnings.warn(f"personafuse lm-eval model ignores generation settings {sorted(kwargs)}", stacklevel=3)
        return until, max_new, ({"do_sample": True, **sampling} if do_sample else {})

    def _stop_kwargs(self, until: list[str]) -> dict[str, Any]:
        runner = getattr(self.model, "runner", None)
        if not until or runner is None:
            return {}
        return {"stop_strings": list(until), "tokenizer": runner.tokenizer}
