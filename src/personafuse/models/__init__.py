"""Base-model and sentence-encoder loading, with the built-in aliases for the embedded wheels."""

from personafuse.models.aliases import BASE_ALIASES, ENCODER_ALIASES, personafuse_home
from personafuse.models.base import load_base_model, resolve_base_path
from personafuse.models.encoder import load_encoder, resolve_encoder_path
from personafuse.models.quantization import LOAD_IN_CHOICES, LoadIn

__all__ = [
    "BASE_ALIASES",
    "ENCODER_ALIASES",
    "LOAD_IN_CHOICES",
    "LoadIn",
    "load_base_model",
    "load_encoder",
    "personafuse_home",
    "resolve_base_path",
    "resolve_encoder_path",
]
