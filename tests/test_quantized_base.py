"""A bitsandbytes-quantised base (``load_in="4bit"`` / ``"8bit"``) under the persona experts, on the tiny Llama.

The tests that run a real quantised base are skipped, with the reason, when bitsandbytes is missing or its CPU
4-bit kernel cannot run a forward and backward here. Config parsing, the error lines and the dtype plumbing are
checked without it (a fake quantised linear stands in).
"""

from __future__ import annotations

import json
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from personafuse import PersonaFuse
from personafuse.config import PersonaFuseConfig
from personafuse.errors import ConfigError, ModelLoadError, UserError
from personafuse.moe import ExpertConfig, GateState, PersonaLoRALinear, inject_persona_layers, persona_layers
from personafuse.moe.layer import NUM_EXPERTS
from personafuse.traits import POLES

CONV = [{"role": "user", "content": "my cat died and I am sad"}]
CONV2 = [{"role": "user", "content": "the server is down please help"}]
MERGE_REFUSED = r"^merging a persona needs an unquantised base, but .* stores its weight as torch\.u?int8"


def _cpu_4bit_problem() -> str | None:
    """Why a real 4-bit base cannot run here (None when it can): a tiny nf4 forward + backward on the CPU."""
    try:
        import bitsandbytes as bnb
    except ImportError as exc:
        return f"bitsandbytes is not installed ({exc}); pip install 'personafuse[quant]'"
    try:
        layer = bnb.nn.Linear4bit(64, 8, compute_dtype=torch.float32, quant_type="nf4").to("cpu")
        layer.support_avx512bf16_for_cpu = False
        x = torch.randn(2, 64, requires_grad=True)
        layer(x).sum().backward()
        if x.grad is None:
            return "bitsandbytes' CPU 4-bit kernel gives no input gradient"
    except Exception as exc:  # any failure of the backend is a reason to skip, reported verbatim
        return f"bitsandbytes' CPU 4-bit backend does not work here: {type(exc).__name__}: {exc}"
    return None


CPU_4BIT_PROBLEM = _cpu_4bit_problem()
needs_bnb = pytest.mark.skipif(CPU_4BIT_PROBLEM is not None, reason=str(CPU_4BIT_PROBLEM))


def logits(pf: PersonaFuse, gates: torch.Tensor | None, convs=(CONV, CONV2)) -> torch.Tensor:
    inputs = pf.chat_inputs(list(convs))
    with pf.using_gates(gates), torch.no_grad():
        return pf.model(**inputs).logits


