"""Persona encoder head: sentence embedding -> persona embedding z -> signed trait activations.

    z = normalize(e + MLP(e))            # residual, last layer zero-initialised: z = e at init
    s = z @ normalize(P).T               # cosine similarity to 10 learned pole prototypes P
    a = tanh(W z + b)                    # signed activation per trait in [-1, 1]

At initialisation P holds the embeddings of :data:`POLE_DESCRIPTIONS` and W[t] = k * (P[t+] - P[t-]), so the
untrained head is the zero-shot "similarity to trait descriptions" router. Stage 2 trains z with InfoNCE
against P and a trait-consistency loss, and a with a regression loss (see ``personafuse.train.router_stage``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from personafuse.traits import POLES, TRAITS


class PersonaHead(nn.Module):
    """Trainable head on top of a frozen sentence encoder."""

    def __init__(self, embed_dim: int, hidden_dim: int = 256, zero_shot_scale: float = 8.0) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.mlp = nn.Sequential(nn.Linear(embed_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, embed_dim))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)
        self.prototypes = nn.Parameter(torch.randn(len(POLES), embed_dim) / embed_dim**0.5)  # [10, d]
        self.activation = nn.Linear(embed_dim, len(TRAITS))  # [5, d]
        self.zero_shot_scale = zero_shot_scale
        self.init_from_prototypes()

    @torch.no_grad()
    def set_prototypes(self, prototypes: torch.Tensor) -> None:
        """Set the pole prototypes ([10, d], e.g. embedded pole descriptions) and re-derive the zero-shot W."""
        if prototypes.shape != self.prototypes.shape:
            raise ValueError(
                f"prototypes must have shape {tuple(self.prototypes.shape)}, got {tuple(prototypes.shape)}"
            )
        self.prototypes.copy_(prototypes)
        self.init_from_prototypes()

    @torch.no_grad()
    def init_from_prototypes(self) -> None:
        """W[t] = k * (P[t+] - P[t-]) on normalised prototypes, b = 0."""
        protos = F.normalize(self.prototypes, dim=-1)
        plus, minus = protos[0::2], protos[1::2]  # POLES alternate + / - per trait: [5, d] each
        self.activation.weight.copy_(self.zero_shot_scale * (plus - minus))
        self.activation.bias.zero_()

    def embed(self, sentence_embeddings: torch.Tensor) -> torch.Tensor:
        """Persona embedding z [batch, d], unit norm."""
        return F.normalize(sentence_embeddings + self.mlp(sentence_embeddings), dim=-1)

    def pole_similarity(self, z: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of z to each pole prototype: [batch, 10]."""
        return z @ F.normalize(self.prototypes, dim=-1).T

    def forward(self, sentence_embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (z [batch, d], activation [batch, 5] in [-1, 1])."""
        z = self.embed(sentence_embeddings)
        return z, torch.tanh(self.activation(z))
