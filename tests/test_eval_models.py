"""The eval models: log-likelihoods against a direct computation, batch invariance, the PersonaFuse modes'
gates, the endpoint model, and --model / --mode resolution."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch

from personafuse.errors import UserError
from personafuse.evaluate.endpoint import OpenAIEvalModel
from personafuse.evaluate.local import CausalLMRunner, HFEvalModel, PersonaFuseEvalModel
from personafuse.evaluate.models import (
    EvalModel,
    PersonaModel,
    SystemPromptModel,
    UnsupportedScoringError,
    load_eval_model,
    parse_mode,
)
from personafuse.evaluate.scripted import ScriptedModel
from personafuse.traits import POLES, Activation, Gates, Routing
from test_eval_support import save_tiny_model, tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def tiny():
    tokenizer = tiny_tokenizer()
    return tiny_model(tokenizer), tokenizer


def _conv(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_loglikelihood_equals_a_direct_forward_pass(tiny):
    model, tok = tiny
    runner = CausalLMRunner(model, tok, batch_size=4)
    context, continuation = _conv("How are you?"), "Fine, thanks."
    got = runner.loglikelihood([context], [continuation])[0]
    prompt = tok.apply_chat_template(context, tokenize=False, add_generation_prompt=True)
    ctx_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    full = tok(prompt + continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([full])).logits[0].float(), -1)  # [T, V]
    expected = sum(float(logprobs[i - 1, full[i]]) for i in range(len(ctx_ids), len(full)))
    assert got == pytest.approx(expected, abs=1e-4)


def test_loglikelihood_is_batch_invariant_and_single_token_rows_are_shared(tiny):
    model, tok = tiny
    contexts = [_conv("a short one"), _conv("a much longer context " * 5), _conv("a short one"), _conv("x")]
    conts = ["A", "B is the answer", "B", "C"]
    one = CausalLMRunner(model, tok, batch_size=1).loglikelihood(contexts, conts)
    many = CausalLMRunner(model, tok, batch_size=8).loglikelihood(contexts, conts)
    alone = [CausalLMRunner(model, tok, batch_size=1).loglikelihood([c], [k])[0] for c, k in zip(contexts, conts)]
    assert many == pytest.approx(one, abs=1e-4)
    assert many == pytest.approx(alone, abs=1e-4)
    assert len(CausalLMRunner(model, tok)._rows(["same", "same"], ["A", "B"])) == 1  # one forward pass for both


def test_generate_is_greedy_deterministic_and_keeps_order(tiny):
    model, tok = tiny
    runner = CausalLMRunner(model, tok, batch_size=2)
    convs = [_conv("short"), _conv("a somewhat longer prompt"), _conv("mid size")]
    first = runner.generate(convs, max_new_tokens=5)
    assert first == runner.generate(convs, max_new_tokens=5)
    assert first[1] == runner.generate([convs[1]], max_new_tokens=5)[0]


def test_hf_eval_model_loads_from_a_folder_and_describes_itself(tmp_path):
    folder = save_tiny_model(tmp_path / "tiny")
    model = load_eval_model(str(folder), device="cpu")
    assert isinstance(model, HFEvalModel) and isinstance(model, EvalModel) and not isinstance(model, PersonaModel)
    info = model.info()
    assert info["kind"] == "hf" and info["mode"] == "base" and info["chat_template_sha256"]
    assert "torch" in info["versions"] and "transformers" in info["versions"]
    with pytest.raises(UserError, match=r"--mode routed needs a PersonaFuse checkpoint"):
        load_eval_model(str(folder), mode="routed")


def test_runner_refuses_a_tokenizer_without_chat_template(tiny):
    model, _ = tiny
    tok = tiny_tokenizer()
    tok.chat_template = None
    with pytest.raises(UserError, match="no chat template"):
        CausalLMRunner(model, tok)


# ---------------------------------------------------------------------------------------------------- modes
class FakePF:
    """The PersonaFuse contract, recording what the eval model asked for. Routed gates are one-hot at
    len(text) % 10, so a test can tell which conversation's gates a row received."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer
        self.config = SimpleNamespace(base="tiny", encoder="none")
        self.seen: list[torch.Tensor] = []
        self.disabled = 0
        self.routed: list[str] = []

    def route(self, texts):
        self.routed += list(texts)
        return [Routing(Activation((0.9, 0.0, 0.0, -0.5, 0.0)), Gates.from_mapping({"O+": 1.0}), t) for t in texts]

    def gates_for(self, conversations, persona=None):
        rows = []
        for conv in conversations:
            if persona is None:
                text = "\n".join(m["content"] for m in conv if m["role"] != "system")
                rows.append(torch.nn.functional.one_hot(torch.tensor(len(text) % 10), 10).float())
            elif isinstance(persona, Routing):
                rows.append(torch.tensor(persona.gates.values))
            else:
                rows.append(torch.tensor(Gates.from_mapping(persona).values))
        return torch.stack(rows)

    @contextlib.contextmanager
    def using_gates(self, gates):
        self.seen.append(gates.detach().cpu().clone())
        yield

    @contextlib.contextmanager
    def experts_disabled(self):
        self.disabled += 1
        yield


