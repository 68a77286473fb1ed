"""Each expert as an ordinary PEFT LoRA adapter folder, so PEFT, vLLM and LoRAX users can load any one of them.

Layout of one folder: ``adapter_config.json`` (written by ``peft.LoraConfig``) and ``adapter_model.safetensors``
with PEFT's key names ``base_model.model.<module>.lora_A.weight`` [r, in] / ``lora_B.weight`` [out, r].
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from personafuse.moe.inject import persona_layers
from personafuse.moe.layer import PersonaLoRALinear

PEFT_PREFIX = "base_model.model."
WEIGHTS_NAME = "adapter_model.safetensors"


def _peft_config(model: nn.Module, layers: list[tuple[str, PersonaLoRALinear]], rank: int, alpha: float, base: str):
    from peft import LoraConfig

    suffixes = sorted({name.split(".")[-1] for name, _ in layers})
    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=suffixes,
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=base,
    )


def lora_state_dict(layers: list[tuple[str, PersonaLoRALinear]], a_b: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    """PEFT-named state dict from per-layer (A [r', in], B [out, r']) pairs."""
    out = {}
    for (name, _), (a, b) in zip(layers, a_b):
        out[f"{PEFT_PREFIX}{name}.lora_A.weight"] = a.detach().contiguous().cpu()
        out[f"{PEFT_PREFIX}{name}.lora_B.weight"] = b.detach().contiguous().cpu()
    return out


def save_lora_folder(folder: Path, model: nn.Module, state: dict, rank: int, alpha: float, base_name: str) -> None:
    """Write one PEFT LoRA folder (config + safetensors weights)."""
    layers = list(persona_layers(model))
    folder.mkdir(parents=True, exist_ok=True)
    _peft_config(model, layers, rank, alpha, base_name).save_pretrained(str(folder))
    save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})


def save_expert(folder: Path, model: nn.Module, expert: int, rank: int, alpha: float, base_name: str) -> None:
    """Write expert ``expert`` of every persona layer of ``model`` as a PEFT LoRA folder."""
    layers = list(persona_layers(model))
    state = lora_state_dict(layers, [layer.expert_weights(expert) for _, layer in layers])
    save_lora_folder(folder, model, state, rank, alpha, base_name)


def load_expert(folder: Path, model: nn.Module, expert: int) -> None:
    """Load a PEFT LoRA folder into expert slot ``expert`` of every persona layer.

    Raises:
        ModelLoadError: missing file, missing layer, or shapes that do not fit this base model.
    """
    from personafuse.errors import ModelLoadError

    path = folder / WEIGHTS_NAME
    if not path.is_file():
        raise ModelLoadError(f"expert folder {folder} has no {WEIGHTS_NAME}; it is not a PEFT LoRA adapter")
    tensors = load_file(str(path))
    for name, layer in persona_layers(model):
        key_a, key_b = f"{PEFT_PREFIX}{name}.lora_A.weight", f"{PEFT_PREFIX}{name}.lora_B.weight"
        if key_a not in tensors or key_b not in tensors:
            raise ModelLoadError(
                f"{path} has no weights for layer {name}; the checkpoint was made for other target modules"
            )
        a_view, b_view = layer.expert_weights(expert)
        a, b = tensors[key_a], tensors[key_b]
        if a.shape != a_view.shape or b.shape != b_view.shape:
            raise ModelLoadError(
                f"{path}: layer {name} has shapes A{tuple(a.shape)} B{tuple(b.shape)} but this base model needs "
                f"A{tuple(a_view.shape)} B{tuple(b_view.shape)}; the checkpoint was trained on another base model "
                "or rank"
            )
        with torch.no_grad():
            a_view.copy_(a)
            b_view.copy_(b)
        layer._prepared_version = -1
