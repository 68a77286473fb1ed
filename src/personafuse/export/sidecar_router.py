"""Sidecar router for PersonaFuse prototype adapters: a conversation -> the name of the adapter to serve it.

Standalone (needs torch, safetensors and sentence-transformers, not personafuse): copy this file next to the
``router.json`` that ``personafuse export --prototypes K`` wrote, and put it in front of a multi-LoRA engine::

    router = SidecarRouter("export-dir")
    body = router.rewrite({"model": "auto", "messages": [{"role": "user", "content": "my cat died"}]})
    # body["model"] == "persona-03": send it to `vllm serve ... --lora-modules persona-03=...`

or from a shell: ``python sidecar_router.py export-dir "my cat died"`` prints the adapter name.

It computes PersonaFuse's routing exactly as the full model does (sentence encoder -> persona head -> router ->
gates [10]) and picks the prototype whose gates are nearest (Euclidean), the same rule that built the
prototypes (k-means over the corpus's gates).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

ROUTER_JSON = "router.json"
FORMAT = "personafuse-prototypes"


def conversation_text(messages: Sequence[Mapping[str, str]]) -> str:
    """What the persona encoder reads: the non-system turns' contents joined by newlines."""
    return "\n".join(str(m.get("content", "")) for m in messages if m.get("role") != "system")


class SidecarRouter:
    """Loads ``router.json``, the head + router weights and the sentence encoder of one prototype export."""

    def __init__(self, folder: str | Path, encoder: object | None = None, device: str = "cpu") -> None:
        """Load the export in ``folder``.

        ``encoder`` overrides the sentence encoder: a path or hub id, or an already loaded ``SentenceTransformer``
        (an application that embeds texts anyway can share it). By default ``router.json``'s ``encoder_path`` is
        used when it exists on this machine, else its ``encoder_hub_id``.

        Raises:
            FileNotFoundError: no ``router.json`` in ``folder``.
            ValueError: a ``router.json`` of another format.
        """
        from safetensors.torch import load_file

        self.folder = Path(folder)
        path = self.folder / ROUTER_JSON
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found; point the sidecar at a `personafuse export --prototypes` folder"
            )
        self.spec = json.loads(path.read_text())
        if self.spec.get("format") != FORMAT:
            raise ValueError(f"{path} is not a {FORMAT} description (format={self.spec.get('format')!r})")
        self.names = [p["name"] for p in self.spec["prototypes"]]
        poles = self.spec["poles"]
        self.prototype_gates = torch.tensor([[p["gates"][pole] for pole in poles] for p in self.spec["prototypes"]])
        self.weights = {
            k: v.to(device, torch.float32) for k, v in load_file(str(self.folder / self.spec["head_weights"])).items()
        }
        self.device = device
        self.encoder = self._load_encoder(encoder, device)

    def _load_encoder(self, override: object | None, device: str):
        from sentence_transformers import SentenceTransformer

        if override is not None and not isinstance(override, (str, Path)):
            return override
        if override:
            return SentenceTransformer(str(override), device=device)
        local = self.spec.get("encoder_path")
        if local and Path(local).exists():
            return SentenceTransformer(local, device=device)
        return SentenceTransformer(self.spec["encoder_hub_id"], device=device)

    def gates(self, texts: Sequence[str]) -> torch.Tensor:
        """PersonaFuse's gates [n, 10] for context texts (encoder -> head -> router, as ``personafuse.routing``)."""
        w = self.weights
        with torch.no_grad():
            e = self.encoder.encode(list(texts), convert_to_tensor=True, show_progress_bar=False)
            e = e.to(self.device, torch.float32)  # [n, d]
            hidden = F.gelu(F.linear(e, w["head.mlp.0.weight"], w["head.mlp.0.bias"]))
            z = F.normalize(e + F.linear(hidden, w["head.mlp.2.weight"], w["head.mlp.2.bias"]), dim=-1)
            activation = torch.tanh(F.linear(z, w["head.activation.weight"], w["head.activation.bias"]))  # [n, 5]
            settings = self.spec["router"]
            logits = (activation @ w["router.weight"].T + w["router.bias"]) / settings["temperature"]  # [n, 10]
            top_k = settings.get("top_k")
            if top_k is not None and top_k < logits.shape[-1]:
                kept = logits.topk(top_k, dim=-1).indices
                logits = logits + torch.full_like(logits, float("-inf")).scatter(-1, kept, 0.0)
            return torch.softmax(logits, dim=-1) * settings["intensity"]

    def choose_texts(self, texts: Sequence[str]) -> list[str]:
        """The nearest prototype's adapter name for each context text."""
        distance = torch.cdist(self.gates(texts).double().cpu(), self.prototype_gates.double())  # [n, K]
        return [self.names[i] for i in distance.argmin(dim=1).tolist()]

    def choose(self, conversations: Sequence[Sequence[Mapping[str, str]]]) -> list[str]:
        """The adapter name for each conversation (a list of ``{role, content}`` messages)."""
        texts = [conversation_text(c) for c in conversations]
        for index, text in enumerate(texts):
            if not text.strip():
                raise ValueError(f"conversation {index} has no text to route")
        return self.choose_texts(texts)

    def rewrite(self, body: dict) -> dict:
        """An OpenAI chat request with ``model`` set to the adapter chosen for its ``messages`` (a new dict)."""
        return {**body, "model": self.choose([body["messages"]])[0]}


def main(argv: Sequence[str] | None = None) -> int:
    """``python sidecar_router.py FOLDER TEXT...``: print one adapter name per text (``-`` reads JSON from stdin)."""
    parser = argparse.ArgumentParser(description="Map conversations to PersonaFuse prototype adapter names.")
    parser.add_argument("folder", help="the `personafuse export --prototypes` output folder")
    parser.add_argument("texts", nargs="+", help="user messages; '-' reads a JSON list of messages from stdin")
    parser.add_argument("--encoder", default=None, help="sentence-encoder path or hub id (default: router.json's)")
    args = parser.parse_args(argv)
    router = SidecarRouter(args.folder, encoder=args.encoder)
    conversations = [json.load(sys.stdin) if t == "-" else [{"role": "user", "content": t}] for t in args.texts]
    for name in router.choose(conversations):
        sys.stdout.write(name + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
