"""Resolve what a user names with ``--model``: a checkpoint folder, or a base model (alias, folder, hub id).

A base model gets the default encoder and, when the project ships trained router weights for that encoder
(``personafuse/assets/router-<encoder>.safetensors``), those weights; its experts are untrained no-ops.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from personafuse.models.aliases import DEFAULT_ENCODER

if TYPE_CHECKING:
    from personafuse.model import PersonaFuse
    from personafuse.routing import PersonaRouter


def shipped_router_weights(encoder: str) -> Path | None:
    """Path of the trained head + router shipped for ``encoder`` (an alias), or None."""
    candidate = resources.files("personafuse") / "assets" / f"router-{encoder}.safetensors"
    path = Path(str(candidate))
    return path if path.is_file() else None


def is_checkpoint(spec: str) -> bool:
    """True when ``spec`` is a folder holding a personafuse ``config.json``."""
    return (Path(spec).expanduser() / "config.json").is_file() and (Path(spec).expanduser() / "experts").is_dir()


def load_model(spec: str, device: str | None = None, encoder: str = DEFAULT_ENCODER) -> PersonaFuse:
    """A checkpoint folder, or a fresh model around base ``spec`` with the shipped router when there is one."""
    from personafuse.model import PersonaFuse

    if is_checkpoint(spec):
        return PersonaFuse.from_pretrained(Path(spec).expanduser(), device=device)
    pf = PersonaFuse.create(base=spec, encoder=encoder, device=device)
    weights = shipped_router_weights(encoder)
    if weights is not None:
        pf.persona_router.load(weights)
    return pf


def load_router(spec: str | None, device: str | None = None, encoder: str = DEFAULT_ENCODER) -> PersonaRouter:
    """Only the routing part of ``spec`` (no LLM): a checkpoint's router, or the shipped/zero-shot router."""
    import json

    from personafuse.config import PersonaFuseConfig
    from personafuse.routing import PersonaRouter
    from personafuse.routing.persona_router import ROUTER_NAME

    if spec and is_checkpoint(spec):
        folder = Path(spec).expanduser()
        raw = json.loads((folder / "config.json").read_text())
        raw.pop("personafuse_version", None)
        config = PersonaFuseConfig.from_dict(raw)
        router = PersonaRouter.create(config.encoder, config.router, config.head_hidden, device)
        router.load(folder / ROUTER_NAME)
        return router
    router = PersonaRouter.create(encoder, device=device)
    weights = shipped_router_weights(encoder)
    if weights is not None:
        router.load(weights)
    return router
