"""Shared fixtures: offline, seeded, tiny random base model, the real MiniLM encoder (a local wheel)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed():
    import random

    import torch

    random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> str:
    """Folder of a random 2-layer Llama with hidden size 32 and a tiny ChatML tokenizer."""
    from tiny_models import build_tiny_llama

    return str(build_tiny_llama(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture(scope="session")
def tiny_pf_factory(tiny_base):
    """Build a PersonaFuse on the tiny base with random (non-zero) experts."""
    from personafuse import PersonaFuse

    def make(**kwargs):
        kwargs.setdefault("rank", 4)
        kwargs.setdefault("init_b", "random")
        return PersonaFuse.create(base=tiny_base, encoder="minilm-l6", device="cpu", **kwargs)

    return make


@pytest.fixture()
def tiny_pf(tiny_pf_factory):
    return tiny_pf_factory()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared datasets not found at {SHARED_DATA}")
    return SHARED_DATA
