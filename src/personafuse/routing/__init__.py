"""Persona encoder head and router."""

from personafuse.routing.descriptions import POLE_DESCRIPTIONS
from personafuse.routing.head import PersonaHead
from personafuse.routing.persona_router import PersonaRouter
from personafuse.routing.router import Router, RouterConfig, gates_from_logits, sign_matrix

__all__ = [
    "POLE_DESCRIPTIONS",
    "PersonaHead",
    "PersonaRouter",
    "Router",
    "RouterConfig",
    "gates_from_logits",
    "sign_matrix",
]