def naive_mix(layer: PersonaLoRALinear, x: torch.Tensor, base_out: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """base_out + (alpha/r) * sum_e g[row, e] * B_e A_e x, one expert at a time (x: [batch, seq, in])."""
    out = base_out.clone()
    for e in range(NUM_EXPERTS):
        a, b = layer.expert_weights(e)  # [r, in], [out, r]
        delta = F.linear(F.linear(x, a), b) * layer.scaling  # [batch, seq, out]
        out = out + gates[:, e].view(-1, 1, 1).to(delta.dtype) * delta
    return out


# ---------------------------------------------------------------------------------------------------- no bnb needed
def test_load_in_is_validated_in_both_configs():
    assert PersonaFuseConfig(load_in="4bit").load_in == "4bit" and PersonaFuseConfig().load_in is None
    with pytest.raises(
        ConfigError, match=r"load_in must be one of \['4bit', '8bit'\] or null \(unquantised\), got '3bit'"
    ):
        PersonaFuseConfig(load_in="3bit")
    from personafuse.train.config import load_train_config

    assert load_train_config(None, ["model.load_in=4bit"]).model.load_in == "4bit"
    assert load_train_config(None, ["model.load_in=null"]).model.load_in is None
    with pytest.raises(ConfigError, match=r"model\.load_in='4-bit': expected one of \['4bit', '8bit'\] or null"):
        load_train_config(None, ["model.load_in=4-bit"])


def test_shipped_gpu_configs_carry_a_commented_4bit_switch(tmp_path):
    from pathlib import Path

    from personafuse.train.config import load_train_config

    for name in ("llama3.1-8b.yaml", "qwen2.5-7b.yaml"):
        path = Path(__file__).resolve().parents[1] / "configs" / name
        assert load_train_config(path).model.load_in is None  # off unless uncommented
        text = path.read_text()
        assert text.count("  # load_in: 4bit ") == 1, name
        switched = tmp_path / name
        switched.write_text(text.replace("  # load_in: 4bit ", "  load_in: 4bit #"))
        assert load_train_config(switched).model.load_in == "4bit"  # the commented line, uncommented, works


def test_missing_bitsandbytes_is_one_line_naming_the_extra(monkeypatch, tiny_base):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` now raises ImportError
    hint = r"needs bitsandbytes, which is not installed; install it with pip install 'personafuse\[quant\]'"
    with pytest.raises(ModelLoadError, match=r"^load_in='4bit' " + hint) as caught:
        PersonaFuse.create(base=tiny_base, encoder="minilm-l6", device="cpu", load_in="4bit")
    assert "\n" not in str(caught.value)
    from personafuse.models import load_base_model

    with pytest.raises(ModelLoadError, match=r"^load_in='8bit' " + hint):
        load_base_model(tiny_base, load_in="8bit")
    from personafuse.train.config import load_train_config
    from personafuse.train.pipeline import validate_run

    config = load_train_config(None, [f"model.base={tiny_base}", "model.load_in=4bit"])
    with pytest.raises(ConfigError, match=r"model\.load_in='4bit' " + hint + r", or set model\.load_in to null"):
        validate_run(config, ["experts"])


class FakeQuantLinear(nn.Linear):
    """A linear whose weight is stored as int8 codes with one scale, as a quantised layer stores it."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__(linear.in_features, linear.out_features, bias=False)
        self.scale = float(linear.weight.detach().abs().max()) / 127
        self.weight = nn.Parameter((linear.weight.detach() / self.scale).round().to(torch.int8), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype) * self.scale)


def test_experts_of_a_quantised_base_take_the_given_dtype_and_refuse_merge():
    base = FakeQuantLinear(nn.Linear(16, 12))
    state = GateState()
    with pytest.raises(TypeError, match=r"FakeQuantLinear stores its weight as torch\.int8 .* pass dtype="):
        PersonaLoRALinear(base, 2, 4.0, 0.0, state)
    layer = PersonaLoRALinear(base, 2, 4.0, 0.0, state, dtype=torch.float32)
    assert layer.lora_A.dtype == layer.lora_B.dtype == torch.float32 and layer.quantized
    layer.reset_experts(init_b="random", generator=torch.Generator().manual_seed(0))
    x = torch.randn(2, 3, 16)
    gates = torch.tensor([[0.6, 0, 0, 0.4, 0, 0, 0, 0, 0, 0], [0, 0, 1.0, 0, 0, 0, 0, 0, 0, 0]])
    state.set(gates)
    torch.testing.assert_close(layer(x), naive_mix(layer, x, base(x), gates), atol=1e-6, rtol=0)
    codes = base.weight.clone()
    with pytest.raises(UserError, match=MERGE_REFUSED):
        layer.merge(gates[0])
    assert torch.equal(base.weight, codes) and layer.merged_gates is None
    # a float base keeps the old default: the experts take its weight's dtype
    assert PersonaLoRALinear(nn.Linear(4, 4).to(torch.bfloat16), 2, 4.0, 0.0, state).lora_A.dtype == torch.bfloat16


# ---------------------------------------------------------------------------------------------------- a real 4-bit base
@pytest.fixture(scope="module")
def pf4(tiny_base):
    """The tiny Llama with its linears in nf4 (float32 compute) and random experts."""
    return PersonaFuse.create(base=tiny_base, encoder="minilm-l6", device="cpu", rank=4, init_b="random",
                              load_in="4bit")  # fmt: skip


@needs_bnb
def test_4bit_layers_and_float32_experts(pf4):
    import bitsandbytes as bnb

    layers = list(persona_layers(pf4.model))
    assert len(layers) == 14  # 7 projections x 2 blocks: every target is wrapped, the head is not
    for _, layer in layers:
        assert isinstance(layer.base, bnb.nn.Linear4bit) and layer.base.weight.dtype == torch.uint8
        assert layer.lora_A.dtype == layer.lora_B.dtype == torch.float32 and layer.quantized
    assert pf4.config.load_in == "4bit" and not any(
        p.requires_grad for n, p in pf4.model.named_parameters() if ".lora_" not in n
    )


@needs_bnb
def test_zero_gates_equal_the_4bit_base_exactly(pf4, tiny_base):
    from personafuse.models import load_base_model

    base, _ = load_base_model(tiny_base, load_in="4bit", device="cpu")
    inputs = pf4.chat_inputs([CONV, CONV2])
    with torch.no_grad():
        expected = base(**inputs).logits
    routed = logits(pf4, pf4.gates_for([CONV, CONV2]))
    assert not torch.allclose(routed, expected, atol=1e-4), "random experts must change the output"
    assert torch.equal(logits(pf4, torch.zeros(2, 10)), expected)
    with pf4.experts_disabled():
        assert torch.equal(logits(pf4, pf4.gates_for([CONV, CONV2])), expected)


@needs_bnb
@pytest.mark.parametrize(
    "gates",
    [
        [[0.5, 0, 0.2, 0, 0, 0, 0.3, 0, 0, 0]] * 2,  # one shared mix: folded into one LoRA
        [[1.0, 0, 0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0, 0, 1.0]],  # sparse rows: gathered
        [[0.1] * 10, [0.3, 0.7] + [0.0] * 8],  # dense distinct rows: stacked
    ],
    ids=["fold", "gather", "stack"],
)
def test_routed_output_is_the_per_expert_sum_on_the_4bit_base_output(pf4, gates):
    gates = torch.tensor(gates)
    for name, layer in list(persona_layers(pf4.model))[:7]:  # every projection kind of block 0
        x = torch.randn(2, 5, layer.in_features)
        with torch.no_grad():
            base_out = layer.base(x)
            with pf4.using_gates(gates):
                routed = layer(x)
        torch.testing.assert_close(routed, naive_mix(layer, x, base_out, gates), atol=1e-5, rtol=1e-5, msg=name)


@needs_bnb
def test_generate_with_kv_cache_equals_generate_without(pf4):
    kwargs = {"max_new_tokens": 8, "do_sample": False, "min_new_tokens": 8}
    persona = [{"A+": 1.0}, {"C+": 0.5, "O-": 0.5}]
    cached = pf4.generate([CONV, CONV2], persona=persona, use_cache=True, **kwargs)
    uncached = pf4.generate([CONV, CONV2], persona=persona, use_cache=False, **kwargs)
    assert cached == uncached and all(isinstance(r, str) for r in cached)
    with pf4.experts_disabled():
        base = pf4.generate([CONV, CONV2], use_cache=True, **kwargs)
    assert base != cached, "the experts must change what is generated"


def _float_twin(pf4, tiny_base):
    """The same model with each 4-bit base weight replaced by its dequantised float32 copy, and the same experts."""
    import bitsandbytes as bnb

    from personafuse.models import load_base_model

    model, _ = load_base_model(tiny_base)
    state = GateState()
    inject_persona_layers(model, pf4.config.experts, state)
    quantised = dict(persona_layers(pf4.model))
    with torch.no_grad():
        for name, layer in persona_layers(model):
            q = quantised[name]
            layer.base.weight.copy_(bnb.functional.dequantize_4bit(q.base.weight.data, q.base.weight.quant_state))
            layer.lora_A.copy_(q.lora_A)
            layer.lora_B.copy_(q.lora_B)
    return model, state


@needs_bnb
def test_gradients_through_the_4bit_base_equal_those_through_its_dequantised_copy(pf4, tiny_base):
    # An eval forward without grad first: on AVX512-BF16 CPUs bitsandbytes would then repack the weights into a
    # kernel without backward, dropping the gradient to each layer's input (what keep_cpu_kernel_trainable stops).
    logits(pf4, None)
    twin, twin_state = _float_twin(pf4, tiny_base)
    inputs = pf4.chat_inputs([CONV, CONV2])
    gates = torch.tensor([[0.5, 0, 0.2, 0, 0, 0, 0.3, 0, 0, 0], [0, 1.0, 0, 0, 0, 0, 0, 0, 0, 0]])
    twin_state.set(gates)
    grads = []
    for model, using in ((pf4.model, pf4.using_gates(gates)), (twin, torch.enable_grad())):
        model.train()
        model.zero_grad()
        with using:
            loss = model(**inputs, labels=inputs["input_ids"]).loss
            loss.backward()
        model.eval()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    (loss4, grads4), (loss_f, grads_f) = grads
    torch.testing.assert_close(loss4, loss_f, atol=1e-5, rtol=1e-5)
    assert grads4.keys() == grads_f.keys() and len(grads4) == 28
    first = "model.layers.0.self_attn.q_proj.lora_A"
    assert grads4[first].abs().sum() > 0
    for name in grads4:
        torch.testing.assert_close(grads4[name], grads_f[name], atol=1e-6, rtol=1e-4, msg=name)


@needs_bnb
def test_stage1_step_moves_the_routed_experts_and_nothing_else(pf4, tiny_base, tmp_path):
    from personafuse.train.config import load_train_config
    from personafuse.train.expert_data import ExpertData, ExpertSample, encode_pair, one_hot_gates
    from personafuse.train.experts_stage import train_experts

    generator = torch.Generator().manual_seed(0)
    for _, layer in persona_layers(pf4.model):
        layer.reset_experts(init_b="random", generator=generator)
    trained = ["C-", "N+", "O+"]
    samples = []
    for index, pole in enumerate(trained):
        ids, labels = encode_pair(pf4.tokenizer, [{"role": "user", "content": f"my cat died {index}"}],
                                  f"reply {pole} great day", 32)  # fmt: skip
        samples.append(ExpertSample(ids, labels, one_hot_gates(pole), "persona", pole))
    config = load_train_config(None, [
        f"model.base={tiny_base}", "model.experts.rank=4", "model.load_in=4bit", "data.max_length=32",
        "experts.batch_size=3", "experts.max_steps=1", "experts.lr=0.01", "experts.warmup_ratio=0",
        "experts.lr_schedule=constant", "experts.gradient_checkpointing=true", f"output_dir={tmp_path / 'run'}",
    ])  # fmt: skip
    before = {k: v.clone() for k, v in pf4.model.state_dict().items()}  # 4-bit codes and quant states included
    assert any(k.endswith("q_proj.base.weight.absmax") for k in before)
    try:
        result = train_experts(config, pf=pf4, data=ExpertData(samples, 3, 0, 0), progress=False)
    finally:
        pf4.model.gradient_checkpointing_disable()
        pf4.model.eval()
    assert result.steps == 1
    after = pf4.model.state_dict()
    assert before.keys() == after.keys()
    rank = pf4.config.experts.rank
    for key, value in before.items():
        if ".lora_" not in key:
            assert torch.equal(value, after[key]), f"frozen {key} changed"
            continue
        for index, pole in enumerate(POLES):  # rows (A) / columns (B) of each expert
            block = (slice(index * rank, (index + 1) * rank),) if key.endswith("lora_A") else (
                slice(None), slice(index * rank, (index + 1) * rank))  # fmt: skip
            changed = not torch.equal(value[block], after[key][block])
            assert changed == (pole in trained), f"{key} {pole}: changed={changed}"
    saved = json.loads((tmp_path / "run" / "experts" / "checkpoint" / "config.json").read_text())
    assert saved["load_in"] == "4bit"


@needs_bnb
def test_merge_and_merged_export_are_refused_in_one_line(pf4):
    from personafuse.export.merged import merged_state_dict

    before = {k: v.clone() for k, v in pf4.model.state_dict().items()}
    with pytest.raises(
        UserError, match=MERGE_REFUSED + r" \(a load_in='4bit'/'8bit' base\); reload without load_in"
    ) as caught:
        pf4.merge({"A+": 1.0})
    assert "\n" not in str(caught.value) and str(caught.value).count("model.layers.0.self_attn.q_proj") == 1
    assert all(layer.merged_gates is None for _, layer in persona_layers(pf4.model))
    assert all(torch.equal(v, pf4.model.state_dict()[k]) for k, v in before.items())
    with pytest.raises(UserError, match=MERGE_REFUSED):
        merged_state_dict(pf4, torch.tensor([1.0] + [0.0] * 9))
    pf4.unmerge()  # nothing merged: a no-op, not an error


@needs_bnb
def test_save_and_load_keep_4bit_and_give_identical_logits(pf4, tmp_path):
    import bitsandbytes as bnb
    from safetensors.torch import load_file

    gates = pf4.gates_for([CONV, CONV2])
    before = logits(pf4, gates)
    pf4.save_pretrained(tmp_path / "ckpt")
    files = sorted(str(p.relative_to(tmp_path / "ckpt")) for p in (tmp_path / "ckpt").rglob("*") if p.is_file())
    experts = [
        f"experts/{pole}/{name}" for pole in POLES for name in ("adapter_config.json", "adapter_model.safetensors")
    ]
    assert files == sorted(["config.json", "router.safetensors", *experts])  # the base is referenced by name only
    saved = load_file(str(tmp_path / "ckpt" / "experts" / "A+" / "adapter_model.safetensors"))
    assert all(".lora_" in key and value.dtype == torch.float32 for key, value in saved.items())
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["load_in"] == "4bit"

    loaded = PersonaFuse.from_pretrained(tmp_path / "ckpt", device="cpu")
    assert loaded.config.load_in == "4bit"
    assert all(isinstance(layer.base, bnb.nn.Linear4bit) for _, layer in persona_layers(loaded.model))
    assert torch.equal(logits(loaded, gates), before)

    # Overriding the saved setting: the same experts on the unquantised base, which can merge.
    plain = PersonaFuse.from_pretrained(tmp_path / "ckpt", device="cpu", load_in=None)
    assert plain.config.load_in is None
    assert all(type(layer.base) is nn.Linear for _, layer in persona_layers(plain.model))
    routed = logits(plain, gates[:1].expand(2, 10))
    plain.merge(gates[0])
    torch.testing.assert_close(logits(plain, None), routed, atol=1e-4, rtol=0)


@needs_bnb
def test_8bit_base_zero_gates_exact_routed_is_the_per_expert_sum_and_merge_refused(tiny_base):
    from personafuse.models import load_base_model

    model, tokenizer = load_base_model(tiny_base, load_in="8bit", device="cpu")
    reference, _ = load_base_model(tiny_base, load_in="8bit", device="cpu")
    state = GateState()
    inject_persona_layers(model, ExpertConfig(rank=4, alpha=8.0), state, dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    for _, layer in persona_layers(model):
        assert layer.base.weight.dtype == torch.int8 and layer.lora_A.dtype == torch.float32
        layer.reset_experts(init_b="random", generator=generator)
    ids = tokenizer(["my cat died and I am sad"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = reference(ids).logits
        state.set(torch.zeros(1, 10))
        assert torch.equal(model(ids).logits, expected)
        gates = torch.tensor([[0.5, 0, 0.2, 0, 0, 0, 0.3, 0, 0, 0]])
        state.set(gates)
        assert not torch.allclose(model(ids).logits, expected, atol=1e-4)
        name, layer = next(persona_layers(model))
        x = torch.randn(1, 4, 32)
        torch.testing.assert_close(layer(x), naive_mix(layer, x, layer.base(x), gates), atol=1e-5, rtol=1e-5)
    from personafuse.moe import merge_persona

    with pytest.raises(UserError, match=MERGE_REFUSED):
        merge_persona(model, gates[0])
