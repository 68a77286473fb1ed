"""Router: signed trait activations [batch, 5] -> gates over the ten experts [batch, 10].

    logits = (M a + b) / temperature     # M initialised to the sign matrix: pole T+ gets +a_T, T- gets -a_T
    gates  = intensity * softmax(logits) # optionally keeping only the top-k gates, renormalised

A strongly positive agreeableness activation thus raises A+ and lowers A-, and traits near 0 leave their
poles near the average. The gate computation itself is a pure function (:func:`gates_from_logits`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from personafuse.traits import POLES, TRAITS


@dataclass
class RouterConfig:
    """How activations become gates."""

    temperature: float = 0.25
    """Softmax temperature; lower concentrates the mix on the most activated poles."""
    top_k: int | None = None
    """Keep only the k largest gates per context (renormalised); None keeps all ten (dense)."""
    intensity: float = 1.0
    """Sum of the gates: 1 = full persona, 0 = base model, in between = a softer persona."""

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.temperature, (int, float)) or self.temperature <= 0:
            problems.append(f"router.temperature must be > 0, got {self.temperature!r}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or not 1 <= self.top_k <= len(POLES)):
            problems.append(f"router.top_k must be null or an integer in 1..{len(POLES)}, got {self.top_k!r}")
        if not isinstance(self.intensity, (int, float)) or not 0.0 <= self.intensity <= 1.0:
            problems.append(f"router.intensity must be in [0, 1], got {self.intensity!r}")
        if problems:
            from personafuse.errors import ConfigError

            raise ConfigError("; ".join(problems))


def sign_matrix() -> torch.Tensor:
    """[10, 5] with +1 at (T+, T) and -1 at (T-, T)."""
    matrix = torch.zeros(len(POLES), len(TRAITS))
    for index, pole in enumerate(POLES):
        matrix[index, TRAITS.index(pole[0])] = 1.0 if pole[1] == "+" else -1.0
    return matrix


def gates_from_logits(logits: torch.Tensor, top_k: int | None = None, intensity: float = 1.0) -> torch.Tensor:
    """Softmax over experts, optional top-k (renormalised over the kept ones), scaled to ``intensity``.

    Args:
        logits: [batch, 10], already divided by the temperature.
        top_k: keep the k largest per row; ties are broken by expert order.
        intensity: the sum of each row's gates.

    Returns:
        [batch, 10] non-negative gates; each row sums to ``intensity``.
    """
    if top_k is not None and top_k < logits.shape[-1]:
        kept = logits.topk(top_k, dim=-1).indices
        mask = torch.full_like(logits, float("-inf")).scatter(-1, kept, 0.0)
        logits = logits + mask
    return torch.softmax(logits, dim=-1) * intensity


class Router(nn.Module):
    """Learned linear map from activations to expert logits, initialised to the sign matrix."""

    def __init__(self, config: RouterConfig | None = None) -> None:
        super().__init__()
        self.config = config or RouterConfig()
        self.weight = nn.Parameter(sign_matrix())  # [10, 5]
        self.bias = nn.Parameter(torch.zeros(len(POLES)))  # [10]

    def logits(self, activation: torch.Tensor) -> torch.Tensor:
        """[batch, 5] -> [batch, 10] logits, divided by the temperature."""
        return (activation @ self.weight.T + self.bias) / self.config.temperature

    def forward(self, activation: torch.Tensor) -> torch.Tensor:
        """[batch, 5] activations -> [batch, 10] gates."""
        return gates_from_logits(self.logits(activation), self.config.top_k, self.config.intensity)
