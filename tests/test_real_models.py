"""The real embedded models: SmolLM2-135M-Instruct (GGUF wheel, converted once) and all-MiniLM-L6-v2."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_pf():
    from personafuse import PersonaFuse

    return PersonaFuse.create(device="cpu", init_b="random", seed=0)


def test_real_router_separates_grief_from_a_pitch_review(real_pf):
    grief, pitch = real_pf.route(
        ["My father died this morning and I don't know what to do.", "Tear my pitch deck apart, be brutal."]
    )
    assert grief.activation.as_dict()["A"] > pitch.activation.as_dict()["A"]
    assert grief.gates.as_dict()["A+"] > pitch.gates.as_dict()["A+"]


def test_real_smollm2_generates_routed_and_base_with_kv_cache(real_pf):
    conversation = [{"role": "user", "content": "What is the capital of France?"}]
    with real_pf.experts_disabled():
        base = real_pf.generate([conversation], persona="off", max_new_tokens=8, do_sample=False)[0]
    assert "Paris" in base
    routed = real_pf.generate([conversation, conversation], persona=[{"A+": 1.0}, "C+=0.5,O-=0.5"],
                              max_new_tokens=8, min_new_tokens=8, do_sample=False)  # fmt: skip
    assert len(routed) == 2 and all(routed)
    inputs = real_pf.chat_inputs([conversation])
    with real_pf.using_gates(torch.tensor([[0.0] * 6 + [1.0] + [0.0] * 3])), torch.no_grad():
        routed_logits = real_pf.model(**inputs).logits
    with real_pf.experts_disabled(), torch.no_grad():
        base_logits = real_pf.model(**inputs).logits
    assert not torch.allclose(routed_logits, base_logits), "random experts must move the logits"
