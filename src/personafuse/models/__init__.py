"""Base-model and sentence-encoder loading, with the built-in aliases for the embedded wheels."""

from personafuse.models.aliases import BASE_ALIASES, ENCODER_ALIASES, personafuse_home
from personafuse.models.base import load_base_model, resolve_base_path
from personafuse.models.encoder import load_encoder, resolve_encoder_path

__all__ = [
    "BASE_ALIASES",
    "ENCODER_ALIASES",
    "load_base_model",
    "load_encoder",
    "personafuse_home",
    "resolve_base_path",
    "resolve_encoder_path",
]
