"""Export a plain Hugging Face model with one fixed persona merged into the base weights.

The result loads with ``AutoModelForCausalLM.from_pretrained`` (and so with vLLM, TGI, llama.cpp converters)
and decodes at exactly the base model's cost: for every adapted linear, ``W' = W + (alpha/r) sum_e g_e B_e A_e``.
The PersonaFuse model itself is not modified: the merged weights are built in a separate state dict.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from personafuse import __version__
from personafuse.export.folder import check_target, staged_folder
from personafuse.moe import check_mergeable, persona_layers
from personafuse.traits import Gates

if TYPE_CHECKING:
    from personafuse.model import PersonaFuse, PersonaSpec

EXPORT_INFO_NAME = "personafuse_export.json"
"""Sidecar file describing where an export came from (source model, persona, package version)."""


def merged_state_dict(pf: PersonaFuse, gates: torch.Tensor) -> dict[str, torch.Tensor]:
    """The base model's state dict with ``gates`` [10] merged into every adapted weight and no LoRA tensors.

    Keys are those of the plain base model (``...q_proj.weight``, not ``...q_proj.base.weight``).

    Raises:
        UserError: the base is quantised (``load_in``); a merged export needs the unquantised weights.
    """
    check_mergeable(pf.model)
    state = pf.model.state_dict()
    for name, layer in persona_layers(pf.model):
        weight = state.pop(f"{name}.base.weight")
        delta = layer.delta_weight(gates.to(layer.lora_B.device, torch.float32))  # [out, in]
        state[f"{name}.weight"] = (weight.to(torch.float32) + delta.to(torch.float32)).to(weight.dtype)
        if f"{name}.base.bias" in state:
            state[f"{name}.bias"] = state.pop(f"{name}.base.bias")
        state.pop(f"{name}.lora_A", None)
        state.pop(f"{name}.lora_B", None)
    leftover = [key for key in state if ".lora_" in key or ".base." in key]
    if leftover:  # a persona layer the loop above missed would leave wrapper keys the base class cannot load
        raise RuntimeError(f"merged state dict still has persona-layer keys: {leftover[:3]}")
    return state


def export_merged(pf: PersonaFuse, persona: PersonaSpec, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``pf``'s base with the fixed ``persona`` merged in, plus its tokenizer, as a plain HF model folder.

    Args:
        pf: the PersonaFuse model.
        persona: a fixed persona (gates such as ``"A+=0.7,N-=0.3"`` / ``{"A+": 0.7}``, or ``{"activation": ...}``).
        out: the output folder (written atomically).
        overwrite: replace an existing non-empty folder.

    Returns:
        The folder.

    Raises:
        PersonaError: ``persona`` is automatic routing (None) or invalid.
        UserError: ``out`` exists and is not empty without ``overwrite``.
    """
    from personafuse.traits import PersonaError

    if persona is None:
        raise PersonaError("a merged export needs a fixed persona such as 'A+=0.7,N-=0.3', not automatic routing")
    gates = pf.gates_of(persona)
    assert gates is not None
    target = check_target(out, overwrite)
    state = merged_state_dict(pf, gates)
    with staged_folder(target) as tmp:
        pf.model.save_pretrained(tmp, state_dict=state)
        pf.tokenizer.save_pretrained(tmp)
        info = {
            "personafuse_version": __version__,
            "kind": "merged",
            "source_base": pf.config.base,
            "gates": {pole: round(value, 6) for pole, value in Gates.from_sequence(gates.tolist()).as_dict().items()},
            "experts": pf.config.to_dict()["experts"],
        }
        (tmp / EXPORT_INFO_NAME).write_text(json.dumps(info, indent=2) + "\n")
    return target
