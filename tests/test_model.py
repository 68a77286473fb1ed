"""PersonaFuse on a tiny random Llama: base exactness, save/load, PEFT interop, KV cache, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from personafuse import PersonaFuse
from personafuse.errors import ConfigError, ModelLoadError
from personafuse.moe import persona_layers
from personafuse.traits import POLES, PersonaError

CONV = [{"role": "user", "content": "my cat died and I am sad"}]
CONV2 = [{"role": "user", "content": "the server is down please help"}]


def logits(pf: PersonaFuse, gates: torch.Tensor | None, convs=(CONV, CONV2)) -> torch.Tensor:
    inputs = pf.chat_inputs(list(convs))
    with pf.using_gates(gates), torch.no_grad():
        return pf.model(**inputs).logits


def test_experts_disabled_and_zero_gates_give_the_base_models_exact_logits(tiny_pf, tiny_base):
    base = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    inputs = tiny_pf.chat_inputs([CONV, CONV2])
    with torch.no_grad():
        expected = base(**inputs).logits
    routed = logits(tiny_pf, tiny_pf.gates_for([CONV, CONV2]))
    assert not torch.allclose(routed, expected, atol=1e-4), "random experts must change the output"
    with tiny_pf.experts_disabled():
        assert torch.equal(logits(tiny_pf, tiny_pf.gates_for([CONV, CONV2])), expected)
    assert torch.equal(logits(tiny_pf, torch.zeros(2, 10)), expected)


def test_route_returns_valid_gates_and_rejects_empty_text(tiny_pf):
    routings = tiny_pf.route(["my grandmother died yesterday", "tear my business plan apart"])
    for routing in routings:
        assert abs(routing.gates.intensity - 1.0) < 1e-5
        assert all(-1 <= v <= 1 for v in routing.activation.values)
    with pytest.raises(PersonaError, match="text 1 is empty"):
        tiny_pf.route(["fine", "  "])


def test_gates_for_accepts_every_persona_form(tiny_pf):
    gates = tiny_pf.gates_for([CONV] * 5, ["off", {"A+": 0.7, "N-": 0.3}, "E+=1", {"activation": {"A": 0.9}}, None])
    assert gates.shape == (5, 10)
    assert gates[0].sum() == 0
    assert gates[1, POLES.index("A+")].item() == pytest.approx(0.7)
    assert gates[2, POLES.index("E+")].item() == 1.0
    assert gates[3].argmax().item() == POLES.index("A+")
    routed = torch.tensor(tiny_pf.route(CONV[0]["content"])[0].gates.values)
    torch.testing.assert_close(gates[4], routed)
    with pytest.raises(PersonaError, match="2 personas for 1 conversations"):
        tiny_pf.gates_for([CONV], ["off", "off"])
    with pytest.raises(PersonaError, match="negative"):
        tiny_pf.gates_for([CONV], {"A+": -1.0})
    with pytest.raises(PersonaError, match=r"unknown pole\(s\) \['Q\+'\]"):
        tiny_pf.gates_for([CONV], {"Q+": 1.0})


def test_generate_with_kv_cache_equals_generate_without(tiny_pf):
    kwargs = {"max_new_tokens": 8, "do_sample": False, "min_new_tokens": 8}
    persona = [{"A+": 1.0}, {"C+": 0.5, "O-": 0.5}]
    cached = tiny_pf.generate([CONV, CONV2], persona=persona, use_cache=True, **kwargs)
    uncached = tiny_pf.generate([CONV, CONV2], persona=persona, use_cache=False, **kwargs)
    assert cached == uncached
    assert all(isinstance(r, str) for r in cached)


def test_batched_generation_equals_one_by_one(tiny_pf):
    kwargs = {"max_new_tokens": 6, "do_sample": False, "min_new_tokens": 6}
    persona = [{"A+": 1.0}, {"E+": 1.0}]
    batched = tiny_pf.generate([CONV, CONV], persona=persona, **kwargs)
    single = [tiny_pf.generate([CONV], persona=p, **kwargs)[0] for p in persona]
    assert batched == single


def test_merge_gives_the_routed_logits_and_unmerge_restores(tiny_pf):
    gates = torch.tensor([[0.5, 0, 0.2, 0, 0, 0, 0.3, 0, 0, 0]])
    routed = logits(tiny_pf, gates.expand(2, 10))
    with tiny_pf.experts_disabled():
        base = logits(tiny_pf, None)
    tiny_pf.merge({p: float(g) for p, g in zip(POLES, gates[0]) if g > 0})
    torch.testing.assert_close(logits(tiny_pf, None), routed, atol=1e-4, rtol=0)
    tiny_pf.unmerge()
    torch.testing.assert_close(logits(tiny_pf, None), base, atol=1e-5, rtol=0)


def test_save_load_roundtrip_gives_identical_outputs(tiny_pf, tmp_path):
    gates = tiny_pf.gates_for([CONV, CONV2])
    before = logits(tiny_pf, gates)
    tiny_pf.save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["personafuse_version"] and config["experts"]["rank"] == 4
    assert sorted(p.name for p in (tmp_path / "ckpt" / "experts").iterdir()) == sorted(POLES)
    loaded = PersonaFuse.from_pretrained(tmp_path / "ckpt", device="cpu")
    torch.testing.assert_close(loaded.gates_for([CONV, CONV2]), gates)
    assert torch.equal(logits(loaded, gates), before)
    assert not list(tmp_path.glob(".ckpt*")), "no temp folder left behind"


def test_each_expert_loads_in_plain_peft_and_equals_the_one_hot_mix(tiny_pf, tiny_base, tmp_path):
    from peft import PeftModel

    tiny_pf.save_pretrained(tmp_path / "ckpt")
    for pole in ("A+", "N-"):
        base = AutoModelForCausalLM.from_pretrained(tiny_base)
        peft_model = PeftModel.from_pretrained(base, str(tmp_path / "ckpt" / "experts" / pole)).eval()
        inputs = tiny_pf.chat_inputs([CONV, CONV2])
        with torch.no_grad():
            expected = peft_model(**inputs).logits
        torch.testing.assert_close(logits(tiny_pf, tiny_pf.gates_for([CONV, CONV2], {pole: 1.0})), expected,
                                   atol=1e-5, rtol=0)  # fmt: skip


def test_checkpoint_for_another_shape_is_refused(tiny_pf_factory, tmp_path):
    tiny_pf_factory(rank=4).save_pretrained(tmp_path / "r4")
    config = json.loads((tmp_path / "r4" / "config.json").read_text())
    config["experts"]["rank"] = 2
    (tmp_path / "r4" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"A\(4, 32\).*needs A\(2, 32\)"):
        PersonaFuse.from_pretrained(tmp_path / "r4", device="cpu")


def test_bad_models_and_targets_get_one_clear_error(tiny_base, tmp_path):
    with pytest.raises(ModelLoadError, match="base model path './nope' does not exist"):
        PersonaFuse.create(base="./nope", encoder="minilm-l6")
    with pytest.raises(ConfigError, match=r"target_modules \['qkv'\] match no linear layer.*q_proj"):
        PersonaFuse.create(base=tiny_base, encoder="minilm-l6", target_modules=["qkv"])
    with pytest.raises(ConfigError, match="rank must be a positive integer, got 0"):
        PersonaFuse.create(base=tiny_base, encoder="minilm-l6", rank=0)
    with pytest.raises(ModelLoadError, match="not a personafuse checkpoint"):
        PersonaFuse.from_pretrained(tmp_path)


def test_default_targets_are_every_attention_and_mlp_projection(tiny_pf):
    names = {name.split(".")[-1] for name, _ in persona_layers(tiny_pf.model)}
    assert names == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
