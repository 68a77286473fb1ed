"""personafuse: a frozen chat LLM with ten Big Five persona LoRA experts, mixed per context by a router."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from personafuse.traits import POLES, TRAITS, Activation, Gates, PersonaError, Routing

__version__ = "0.1.0"

__all__ = ["POLES", "TRAITS", "Activation", "Gates", "PersonaError", "PersonaFuse", "Routing", "__version__"]

if TYPE_CHECKING:
    from personafuse.model import PersonaFuse


def __getattr__(name: str) -> Any:
    # Lazy: importing torch/transformers costs seconds, and `personafuse --help` or data tools need neither.
    if name == "PersonaFuse":
        from personafuse.model import PersonaFuse

        return PersonaFuse
    raise AttributeError(f"module 'personafuse' has no attribute {name!r}")
