"""The naive baseline: a Python loop over experts per layer, as PEFT applies several LoRA adapters.

Used only by the benchmark, to show what the stacked layer saves. Swapped in as a context manager so the
library's hot path carries no trace of it.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from personafuse.moe.inject import persona_layers
from personafuse.moe.layer import NUM_EXPERTS, PersonaLoRALinear


def _naive_forward(self: PersonaLoRALinear, x: torch.Tensor) -> torch.Tensor:
    result = self.base(x)
    gates = self.state.gates
    if self.state.is_base or gates is None:
        return result
    if gates.shape[0] != x.shape[0]:
        gates = gates.repeat_interleave(x.shape[0] // gates.shape[0], dim=0)
    weights = gates.to(x.dtype).view(x.shape[0], *([1] * (x.dim() - 1)), NUM_EXPERTS)  # [batch, 1, 1, E]
    for expert in range(NUM_EXPERTS):  # PEFT-style: one adapter after another
        a, b = self.expert_weights(expert)
        result = result + F.linear(F.linear(x, a), b) * self.scaling * weights[..., expert]
    return result


@contextlib.contextmanager
def naive_expert_loop(model: nn.Module) -> Iterator[None]:
    """Every persona layer of ``model`` computes its experts one by one inside the block."""
    layers = [layer for _, layer in persona_layers(model)]
    for layer in layers:
        layer.forward = types.MethodType(_naive_forward, layer)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward
