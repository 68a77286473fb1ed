"""Training configuration: one typed dataclass per stage, composed into :class:`TrainConfig`.

YAML files in ``configs/`` are serialised TrainConfigs; CLI overrides are ``section.key=value`` on top of the
YAML on top of the defaults (TRL/torchtune style). Unknown keys and bad values are collected into one
:class:`~personafuse.errors.ConfigError` before any model loads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from personafuse.config import PersonaFuseConfig

Stage = Literal["experts", "router", "preference", "sft_baseline", "all"]
STAGES: tuple[str, ...] = ("experts", "router", "preference")
"""The PersonaFuse stages, in order (the default of ``stages``)."""
BASELINE_STAGES: tuple[str, ...] = ("sft_baseline",)
"""Comparison models for the evaluation, trained on request (``--stage sft_baseline``)."""
KNOWN_STAGES: tuple[str, ...] = STAGES + BASELINE_STAGES


@dataclass
class DataConfig:
    """Where the training data lives."""

    corpus: str = "data/seed"
    """Situation corpus: a JSONL file or a folder of them (schema: docs/data.md)."""
    general: str | None = None
    """Optional general-instruction JSONL mixed into stage 1 (e.g. a GSM8K train file: question/answer)."""
    general_ratio: float = 0.2
    """Fraction of stage-1 samples drawn from ``general`` (0 disables the mix)."""
    counsel_chat: str | None = None
    """CounselChat CSV for the stage-3 reward model (answers to one question ranked by upvotes)."""
    max_length: int = 512
    """Token limit of one training sequence (prompt + reply); longer samples are truncated from the left."""

    def __post_init__(self) -> None:
        from personafuse.errors import ConfigError

        problems = []
        ratio = self.general_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
            problems.append(f"data.general_ratio={ratio!r}: expected a number in [0, 1) (0 disables the mix)")
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or self.max_length < 16:
            problems.append(f"data.max_length={self.max_length!r}: expected an integer >= 16 (tokens per sample)")
        if problems:
            raise ConfigError("; ".join(problems))


@dataclass
class ExpertsStageConfig:
    """Stage 1: SFT of the ten experts, each sample hard-routed to its pole's expert."""

    epochs: float = 1.0
    """Passes over the pole replies."""
    max_steps: int = -1
    """Stop after this many optimiser steps (-1: run the epochs)."""
    batch_size: int = 8
    """Samples per device per step."""
    grad_accum: int = 1
    """Gradient accumulation steps."""
    lr: float = 2e-4
    """Peak learning rate (AdamW)."""
    warmup_ratio: float = 0.03
    """Fraction of steps of linear warm-up."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    gradient_checkpointing: bool = False
    """Trade compute for memory on big models."""
    lr_schedule: Literal["constant", "linear", "cosine"] = "cosine"
    """Learning rate after the warm-up: constant, or linear / cosine decay to 0."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 disables clipping)."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Autocast the forward pass; the experts' weights are kept in float32 (use with model.dtype bfloat16)."""
    logging_steps: int = 10
    """Write a metrics row every this many optimiser steps."""
    save_steps: int = 50
    """Write a resumable checkpoint every this many optimiser steps."""
    save_total_limit: int = 2
    """Keep only the newest this many resumable checkpoints."""

    def __post_init__(self) -> None:
        from personafuse.errors import ConfigError

        problems = []
        for name in ("batch_size", "grad_accum", "logging_steps", "save_steps", "save_total_limit"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"experts.{name}={value!r}: expected an integer >= 1")
        if (
            isinstance(self.max_steps, bool)
            or not isinstance(self.max_steps, int)
            or (self.max_steps < 1 and self.max_steps != -1)
        ):
            problems.append(f"experts.max_steps={self.max_steps!r}: expected an integer >= 1, or -1 to run the epochs")
        for name, low, high in (("epochs", 0.0, None), ("lr", 0.0, None), ("warmup_ratio", None, 1.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                problems.append(f"experts.{name}={value!r}: expected a number")
            elif low is not None and not value > low:
                problems.append(f"experts.{name}={value!r}: expected a number > {low:g}")
            elif high is not None and not 0.0 <= value < high:
                problems.append(f"experts.{name}={value!r}: expected a number in [0, {high:g})")
        for name in ("weight_decay", "max_grad_norm"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                problems.append(f"experts.{name}={value!r}: expected a number >= 0")
        if problems:
            raise ConfigError("; ".join(problems))


@dataclass
class RouterStageConfig:
    """Stage 2: persona head + router on the activation labels (contrastive + consistency + regression)."""

    epochs: int = 20
    """Passes over the training contexts (embeddings are precomputed; epochs are cheap)."""
    batch_size: int = 64
    """Contexts per step."""
    lr: float = 1e-3
    """AdamW learning rate."""
    temperature: float = 0.2
    """InfoNCE temperature between persona embeddings and pole prototypes."""
    w_contrastive: float = 1.0
    """Weight of the InfoNCE loss."""
    w_consistency: float = 0.5
    """Weight of the trait-consistency (supervised contrastive) loss."""
    w_regression: float = 1.0
    """Weight of the regression loss to the signed activations."""
    grad_accum: int = 1
    """Micro-batches per optimiser step; the contrastive losses see all of them at once (GradCache)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    """Learning rate over the steps: constant, or cosine decay to 0."""
    consistency_temperature: float = 0.05
    """Temperature of the trait-consistency loss between persona embeddings of one batch."""
    regression: Literal["mse", "smooth_l1"] = "mse"
    """Regression loss between the head's tanh activation and the labels."""
    w_gates: float = 0.1
    """Weight of the KL from the labels' target gates to the router's gates (0 leaves the router as initialised)."""
    router_lr: float | None = None
    """AdamW lr of the router (activation -> gates); None = ``lr``. Only the gate loss reaches the router, and
    Adam ignores a loss's scale, so this (not ``w_gates``, as long as it is > 0) sets how far the gates move."""
    eval_test: bool = False
    """Also score the test split; leave off while tuning (tune on val only), turn on once at the end."""

    def __post_init__(self) -> None:
        from personafuse.errors import ConfigError

        problems = []
        for name in ("epochs", "batch_size", "grad_accum"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"router.{name}={value!r}: expected an integer >= 1")
        for name in ("lr", "temperature", "consistency_temperature"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                default = {f.name: f.default for f in dataclasses.fields(self)}[name]
                problems.append(f"router.{name}={value!r}: expected a number > 0 (default {default})")
        if self.router_lr is not None and (
            isinstance(self.router_lr, bool) or not isinstance(self.router_lr, (int, float)) or self.router_lr < 0
        ):
            problems.append(f"router.router_lr={self.router_lr!r}: expected null (= router.lr) or a number >= 0")
        for name in ("w_contrastive", "w_consistency", "w_regression", "w_gates", "weight_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                problems.append(f"router.{name}={value!r}: expected a number >= 0")
        if problems:
            raise ConfigError("; ".join(problems))


@dataclass
class PreferenceStageConfig:
    """Stage 3: preference / RL tuning of the routed model with a KL anchor to the base."""

    method: Literal["dpo", "grpo", "rloo"] = "dpo"
    """Algorithm: DPO on ideal vs rejected, or GRPO / RLOO with the reward model."""
    beta: float = 0.1
    """KL strength (DPO beta / RL KL coefficient); the reference is the base with experts disabled."""
    epochs: float = 1.0
    """Passes over the preference pairs / prompts."""
    max_steps: int = -1
    """Stop after this many optimiser steps (-1: run the epochs)."""
    batch_size: int = 4
    """Pairs (DPO) or prompts (RL) per step."""
    lr: float = 5e-5
    """Learning rate."""
    train_router: bool = False
    """Also update the persona head and router (default: only the experts; 10 DPO steps cut val macro-F1 0.49 -> 0.44)."""
    num_generations: int = 4
    """RL: sampled replies per prompt."""
    max_new_tokens: int = 64
    """RL: reply length limit while sampling."""
    reward_model: str | None = None
    """RL: a trained reward-model folder (default: train one on data.counsel_chat first)."""
    w_persona_reward: float = 0.5
    """RL: weight of the persona-consistency reward next to the reward model's score."""
    grad_accum: int = 1
    """Gradient accumulation steps (an optimiser step sees batch_size * grad_accum pairs / prompts)."""
    routing: Literal["routed", "label"] = "routed"
    """Gates each sample trains with: the router's gates for its context (differentiable when train_router), or
    the record's labelled activation through the router ("label", teacher forcing; needs train_router=false)."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 disables clipping)."""
    label_smoothing: float = 0.0
    """DPO: assumed rate of flipped preference labels (conservative DPO), in [0, 0.5)."""
    temperature: float = 1.0
    """RL: sampling temperature of the replies."""
    save_every: int = 20
    """Write resumable state (trainable weights + optimiser) every this many optimiser steps."""
    eval_prompts: int = 64
    """Held-out (val) situations for the before/after reward and DPO accuracy report (0 skips the report)."""


@dataclass
class TrainConfig:
    """A whole training run."""

    model: PersonaFuseConfig = field(default_factory=PersonaFuseConfig)
    """Base, encoder, expert shape and router settings."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training data."""
    experts: ExpertsStageConfig = field(default_factory=ExpertsStageConfig)
    """Stage 1."""
    router: RouterStageConfig = field(default_factory=RouterStageConfig)
    """Stage 2."""
    preference: PreferenceStageConfig = field(default_factory=PreferenceStageConfig)
    """Stage 3."""
    output_dir: str = "runs/personafuse"
    """Checkpoints, metrics.jsonl, loss plots and the run summary go here."""
    seed: int = 0
    """Seed of every random choice."""
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    """Stages that `--stage all` runs, in order."""


def _field_types(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def build_dataclass(cls: type, data: dict[str, Any], prefix: str, problems: list[str]) -> Any:
    """Build ``cls`` from ``data`` recursively, appending every problem (unknown key, wrong type) to ``problems``."""
    import typing

    from personafuse.errors import ConfigError

    if not isinstance(data, dict):
        problems.append(f"{prefix or 'config'} must be a mapping, got {type(data).__name__}")
        return cls()
    fields = _field_types(cls)
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else key
        if key not in fields:
            problems.append(f"unknown key {name!r}; known keys here: {', '.join(sorted(fields))}")
            continue
        hint = hints[key]
        value = _coerce_float(hint, value)
        if dataclasses.is_dataclass(hint):
            kwargs[key] = build_dataclass(hint, value, name, problems)
            continue
        problem = _type_problem(hint, value)
        if problem:
            problems.append(f"{name}={value!r}: expected {problem}")
            continue
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except ConfigError as exc:  # __post_init__ validation of nested configs
        # Messages that already name their dotted key (``experts.lr=...``) are kept as they are.
        problems.append(f"{prefix}: {exc}" if prefix and not str(exc).startswith(f"{prefix}.") else str(exc))
        return cls()


def _coerce_float(hint: Any, value: Any) -> Any:
    """YAML 1.1 reads ``1e-4`` as a string; accept it where a float is expected."""
    import typing

    wants_float = hint is float or float in typing.get_args(hint)
    if wants_float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _type_problem(hint: Any, value: Any) -> str | None:
    """None when ``value`` fits ``hint``; else a short description of what was expected."""
    import types
    import typing

    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if all(_type_problem(a, value) for a in args):
            return " or ".join(_describe(a) for a in args)
        return None
    if origin is typing.Literal:
        return None if value in args else f"one of {list(args)}"
    if origin in (list, tuple):
        if not isinstance(value, list):
            return f"a list of {_describe(args[0]) if args else 'values'}"
        return next((p for p in (_type_problem(args[0], v) for v in value) if p), None) if args else None
    if hint is type(None):
        return None if value is None else "null"
    if hint is float:
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "a number"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if hint in (str, bool):
        return None if isinstance(value, hint) else _describe(hint)
    return None


def _describe(hint: Any) -> str:
    import typing

    if typing.get_origin(hint) is typing.Literal:
        return f"one of {list(typing.get_args(hint))}"
    return {str: "a string", int: "an integer", float: "a number", bool: "true/false", type(None): "null"}.get(
        hint, getattr(hint, "__name__", str(hint))
    )


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"experts.lr=1e-4"`` -> (["experts", "lr"], 1e-4); the value is parsed as YAML (numbers, bools, lists)."""
    import yaml

    from personafuse.errors import ConfigError

    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} must look like section.key=value, e.g. experts.lr=1e-4")
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else ""


def load_train_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults <- YAML file <- ``section.key=value`` overrides, validated as a whole.

    Raises:
        ConfigError: every unknown key and bad value at once, each naming its dotted key.
        FileNotFoundError: the YAML file does not exist.
    """
    import yaml

    from personafuse.errors import ConfigError

    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no config file {path}; see configs/ for examples")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of sections, got {type(loaded).__name__}")
        data = loaded
    for item in overrides or []:
        keys, value = parse_override(item)
        node = data
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {key} is not a section")
        node[keys[-1]] = value
    problems: list[str] = []
    config = build_dataclass(TrainConfig, data, "", problems)
    if problems:
        raise ConfigError("invalid training config: " + "; ".join(problems))
    return config


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain dict of a (nested) dataclass config, for YAML/JSON."""
    return dataclasses.asdict(config)