def test_parse_mode_accepts_the_documented_modes_and_names_the_fix():
    assert str(parse_mode("pole:A+")) == "pole:A+" and parse_mode("uniform").kind == "uniform"
    with pytest.raises(UserError, match=r"unknown --mode 'router'; use one of: base \| routed"):
        parse_mode("router")
    with pytest.raises(UserError, match=r"unknown pole; use pole:<P> with P one of O\+ O-"):
        parse_mode("pole:X+")


def test_routed_mode_gives_each_row_its_own_conversations_gates(tiny):
    pf = FakePF(*tiny)
    model = PersonaFuseEvalModel(pf, "routed", batch_size=2)
    texts = ["a", "bbb", "cc", "dddd", "a"]
    model.loglikelihood([_conv(t) for t in texts], ["xy"] * len(texts))
    seen = torch.cat(pf.seen)  # rows in batch order (sorted by length)
    assert sorted(int(r.argmax()) for r in seen) == sorted(len(t) % 10 for t in texts)
    pf.seen.clear()
    model.generate([_conv(t) for t in texts], max_new_tokens=2)
    assert sorted(int(r.argmax()) for r in torch.cat(pf.seen)) == sorted(len(t) % 10 for t in texts)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("uniform", [0.1] * 10), ("pole:A-", [1.0 if p == "A-" else 0.0 for p in POLES])],
)
def test_uniform_and_pole_modes_set_the_documented_gates(tiny, mode, expected):
    pf = FakePF(*tiny)
    PersonaFuseEvalModel(pf, mode).loglikelihood([_conv("hello"), _conv("bye")], ["A", "B"])
    for row in torch.cat(pf.seen):
        assert row.tolist() == pytest.approx(expected)


def test_base_mode_disables_experts_and_matches_the_plain_model(tiny):
    model, tok = tiny
    pf = FakePF(model, tok)
    contexts, conts = [_conv("hello"), _conv("bye")], ["A", "Bee"]
    got = PersonaFuseEvalModel(pf, "base").loglikelihood(contexts, conts)
    assert pf.disabled >= 1 and not pf.seen
    assert got == pytest.approx(HFEvalModel(model, tok, "tiny").loglikelihood(contexts, conts), abs=1e-5)


def test_prompt_mode_writes_the_routed_activation_into_a_system_prompt(tiny):
    model, tok = tiny
    pf = FakePF(model, tok)
    pfm = PersonaFuseEvalModel(pf, "prompt")
    got = pfm.loglikelihood([_conv("hello")], ["A"])
    assert pf.routed == ["hello"] and pf.disabled == 1 and not pf.seen
    prompt = "Adapt your personality to this conversation. In your reply: explore ideas"
    expected_ctx = [{"role": "system", "content": pfm._prepare([_conv("hello")])[0][0][0]["content"]}, *_conv("hello")]
    assert expected_ctx[0]["content"].startswith(prompt) and "blunt" in expected_ctx[0]["content"]  # A = -0.5
    assert got == pytest.approx(HFEvalModel(model, tok, "tiny").loglikelihood([expected_ctx], ["A"]), abs=1e-5)


