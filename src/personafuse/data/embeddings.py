"""Sentence embeddings of many texts: length-sorted batches, progress callbacks, and an on-disk cache.

Why a cache: the evaluation sets hold ~45k texts, which take minutes to embed on a laptop CPU, while they never
change between contamination checks of a corpus that is being written. The cache key is the hash of the
encoder's identity and of the exact texts, so any change of either is a miss, never a stale hit.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = ["ProgressFn", "TextEmbedder"]

ProgressFn = Callable[[str, int, int], None]
"""Called as ``(label, texts_done, texts_total)`` after each block of texts."""


class TextEmbedder:
    """Embeds lists of texts with a sentence-transformers model into L2-normalised float32 CPU tensors.

    Args:
        model: the encoder.
        identity: what names the encoder in the cache key (alias or path, plus anything that changes outputs).
        batch_size: texts per forward pass.
        cache_dir: folder of cached ``.pt`` files; None disables the cache.
        on_progress: progress callback, see :data:`ProgressFn`.
    """

    def __init__(
        self,
        model: SentenceTransformer,
        identity: str,
        *,
        batch_size: int = 128,
        cache_dir: str | Path | None = None,
        on_progress: ProgressFn | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.identity = f"{identity}|max_seq_length={model.max_seq_length}"
        self.batch_size = batch_size
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.on_progress = on_progress
        self.cache_hits = 0

    def cache_path(self, texts: list[str]) -> Path | None:
        """Where the embeddings of ``texts`` are cached (None without a cache)."""
        if self.cache_dir is None:
            return None
        digest = hashlib.sha256(self.identity.encode("utf-8"))
        for text in texts:
            digest.update(b"\0" + text.encode("utf-8"))
        return self.cache_dir / f"{digest.hexdigest()[:32]}.pt"

    def __call__(self, label: str, texts: list[str]) -> torch.Tensor:
        """Embeddings of ``texts``, shape ``[len(texts), dim]``, unit length; read from the cache when present."""
        cached = self.cache_path(texts)
        if cached is not None and cached.is_file():
            try:
                embeddings = torch.load(cached, map_location="cpu", weights_only=True)
            except (OSError, RuntimeError, EOFError):  # a corrupt cache file is just a miss
                embeddings = None
            if isinstance(embeddings, torch.Tensor) and embeddings.shape[0] == len(texts):
                self.cache_hits += 1
                if self.on_progress is not None:
                    self.on_progress(label, len(texts), len(texts))
                return embeddings
        embeddings = self._encode(label, texts)
        if cached is not None:
            _save_atomic(embeddings, cached)
        return embeddings

    def _encode(self, label: str, texts: list[str]) -> torch.Tensor:
        dim = self.model.get_sentence_embedding_dimension() or 0
        out = torch.empty(len(texts), dim, dtype=torch.float32)  # [n, dim]
        # Longest first over the whole list (encode() only sorts within one call), so batches pad little and a
        # too-long batch fails at once rather than at the end.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        block = self.batch_size * 8  # texts per encode() call: enough to keep batches full, small for progress
        if self.on_progress is not None:
            self.on_progress(label, 0, len(texts))
        for start in range(0, len(order), block):
            index = order[start : start + block]
            vectors = self.model.encode(
                [texts[i] for i in index],
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_tensor=True,
                show_progress_bar=False,
            )  # [len(index), dim]
            out[torch.tensor(index)] = vectors.float().cpu()
            if self.on_progress is not None:
                self.on_progress(label, min(start + block, len(texts)), len(texts))
        return out


def _save_atomic(tensor: torch.Tensor, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(tensor, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
