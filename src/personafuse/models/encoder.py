"""Sentence-encoder loading (sentence-transformers), with the ``minilm-l6`` alias."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from personafuse.models.aliases import ENCODER_ALIASES, wheel_file

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


def resolve_encoder_path(name: str) -> str:
    """Map an alias to its folder; any other name is returned as is (a local path or hub id).

    Raises:
        ModelLoadError: an alias whose wheel is missing, or a local-looking path that does not exist.
    """
    from personafuse.errors import ModelLoadError

    if name in ENCODER_ALIASES:
        return str(wheel_file(ENCODER_ALIASES[name]))
    if name.startswith((".", "/", "~")) and not Path(name).expanduser().exists():
        raise ModelLoadError(
            f"encoder path {name!r} does not exist; give a sentence-transformers folder or one of the aliases "
            f"{', '.join(ENCODER_ALIASES)}"
        )
    return name


def load_encoder(name: str, device: str | None = None) -> SentenceTransformer:
    """Load a sentence-transformers encoder by alias, path or hub id.

    Raises:
        ModelLoadError: the model cannot be found or loaded; the message says which name and what to do.
    """
    from sentence_transformers import SentenceTransformer

    from personafuse.errors import ModelLoadError

    path = resolve_encoder_path(name)
    try:
        return SentenceTransformer(path, device=device or "cpu")
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"cannot load sentence encoder {name!r} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            f"use a sentence-transformers folder or one of the aliases {', '.join(ENCODER_ALIASES)}"
        ) from None