def test_with_persona_fixes_the_gates_for_every_context(tiny):
    pf = FakePF(*tiny)
    view = PersonaFuseEvalModel(pf, "routed", name="ckpt").with_persona({"N-": 1.0})
    assert isinstance(view, PersonaModel) and view.name == "ckpt@N-"
    view.loglikelihood([_conv("one"), _conv("three")], ["A", "A"])
    assert all(int(r.argmax()) == POLES.index("N-") for r in torch.cat(pf.seen))


# ---------------------------------------------------------------------------------------------------- others
def test_system_prompt_model_prepends_and_merges_system_messages():
    seen = []
    inner = ScriptedModel(loglik=lambda c, k: seen.append(c) or 0.0, reply=lambda c: seen.append(c) or "ok")
    wrapped = SystemPromptModel(inner, "Be calm.", "N-")
    wrapped.loglikelihood([_conv("hi")], ["A"])
    wrapped.generate([[{"role": "system", "content": "Task rules."}, *_conv("hi")]], 4)
    assert seen[0][0] == {"role": "system", "content": "Be calm."}
    assert seen[1][0] == {"role": "system", "content": "Be calm.\n\nTask rules."} and len(seen[1]) == 2


def test_openai_model_parses_the_spec_generates_in_order_and_refuses_loglikelihood():
    calls = []

    def create(model, messages, max_tokens, **kwargs):
        calls.append((model, messages[-1]["content"], max_tokens, kwargs))
        message = SimpleNamespace(content=f" reply to {messages[-1]['content']} ")
        return SimpleNamespace(choices=[SimpleNamespace(message=message)])

    client = SimpleNamespace(chat=SimpleNamespace(completions=SimpleNamespace(create=create)))
    model = OpenAIEvalModel.from_spec("openai:http://127.0.0.1:8000/v1#personafuse", client=client, concurrency=3)
    assert (model.base_url, model.model, model.supports_loglikelihood) == (
        "http://127.0.0.1:8000/v1",
        "personafuse",
        False,
    )
    assert model.generate([_conv(str(i)) for i in range(5)], 7) == [f"reply to {i}" for i in range(5)]
    assert all(c[2] == 7 and c[3]["temperature"] == 0.0 for c in calls)
    with pytest.raises(UnsupportedScoringError, match="use generate-then-parse|--scoring generate"):
        model.loglikelihood([_conv("x")], ["A"])
    with pytest.raises(UserError, match=r"needs the form openai:URL#MODEL"):
        OpenAIEvalModel.from_spec("openai:http://127.0.0.1:8000/v1")


@pytest.mark.slow
def test_real_personafuse_modes_on_smollm2():
    """Opt-in (-m slow): the real PersonaFuse with random expert B matrices, so experts change the output."""
    from personafuse.model import PersonaFuse

    pf = PersonaFuse.create(init_b="random", device="cpu")
    ctx, cont = [_conv("My cat died yesterday.")], ["I'm so sorry for your loss."]
    base = PersonaFuseEvalModel(pf, "base").loglikelihood(ctx, cont)
    with pf.experts_disabled():
        plain = HFEvalModel(pf.model, pf.tokenizer, "smollm2").loglikelihood(ctx, cont)
    assert base == pytest.approx(plain, abs=1e-5)
    pole = PersonaFuseEvalModel(pf, "pole:A-").loglikelihood(ctx, cont)
    assert abs(pole[0] - base[0]) > 1e-3
    fixed = PersonaFuseEvalModel(pf, "routed").with_persona({"A-": 1.0}).loglikelihood(ctx, cont)
    assert fixed == pytest.approx(pole, abs=1e-5)
    assert PersonaFuseEvalModel(pf, "prompt").generate(ctx, 8)[0]
