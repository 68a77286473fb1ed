"""Put persona layers into a Hugging Face model, find them again, merge and unmerge a fixed persona."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from personafuse.moe.config import ALL_LINEAR, ExpertConfig
from personafuse.moe.layer import GateState, PersonaLoRALinear, quantized_merge_error


def _output_head_names(model: nn.Module) -> set[str]:
    names = set()
    get_output = getattr(model, "get_output_embeddings", None)
    head = get_output() if callable(get_output) else None
    for name, module in model.named_modules():
        if module is head or name.split(".")[-1] in {"lm_head", "score", "classifier"}:
            names.add(name)
    return names


def find_target_linears(model: nn.Module, target_modules: list[str] | str) -> list[str]:
    """Names of the linear layers that ``target_modules`` selects.

    A target matches a module whose full name equals it or ends with ``"." + target`` (PEFT's rule);
    ``"all-linear"`` selects every ``nn.Linear`` except the output head.

    Raises:
        ConfigError: a target that matches no linear layer; the message lists the names that exist.
    """
    from personafuse.errors import ConfigError

    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if target_modules == ALL_LINEAR:
        heads = _output_head_names(model)
        chosen = [name for name in linears if name not in heads]
        if not chosen:
            raise ConfigError("target_modules='all-linear' found no linear layer besides the output head")
        return chosen
    chosen, missing = [], []
    for target in target_modules:
        hits = [n for n in linears if n == target or n.endswith("." + target)]
        if not hits:
            missing.append(target)
        chosen.extend(hits)
    if missing:
        suffixes = sorted({n.split(".")[-1] for n in linears})
        raise ConfigError(
            f"target_modules {missing} match no linear layer of this model; its linear layers are named "
            f"{', '.join(suffixes)} (or use 'all-linear')"
        )
    return sorted(set(chosen), key=linears.index)


def inject_persona_layers(model: nn.Module, config: ExpertConfig, state: GateState,
                          dtype: torch.dtype | None = None) -> list[str]:  # fmt: skip
    """Replace each targeted ``nn.Linear`` by a :class:`PersonaLoRALinear` sharing ``state``; freeze the base.

    Args:
        model: the base causal LM (changed in place).
        config: rank, alpha, dropout and target modules of the experts.
        state: the gates every persona layer reads.
        dtype: the experts' dtype; needed for a quantised base, whose weights are stored as integers (give the
            compute dtype). Default: each base weight's dtype.

    Returns:
        The names of the adapted modules, in model order.
    """
    names = find_target_linears(model, config.target_modules)
    for param in model.parameters():
        param.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        base = getattr(parent, child)
        layer = PersonaLoRALinear(base, config.rank, config.alpha, config.dropout, state, dtype=dtype)
        layer.train(base.training)  # a new module starts in training mode; follow the model's mode
        setattr(parent, child, layer)
    return names


def persona_layers(model: nn.Module) -> Iterator[tuple[str, PersonaLoRALinear]]:
    """(name, layer) for every persona layer of ``model``; names are those of the adapted linear."""
    for name, module in model.named_modules():
        if isinstance(module, PersonaLoRALinear):
            yield name, module


def check_mergeable(model: nn.Module) -> None:
    """Refuse, before any weight changes, to merge into a model whose adapted base weights are quantised.

    Raises:
        UserError: one line naming the first quantised layer and what to do instead.
    """
    for name, layer in persona_layers(model):
        if layer.quantized:
            raise quantized_merge_error(layer, name)


def merge_persona(model: nn.Module, gates: torch.Tensor) -> None:
    """Merge one fixed mix ``gates`` [10] into every adapted weight (the fixed-persona fast path).

    Raises:
        UserError: the base is quantised (see :func:`check_mergeable`); nothing is merged then.
    """
    check_mergeable(model)
    for _, layer in persona_layers(model):
        layer.merge(gates)


def unmerge_persona(model: nn.Module) -> None:
    """Undo :func:`merge_persona`."""
    for _, layer in persona_layers(model):
        layer.unmerge()
