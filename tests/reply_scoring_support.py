"""Helpers of the counseling / customer_service tests: a fast deterministic stand-in for the sentence encoder, the
real shipped persona router (loaded once per test process: loading and running MiniLM is most of these tests'
cost), a small seeded reward model saved as a real folder, and scorers built from them."""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DIM = 384


class HashEncoder:
    """Bag-of-words embeddings: each lower-cased word adds 1 to dimension md5(word) mod 384. Deterministic, instant,
    and identical texts embed identically (cosine 1), which is all the known-answer tests need."""

    def encode(self, texts, convert_to_tensor=True, normalize_embeddings=False, show_progress_bar=False,
               batch_size=32):  # fmt: skip
        import torch

        out = torch.zeros(len(texts), DIM)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                out[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % DIM] += 1.0
        return torch.nn.functional.normalize(out, dim=-1) if normalize_embeddings else out

    def get_embedding_dimension(self) -> int:
        return DIM


@functools.lru_cache(maxsize=1)
def shared_router():
    """The shipped minilm-l6 persona router (what a run uses without --persona-router)."""
    from personafuse.loading import load_router

    return load_router(None, device="cpu")


@functools.lru_cache(maxsize=1)
def hash_router():
    """A PersonaRouter over :class:`HashEncoder` with a zero-shot head from the hashed pole descriptions."""
    import torch

    from personafuse.routing import PersonaRouter
    from personafuse.routing.descriptions import POLE_DESCRIPTIONS
    from personafuse.routing.head import PersonaHead
    from personafuse.routing.router import Router

    torch.manual_seed(0)
    encoder = HashEncoder()
    head = PersonaHead(DIM, 16)
    router = PersonaRouter(encoder, head, Router(), "hash")
    with torch.no_grad():
        head.set_prototypes(router.embed_texts(list(POLE_DESCRIPTIONS.values())))
    return router


def save_reward_model(folder: Path, metrics: dict | None = None) -> Path:
    """A linear reward head with seeded random weights, saved as a reward-model folder (config + safetensors)."""
    import torch

    from personafuse.train.reward_model import RewardHead, RewardModel, RewardModelConfig

    torch.manual_seed(0)
    head = RewardHead(DIM + 1, 0)
    with torch.no_grad():
        head.net[0].weight.normal_(0.0, 0.5)
        head.net[0].bias.zero_()
    # encoder "hash": ReplyScorer.build then shares the (patched-in) hash router's encoder instead of loading MiniLM
    RewardModel(None, head, RewardModelConfig(encoder="hash", cv_folds=0), metrics or {}).save(folder)
    return folder


def make_scorer(folder: Path, rubric=None, judge=None, real: bool = False):
    """A :class:`ReplyScorer` with the reward model in ``folder``: on the real MiniLM router, or the hash one."""
    from personafuse.evaluate.reply_scoring import COUNSELING_RUBRIC, ReplyScorer
    from personafuse.train.reward_model import RewardModel

    router = shared_router() if real else hash_router()
    model = RewardModel.load(folder, encoder=router.encoder)
    return ReplyScorer(model, router, judge, rubric or COUNSELING_RUBRIC)
