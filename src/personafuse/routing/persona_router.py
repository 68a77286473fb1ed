"""`PersonaRouter`: sentence encoder + persona head + router, usable without loading the LLM.

`personafuse route` and the server's `/v1/route` need only this part, which loads in about a second.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from personafuse.routing.descriptions import POLE_DESCRIPTIONS
from personafuse.routing.head import PersonaHead
from personafuse.routing.router import Router, RouterConfig
from personafuse.traits import Activation, Gates, PersonaError, Routing

ROUTER_NAME = "router.safetensors"


class PersonaRouter:
    """Maps context texts to signed trait activations and expert gates."""

    def __init__(self, encoder, head: PersonaHead, router: Router, encoder_name: str = "") -> None:
        self.encoder = encoder
        self.head = head
        self.router = router
        self.encoder_name = encoder_name

    @classmethod
    def create(cls, encoder: str, config: RouterConfig | None = None, head_hidden: int = 256,
               device: str | None = None) -> PersonaRouter:  # fmt: skip
        """Load ``encoder`` and build a zero-shot head (prototypes = embedded pole descriptions)."""
        from personafuse.models import load_encoder

        model = load_encoder(encoder, device=device)
        dim = model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension") else (
            model.get_sentence_embedding_dimension())  # fmt: skip
        head = PersonaHead(int(dim), head_hidden)
        router = Router(config)
        pr = cls(model, head, router, encoder)
        head.set_prototypes(pr.embed_texts(list(POLE_DESCRIPTIONS.values())))
        target = device or "cpu"
        head.to(target)
        router.to(target)
        return pr

    @property
    def embed_dim(self) -> int:
        """Sentence-embedding size the head expects."""
        return self.head.embed_dim

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Sentence embeddings [batch, d] from the frozen encoder."""
        with torch.no_grad():
            emb = self.encoder.encode(list(texts), convert_to_tensor=True, show_progress_bar=False)
        return emb.to(self.head.prototypes.device, torch.float32)

    def activations_and_gates(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(activation [batch, 5], gates [batch, 10]) for each context text.

        Raises:
            PersonaError: an empty text.
        """
        for index, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise PersonaError(f"text {index} is empty; routing needs the conversation's text")
        with torch.no_grad():
            _, activation = self.head(self.embed_texts(texts))
            gates = self.router(activation)
        return activation, gates

    def route(self, texts: Sequence[str] | str) -> list[Routing]:
        """Predict the activation and gates of each context."""
        if isinstance(texts, str):
            texts = [texts]
        activation, gates = self.activations_and_gates(list(texts))
        return [
            Routing(Activation(tuple(a.clamp(-1, 1).tolist())), Gates(tuple(g.clamp_min(0).tolist())), text)
            for a, g, text in zip(activation.cpu(), gates.cpu(), texts)
        ]

    def gates_from_activation(self, activation: Activation) -> torch.Tensor:
        """Gates [10] that the router gives for a fixed activation."""
        with torch.no_grad():
            row = torch.tensor([activation.values], device=self.router.weight.device)
            return self.router(row)[0].cpu()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Head and router weights under ``head.`` / ``router.`` prefixes."""
        out = {f"head.{k}": v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}
        out.update({f"router.{k}": v.detach().cpu().contiguous() for k, v in self.router.state_dict().items()})
        return out

    def save(self, path: str | os.PathLike) -> None:
        """Write head + router weights to one safetensors file (atomically)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(self.state_dict(), str(tmp), metadata={"format": "pt", "encoder": self.encoder_name})
        os.replace(tmp, path)

    def load(self, path: str | os.PathLike) -> None:
        """Load head + router weights saved by :meth:`save`.

        Raises:
            ModelLoadError: missing file, or shapes that do not fit (another encoder).
        """
        from personafuse.errors import ModelLoadError

        if not Path(path).is_file():
            raise ModelLoadError(f"no router weights at {path}")
        tensors = load_file(str(path))
        for prefix, module in (("head.", self.head), ("router.", self.router)):
            own = module.state_dict()
            part = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            if set(part) != set(own):
                raise ModelLoadError(f"{path}: expected {prefix}* weights {sorted(own)}, found {sorted(part)}")
            for key, value in part.items():
                if value.shape != own[key].shape:
                    raise ModelLoadError(
                        f"{path}: {prefix}{key} has shape {tuple(value.shape)}, this encoder needs "
                        f"{tuple(own[key].shape)}; the router was trained with another encoder"
                    )
            module.load_state_dict({k: v.to(own[k]) for k, v in part.items()})
