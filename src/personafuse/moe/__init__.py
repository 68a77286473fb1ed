"""Persona MoE: ten stacked LoRA experts per linear layer, mixed per context by gates."""

from personafuse.moe.config import ALL_LINEAR, ExpertConfig
from personafuse.moe.inject import (
    check_mergeable,
    find_target_linears,
    inject_persona_layers,
    merge_persona,
    persona_layers,
    unmerge_persona,
)
from personafuse.moe.layer import NUM_EXPERTS, GateState, PersonaLoRALinear

__all__ = [
    "ALL_LINEAR",
    "NUM_EXPERTS",
    "ExpertConfig",
    "GateState",
    "PersonaLoRALinear",
    "check_mergeable",
    "find_target_linears",
    "inject_persona_layers",
    "merge_persona",
    "persona_layers",
    "unmerge_persona",
]
