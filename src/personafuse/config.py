"""The checkpoint-level configuration: which base and encoder, the experts' shape, the router's settings.

Serialised as ``config.json`` in every checkpoint, together with the package version, so a checkpoint
describes itself and loading can refuse one that does not fit.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from personafuse.models.aliases import DEFAULT_BASE, DEFAULT_ENCODER
from personafuse.models.quantization import LOAD_IN_CHOICES
from personafuse.moe.config import ExpertConfig
from personafuse.routing.router import RouterConfig


@dataclass
class PersonaFuseConfig:
    """Everything needed to rebuild a PersonaFuse model around its saved weights."""

    base: str = DEFAULT_BASE
    """Base causal LM: a built-in alias, a local Hugging Face folder or a hub id."""
    encoder: str = DEFAULT_ENCODER
    """Sentence encoder for routing: a built-in alias, a sentence-transformers folder or a hub id."""
    experts: ExpertConfig = field(default_factory=ExpertConfig)
    """Shape and placement of the ten LoRA experts."""
    router: RouterConfig = field(default_factory=RouterConfig)
    """How activations become gates."""
    head_hidden: int = 256
    """Hidden width of the persona head's residual MLP."""
    embed_dim: int = 0
    """Sentence-embedding size; filled in from the encoder when the model is created."""
    dtype: str = "float32"
    """Weights dtype of the base model: float32, bfloat16 or float16 (with ``load_in``: the compute dtype)."""
    load_in: Literal["4bit", "8bit"] | None = None
    """Quantise the frozen base's linear layers with bitsandbytes as it loads: "4bit" (nf4) or "8bit"; None = no."""

    def __post_init__(self) -> None:
        from personafuse.errors import ConfigError

        if isinstance(self.experts, dict):
            self.experts = _build(ExpertConfig, self.experts, "experts")
        if isinstance(self.router, dict):
            self.router = _build(RouterConfig, self.router, "router")
        if self.dtype not in {"float32", "bfloat16", "float16"}:
            raise ConfigError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        if not isinstance(self.head_hidden, int) or self.head_hidden <= 0:
            raise ConfigError(f"head_hidden must be a positive integer, got {self.head_hidden!r}")
        if self.load_in is not None and self.load_in not in LOAD_IN_CHOICES:
            raise ConfigError(
                f"load_in must be one of {list(LOAD_IN_CHOICES)} or null (unquantised), got {self.load_in!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PersonaFuseConfig:
        """Build from a dict; unknown keys raise ConfigError naming them."""
        return _build(cls, data, "")


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    from personafuse.errors import ConfigError

    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown config key(s) {[where + k for k in unknown]}; known keys: {sorted(names)}")
    return cls(**data)
