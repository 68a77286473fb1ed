"""`PersonaFuse`: a frozen chat LLM with ten persona LoRA experts, mixed per context by a router.

    model = PersonaFuse.create()                        # SmolLM2 + MiniLM, untrained experts
    model = PersonaFuse.from_pretrained("ckpt/")        # a saved checkpoint
    model.route(["my cat died"])                        # -> [Routing(activation, gates)]
    model.generate([[{"role": "user", "content": "my cat died"}]], max_new_tokens=64)
    with model.experts_disabled(): ...                  # the exact base model

Checkpoint layout: ``config.json`` (resolved config + version), ``experts/<pole>/`` (one PEFT LoRA folder per
expert) and ``router.safetensors`` (persona head + router).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from personafuse import __version__
from personafuse.atomic_io import staged_folder
from personafuse.config import PersonaFuseConfig
from personafuse.models.quantization import LoadIn
from personafuse.moe import GateState, inject_persona_layers, merge_persona, persona_layers, unmerge_persona
from personafuse.moe.peft_io import load_expert, save_expert
from personafuse.routing.persona_router import ROUTER_NAME, PersonaRouter
from personafuse.traits import POLES, Activation, Gates, PersonaError, Routing

logger = logging.getLogger(__name__)

Conversation = Sequence[Mapping[str, str]]
PersonaSpec = None | str | Routing | Gates | Activation | torch.Tensor | Mapping[str, Any]
"""None = route automatically; "off" = base model; Routing / Gates / Activation / a [10] tensor; {"A+": 0.7} gates;
{"activation": {"A": 0.8}} an activation that the router turns into gates."""

CONFIG_NAME = "config.json"
EXPERTS_DIR = "experts"


def conversation_text(conversation: Conversation) -> str:
    """The text the persona encoder reads: the non-system turns, joined by newlines."""
    return "\n".join(str(m.get("content", "")) for m in conversation if m.get("role") != "system")


def _check_conversations(conversations: Sequence[Any]) -> list[list[dict[str, str]]]:
    if isinstance(conversations, (str, bytes)) or not isinstance(conversations, Sequence):
        raise PersonaError("conversations must be a list of conversations (each a list of {role, content} dicts)")
    out = []
    for index, conversation in enumerate(conversations):
        if isinstance(conversation, str):
            conversation = [{"role": "user", "content": conversation}]
        if not conversation or not all(
            isinstance(m, Mapping) and "role" in m and "content" in m for m in conversation
        ):
            raise PersonaError(f"conversation {index} must be a non-empty list of {{role, content}} messages")
        if not conversation_text(conversation).strip():
            raise PersonaError(f"conversation {index} has no text; give at least one non-empty user message")
        out.append([dict(m) for m in conversation])
    if not out:
        raise PersonaError("no conversations given")
    return out


class PersonaFuse:
    """A base causal LM carrying ten persona experts, plus the encoder, head and router that mix them."""

    def __init__(self, config: PersonaFuseConfig, model, tokenizer, persona_router: PersonaRouter,
                 state: GateState) -> None:  # fmt: skip
        self.config = config
        self.model = model
        self.tokenizer = tokenizer
        self.persona_router = persona_router
        self.state = state

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(
        cls,
        base: str | None = None,
        encoder: str | None = None,
        rank: int = 8,
        alpha: float | None = None,
        dropout: float = 0.0,
        target_modules: list[str] | str = "all-linear",
        config: PersonaFuseConfig | None = None,
        device: str | None = None,
        init_b: str = "zeros",
        seed: int = 0,
        load_in: LoadIn | None = None,
    ) -> PersonaFuse:
        """A fresh model: base + ten untrained experts + zero-shot head (prototypes = pole descriptions).

        Args:
            base: base LLM alias, folder or hub id (default ``smollm2-135m-instruct``).
            encoder: sentence encoder alias, folder or hub id (default ``minilm-l6``).
            rank: LoRA rank per expert.
            alpha: LoRA alpha (default 2 * rank).
            dropout: LoRA dropout during training.
            target_modules: module-name suffixes, or "all-linear".
            config: a full config instead of the individual arguments.
            device: where to put the models (default: CUDA if available, else CPU).
            init_b: "zeros" (experts start as no-ops, as in PEFT) or "random" (for tests and benchmarks).
            seed: seed of the expert initialisation.
            load_in: "4bit" (nf4) or "8bit" loads the base quantised by bitsandbytes (QLoRA-style; needs
                ``pip install 'personafuse[quant]'``); the experts take ``config.dtype``, the compute dtype. Like the
                other expert arguments, unused when ``config`` is given (set ``config.load_in`` there).

        Raises:
            ModelLoadError / ConfigError: an unknown model, a target module the base lacks, or ``load_in`` without
                bitsandbytes installed.
        """
        from personafuse.moe.config import ExpertConfig

        if config is None:
            config = PersonaFuseConfig(
                experts=ExpertConfig(
                    rank=rank,
                    alpha=float(alpha if alpha is not None else 2 * rank),
                    dropout=dropout,
                    target_modules=target_modules,
                ),
                load_in=load_in,
            )  # fmt: skip
            if base:
                config.base = base
            if encoder:
                config.encoder = encoder
        pf = cls._assemble(config, device)
        generator = torch.Generator().manual_seed(seed)
        for _, layer in persona_layers(pf.model):
            cpu_a = torch.empty_like(layer.lora_A, device="cpu")
            cpu_b = torch.empty_like(layer.lora_B, device="cpu")
            bound = 1.0 / layer.in_features**0.5
            cpu_a.uniform_(-bound, bound, generator=generator)
            cpu_b.normal_(0.0, 0.02, generator=generator) if init_b == "random" else cpu_b.zero_()
            with torch.no_grad():
                layer.lora_A.copy_(cpu_a)
                layer.lora_B.copy_(cpu_b)
        return pf

    @classmethod
    def _assemble(cls, config: PersonaFuseConfig, device: str | None) -> PersonaFuse:
        from personafuse.errors import ModelLoadError
        from personafuse.models import load_base_model, resolve_base_path
        from personafuse.models.quantization import check_bitsandbytes

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        resolve_base_path(config.base)  # fail on a bad base name before spending time on the encoder
        missing = check_bitsandbytes(config.load_in)
        if missing:
            raise ModelLoadError(missing)
        persona_router = PersonaRouter.create(config.encoder, config.router, config.head_hidden, device)
        if config.embed_dim and config.embed_dim != persona_router.embed_dim:
            raise ModelLoadError(
                f"the checkpoint's router expects {config.embed_dim}-d embeddings but encoder {config.encoder!r} "
                f"gives {persona_router.embed_dim}-d; load it with the encoder it was trained with"
            )
        config.embed_dim = persona_router.embed_dim
        dtype = getattr(torch, config.dtype)
        model, tokenizer = load_base_model(config.base, dtype=dtype, device=device, load_in=config.load_in)
        state = GateState()
        # The experts take the configured dtype, not the base weight's: a quantised weight is stored as integers.
        inject_persona_layers(model, config.experts, state, dtype=dtype)
        if config.load_in is None:  # a quantised base was loaded onto `device`, and its experts were made there
            model.to(device)
        return cls(config, model, tokenizer, persona_router, state)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | None = None,
                        load_in: Literal["saved"] | LoadIn | None = "saved") -> PersonaFuse:  # fmt: skip
        """Load a checkpoint saved by :meth:`save_pretrained`.

        Args:
            path: the checkpoint folder.
            device: where to put the models (default: CUDA if available, else CPU).
            load_in: "saved" quantises the base as the checkpoint was saved (its ``config.json``); "4bit", "8bit"
                or None overrides that, e.g. None to merge experts that were trained on a 4-bit base.

        Raises:
            ModelLoadError: missing files, another package's config, or weights that do not fit the base.
        """
        from personafuse.errors import ModelLoadError

        folder = Path(path)
        config_path = folder / CONFIG_NAME
        if not config_path.is_file():
            raise ModelLoadError(f"{folder} is not a personafuse checkpoint (no {CONFIG_NAME}); save one with "
                                 "PersonaFuse.save_pretrained or `personafuse train`")  # fmt: skip
        raw = json.loads(config_path.read_text())
        if raw.pop("personafuse_version", None) is None:
            raise ModelLoadError(f"{config_path} was not written by personafuse (no personafuse_version)")
        if load_in != "saved":
            raw["load_in"] = load_in
        config = PersonaFuseConfig.from_dict(raw)
        pf = cls._assemble(config, device)
        for index, pole in enumerate(POLES):
            load_expert(folder / EXPERTS_DIR / pole, pf.model, index)
        pf.persona_router.load(folder / ROUTER_NAME)
        return pf

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write the checkpoint atomically: into a temp folder beside ``path``, then renamed over it."""
        with staged_folder(path) as tmp:
            for index, pole in enumerate(POLES):
                save_expert(tmp / EXPERTS_DIR / pole, self.model, index, self.config.experts.rank,
                            self.config.experts.alpha, self.config.base)  # fmt: skip
            self.persona_router.save(tmp / ROUTER_NAME)
            payload = {"personafuse_version": __version__, **self.config.to_dict()}
            (tmp / CONFIG_NAME).write_text(json.dumps(payload, indent=2) + "\n")

    # ------------------------------------------------------------------ routing
    @property
    def device(self) -> torch.device:
        """Device of the base model."""
        return next(self.model.parameters()).device

    def route(self, texts: Sequence[str] | str) -> list[Routing]:
        """Predict the activation and gates of each context (see :class:`PersonaRouter`).

        Raises:
            PersonaError: an empty text.
        """
        return self.persona_router.route(texts)

    def gates_of(self, persona: PersonaSpec) -> torch.Tensor | None:
        """One persona spec -> gates [10], or None to route automatically."""
        if persona is None:
            return None
        if isinstance(persona, str):
            if persona == "off":
                return torch.zeros(len(POLES))
            from personafuse.traits import parse_persona_spec

            return torch.tensor(parse_persona_spec(persona).values)
        if isinstance(persona, Routing):
            return torch.tensor(persona.gates.values)
        if isinstance(persona, Gates):
            return torch.tensor(persona.values)
        if isinstance(persona, torch.Tensor):
            return torch.tensor(Gates.from_sequence(persona.detach().flatten().cpu().tolist()).values)
        if isinstance(persona, Activation):
            return self.persona_router.gates_from_activation(persona)
        if isinstance(persona, Mapping):
            if set(persona) == {"activation"}:
                if not isinstance(persona["activation"], Mapping):
                    raise PersonaError('persona {"activation": ...} needs a mapping like {"A": 0.8, "N": -0.5}')
                return self.gates_of(Activation.from_mapping(persona["activation"]))
            return torch.tensor(Gates.from_mapping(persona).values)
        raise PersonaError(
            f"persona {persona!r} is not understood; use None (auto), 'off', a Routing, gates like "
            '{"A+": 0.7, "N-": 0.3} or {"activation": {"A": 0.8}}'
        )

    def gates_for(self, conversations: Sequence[Conversation], persona: PersonaSpec | Sequence[PersonaSpec] = None
                  ) -> torch.Tensor:  # fmt: skip
        """Gates [batch, 10] for each conversation: routed automatically, or from ``persona``.

        ``persona`` is one spec for all conversations or a list with one per conversation.
        """
        conversations = _check_conversations(conversations)
        if isinstance(persona, (list, tuple)):
            if len(persona) != len(conversations):
                raise PersonaError(f"{len(persona)} personas for {len(conversations)} conversations; give one each")
            specs = list(persona)
        else:
            specs = [persona] * len(conversations)
        rows: list[torch.Tensor | None] = [self.gates_of(spec) for spec in specs]
        auto = [i for i, row in enumerate(rows) if row is None]
        if auto:
            _, routed = self.persona_router.activations_and_gates([conversation_text(conversations[i]) for i in auto])
            for i, gates in zip(auto, routed.cpu()):
                rows[i] = gates
        return torch.stack([row for row in rows if row is not None]).to(self.device, torch.float32)

    # ------------------------------------------------------------------ running the LLM
    @contextlib.contextmanager
    def using_gates(self, gates: torch.Tensor | None) -> Iterator[None]:
        """Every forward pass of ``self.model`` inside uses these gates ([batch, 10]; None = base)."""
        previous = self.state.gates
        self.state.set(gates)
        try:
            yield
        finally:
            self.state.set(previous)

    @contextlib.contextmanager
    def experts_disabled(self) -> Iterator[None]:
        """The exact base model inside (the reference policy of preference training)."""
        previous = self.state.enabled
        self.state.enabled = False
        try:
            yield
        finally:
            self.state.enabled = previous

    def merge(self, persona: PersonaSpec) -> torch.Tensor:
        """Merge one fixed persona into the base weights (fastest decoding); returns its gates [10].

        Raises:
            PersonaError: ``persona`` is automatic routing or invalid.
            UserError: the base is quantised (``load_in``); nothing is merged.
        """
        gates = self.gates_of(persona)
        if gates is None:
            raise PersonaError("merge needs a fixed persona (gates or an activation), not automatic routing")
        merge_persona(self.model, gates.to(self.device))
        return gates

    def unmerge(self) -> None:
        """Restore the base weights after :meth:`merge`."""
        unmerge_persona(self.model)

    def chat_inputs(self, conversations: Sequence[Conversation]) -> dict[str, torch.Tensor]:
        """Tokenised, left-padded chat-template inputs with the generation prompt."""
        conversations = _check_conversations(conversations)
        texts = [self.tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
                 for c in conversations]  # fmt: skip
        encoded = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        return {k: v.to(self.device) for k, v in encoded.items()}

    def generate(self, conversations: Sequence[Conversation], persona: PersonaSpec | Sequence[PersonaSpec] = None,
                 **generate_kwargs: Any) -> list[str]:  # fmt: skip
        """Reply to each conversation (batched), the experts mixed per conversation.

        Args:
            conversations: list of conversations, each a list of ``{"role", "content"}`` messages.
            persona: None routes each conversation automatically; else a spec or one spec per conversation.
            **generate_kwargs: passed to ``transformers`` ``generate`` (``max_new_tokens``, ``do_sample``, ...).

        Returns:
            The reply strings, special tokens removed.
        """
        replies, _ = self.generate_with_gates(conversations, persona, **generate_kwargs)
        return replies

    def generate_with_gates(self, conversations: Sequence[Conversation],
                            persona: PersonaSpec | Sequence[PersonaSpec] = None,
                            **generate_kwargs: Any) -> tuple[list[str], torch.Tensor]:  # fmt: skip
        """Like :meth:`generate`, also returning the gates [batch, 10] that were used."""
        gates = self.gates_for(conversations, persona)
        inputs = self.chat_inputs(conversations)
        generate_kwargs.setdefault("max_new_tokens", 128)
        generate_kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        with self.using_gates(gates), torch.no_grad():
            output = self.model.generate(**inputs, **generate_kwargs)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]  # [batch * n, new]
        return self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True), gates
