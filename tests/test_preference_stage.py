"""Stage 3 on the tiny random Llama: data layout, the reference policy, one DPO / RL step, batch invariance,
the whole recipe's artefacts, and kill -> rerun resuming to the same result."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from personafuse.data.split import assign_split
from personafuse.errors import ConfigError
from personafuse.moe import persona_layers
from personafuse.train import preference_stage
from personafuse.train.config import TrainConfig
from personafuse.train.preference_data import TokenizedPair, collate_pairs, load_preference_examples, tokenize_pair
from personafuse.train.preference_policy import RoutedPolicy
from personafuse.train.preference_rl import rl_step_loss
from personafuse.train.preference_stage import (
    check_preference_config,
    dpo_micro_step,
    example_gates,
    policy_logps,
    reference_logps,
    shard,
    train_preference,
    trainable_parameters,
)
from personafuse.traits import POLES

PHRASES = ["hello there how are you today", "my cat died and I am sad", "the server is down please help",
           "what a great day we won the game", "tell me honestly what you think of my plan"]  # fmt: skip


def _record(record_id: str, index: int) -> dict:
    phrase = PHRASES[index % len(PHRASES)]
    return {
        "schema_version": 1, "id": record_id, "domain": "casual_chat",
        "messages": [{"role": "user", "content": f"{phrase} {index}"}],
        "analysis": {"cues": ["a cue"], "rationale": "A plain message calls for a calm, direct reply."},
        "activation": {"O": 0.1 * (index % 3), "C": 0.5, "E": -0.4, "A": 0.8, "N": -0.5},
        "responses": {pole: f"{pole} reply {index} {phrase}" for pole in POLES},
        "ideal": f"I am sorry, {phrase} {index}", "rejected": f"we won the game {index}" + " ha" * (index % 3),
        "split": assign_split(record_id),
    }  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """8 train and 2 val situations written in the tiny tokenizer's vocabulary (short sequences)."""
    rows, counts, index = [], {"train": 0, "val": 0}, 0
    while counts["train"] < 8 or counts["val"] < 2:
        record_id = f"tiny-{index}"
        split = assign_split(record_id)
        if split in counts and counts[split] < (8 if split == "train" else 2):
            counts[split] += 1
            rows.append(_record(record_id, index))
        index += 1
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def start(tmp_path_factory, shared_pf) -> Path:
    """A saved tiny PersonaFuse with random (non-zero) experts: stage 3's starting checkpoint."""
    folder = tmp_path_factory.mktemp("start") / "ckpt"
    shared_pf.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def shared_pf(tiny_pf_factory):
    return tiny_pf_factory()


@pytest.fixture()
def pf(shared_pf):
    """The module's tiny model, restored after each test (building one costs seconds: it loads MiniLM)."""
    modules = [shared_pf.model, shared_pf.persona_router.head, shared_pf.persona_router.router]
    saved = [{n: (p.detach().clone(), p.requires_grad) for n, p in m.named_parameters()} for m in modules]
    top_k = shared_pf.persona_router.router.config.top_k
    yield shared_pf
    with torch.no_grad():
        for module, values in zip(modules, saved):
            for name, param in module.named_parameters():
                param.copy_(values[name][0])
                param.requires_grad_(values[name][1])
                param.grad = None
    shared_pf.persona_router.router.config.top_k = top_k
    shared_pf.model.eval()


def _config(corpus: Path, output: Path, **preference) -> TrainConfig:
    config = TrainConfig()
    config.data.corpus = str(corpus)
    config.data.max_length = 48
    config.output_dir = str(output)
    defaults = {"max_steps": 2, "batch_size": 2, "eval_prompts": 2, "max_new_tokens": 3, "lr": 1e-3}
    config.preference = dataclasses.replace(config.preference, **{**defaults, **preference})
    return config


def _pairs(pf, corpus: Path, count: int) -> tuple[list, torch.Tensor, torch.Tensor]:
    examples = load_preference_examples(corpus, "train")[:count]
    pairs = [tokenize_pair(pf.tokenizer, e.messages, e.chosen, e.rejected, 48) for e in examples]
    embeddings = pf.persona_router.embed_texts([e.context for e in examples])
    activations = torch.tensor([e.activation for e in examples])
    return pairs, embeddings, activations


# ---------------------------------------------------------------------------------------------------- data
def test_collate_pairs_exact_tensors():
    pairs = [TokenizedPair([1, 2], [3], [4, 5]), TokenizedPair([6], [7, 8, 9], [10])]
    batch = collate_pairs(pairs, pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 0], [6, 7, 8, 9], [1, 2, 4, 5], [6, 10, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["completion_mask"].tolist() == [[0, 0, 1, 0], [0, 1, 1, 1], [0, 0, 1, 1], [0, 1, 0, 0]]


def test_tokenize_pair_matches_generation_and_truncates(tiny_base):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    messages = [{"role": "user", "content": "my cat died"}]
    pair = tokenize_pair(tokenizer, messages, "I am sorry", "we won", max_length=256)
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert pair.prompt == tokenizer(prompt, add_special_tokens=False)["input_ids"]  # what generate() sees
    assert tokenizer.decode(pair.chosen) == "I am sorry<|im_end|>"  # the reply + end of turn, nothing after
    assert tokenizer.decode(pair.rejected) == "we won<|im_end|>"
    short = tokenize_pair(tokenizer, messages, "I am sorry " * 20, "we won", max_length=24)
    assert len(short.prompt) + len(short.chosen) <= 24 and len(short.prompt) >= 12
    assert short.prompt == pair.prompt[-len(short.prompt) :]  # the prompt loses tokens on the left


# ---------------------------------------------------------------------------------------------------- building blocks
def test_reference_logits_equal_the_base_model(pf, tiny_base, corpus):
    from transformers import AutoModelForCausalLM

    from personafuse.train.preference_losses import completion_logps

    pairs, embeddings, activations = _pairs(pf, corpus, 3)
    batch = collate_pairs(pairs, pf.tokenizer.pad_token_id)
    base = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    pf.model.eval()
    with torch.no_grad():
        expected = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        with pf.experts_disabled(), pf.using_gates(torch.full((6, 10), 0.1)):
            got = pf.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.equal(got, expected)  # bit-exact, though gates are set
    policy = RoutedPolicy(pf, "routed")
    reference = reference_logps(policy, batch)
    assert torch.equal(reference, completion_logps(expected, batch["input_ids"], batch["completion_mask"]))
    routed = policy_logps(policy, batch, embeddings, activations).detach()
    assert not torch.allclose(routed, reference)  # the experts do act
    gates = example_gates(pf, embeddings, activations, "routed")  # [3, 10]: the policy gives each row its pair's
    with torch.no_grad(), pf.using_gates(torch.cat([gates, gates])):
        logits = pf.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(routed, completion_logps(logits, batch["input_ids"], batch["completion_mask"]))


def _snapshot(pf) -> dict[str, torch.Tensor]:
    tensors = {f"lm.{n}": p.detach().clone() for n, p in pf.model.named_parameters()}
    tensors.update({f"head.{n}": p.detach().clone() for n, p in pf.persona_router.head.named_parameters()})
    tensors.update({f"router.{n}": p.detach().clone() for n, p in pf.persona_router.router.named_parameters()})
    return tensors


def _one_step(pf, corpus: Path, routing: str, train_router: bool) -> dict[str, torch.Tensor]:
    p = dataclasses.replace(TrainConfig().preference, routing=routing, train_router=train_router, beta=0.5)
    params = trainable_parameters(pf, train_router)
    optimizer = torch.optim.Adam(list(params.values()), lr=1e-2)
    pairs, embeddings, activations = _pairs(pf, corpus, 2)
    pf.model.train()
    loss, stats = dpo_micro_step(RoutedPolicy(pf, routing), pairs, embeddings, activations, p, per_step=2)
    assert stats["loss"] > 0 and 0 <= stats["reward_accuracy"] <= 1
    loss.backward()
    optimizer.step()
    return params


def test_one_dpo_step_changes_every_expert_and_the_router_and_nothing_frozen(pf, corpus):
    before = _snapshot(pf)
    params = _one_step(pf, corpus, "routed", train_router=True)  # dense softmax gates: every expert gets data
    after = _snapshot(pf)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    experts = {f"lm.{name}.{m}" for name, _ in persona_layers(pf.model) for m in ("lora_A", "lora_B")}
    # Every expert's own slice of A and B moved
    for name, layer in persona_layers(pf.model):
        for e in range(len(POLES)):
            a0, b0 = (
                before[f"lm.{name}.lora_A"].view(10, layer.rank, -1)[e],
                before[f"lm.{name}.lora_B"].view(-1, 10, layer.rank)[:, e],
            )
            a1, b1 = layer.lora_A.detach().view(10, layer.rank, -1)[e], layer.lora_B.detach().view(-1, 10, layer.rank)[:, e]  # fmt: skip
            assert not torch.equal(a0, a1) and not torch.equal(b0, b1), f"{name} expert {POLES[e]} did not move"
    # Only trainable tensors changed: experts, the router, the head's activation layer and its MLP's last layer
    # (the MLP's first layer gets no gradient through the zero-initialised last one; prototypes are not trained)
    assert changed - experts == {"router.weight", "router.bias", "head.activation.weight", "head.activation.bias",
                                 "head.mlp.2.weight", "head.mlp.2.bias"}  # fmt: skip
    assert experts <= changed
    assert all(k.removeprefix("lm.").startswith(("model.", "lm_head")) for k in changed if k.startswith("lm."))
    assert {n for n in params if n.startswith(("head", "router"))} >= {"router.weight", "head.mlp.0.weight"}


def test_one_dpo_step_leaves_experts_without_data_alone(pf, corpus):
    pf.persona_router.router.config.top_k = 2  # labelled gates keep two experts per pair
    pairs, embeddings, activations = _pairs(pf, corpus, 2)
    used = (example_gates(pf, embeddings, activations, "label") > 0).any(dim=0)
    assert 2 <= int(used.sum()) < 10
    before = _snapshot(pf)
    _one_step(pf, corpus, "label", train_router=False)
    after = _snapshot(pf)
    for name, layer in persona_layers(pf.model):
        for e in range(len(POLES)):
            a0 = before[f"lm.{name}.lora_A"].view(10, layer.rank, -1)[e]
            a1 = after[f"lm.{name}.lora_A"].view(10, layer.rank, -1)[e]
            assert torch.equal(a0, a1) != bool(used[e]), f"{name} expert {POLES[e]}"
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("head", "router")))


def test_batch_4_accum_1_matches_batch_1_accum_4(pf, corpus):
    p = dataclasses.replace(TrainConfig().preference, beta=0.5)
    params = trainable_parameters(pf, train_router=True)
    pairs, embeddings, activations = _pairs(pf, corpus, 4)
    policy = RoutedPolicy(pf, "routed")
    pf.model.train()

    def gradients(micro: int) -> dict[str, torch.Tensor]:
        for param in params.values():
            param.grad = None
        for start in range(0, 4, micro):
            index = slice(start, start + micro)
            loss, _ = dpo_micro_step(policy, pairs[index], embeddings[index], activations[index], p, per_step=4)
            loss.backward()
        return {n: param.grad.clone() for n, param in params.items() if param.grad is not None}

    whole, split = gradients(4), gradients(1)
    assert whole.keys() == split.keys() and len(whole) > 10
    for name in whole:
        torch.testing.assert_close(whole[name], split[name], atol=1e-6, rtol=1e-4, msg=name)


def test_sharded_dpo_step_averaged_over_two_processes_equals_one_process(pf, corpus):
    """What DDP computes on 2 processes: each takes its slice of every micro-batch (``shard``) and divides by the
    pairs it sees in the step; DDP averages the two gradients. That must be one process's gradient over all pairs."""
    p = dataclasses.replace(TrainConfig().preference, beta=0.5)
    params = trainable_parameters(pf, train_router=True)
    pairs, embeddings, activations = _pairs(pf, corpus, 4)
    policy = RoutedPolicy(pf, "routed")
    pf.model.train()
    batch_size, accumulation = 2, 2  # a step of 4 pairs, in 2 micro-batches of 2

    def gradients(rank: int, world: int) -> dict[str, torch.Tensor]:
        for param in params.values():
            param.grad = None
        for micro in range(accumulation):
            index = shard(list(range(micro * batch_size, (micro + 1) * batch_size)), rank, world)
            loss, _ = dpo_micro_step(policy, [pairs[i] for i in index], embeddings[index], activations[index], p,
                                     per_step=batch_size * accumulation // world)  # fmt: skip
            loss.backward()
        return {n: param.grad.clone() for n, param in params.items() if param.grad is not None}

    assert [shard([0, 1], r, 2) for r in range(2)] == [[0], [1]] and shard([0, 1], 0, 1) == [0, 1]
    one, ranks = gradients(0, 1), [gradients(r, 2) for r in range(2)]
    assert one.keys() == ranks[0].keys() == ranks[1].keys() and len(one) > 10
    assert any(not torch.allclose(ranks[0][n], ranks[1][n]) for n in one)  # the two processes saw different pairs
    for name in one:
        torch.testing.assert_close((ranks[0][name] + ranks[1][name]) / 2, one[name], atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_rl_step_gives_every_used_expert_a_gradient(pf, corpus, method):
    from personafuse.train.rewards import RewardContext, build_reward

    p = dataclasses.replace(TrainConfig().preference, method=method, num_generations=3, max_new_tokens=4, beta=0.1)
    params = trainable_parameters(pf, train_router=False)
    examples = load_preference_examples(corpus, "train")[:2]
    context = RewardContext(persona_router=pf.persona_router)
    # a length reward makes the sampled replies' rewards differ, so the advantages are non-zero
    rewards = {"length": lambda prompts, completions, **kw: [float(len(c)) for c in completions],
               "persona_consistency": build_reward("persona_consistency", context)}  # fmt: skip
    _, embeddings, activations = _pairs(pf, corpus, 2)
    pf.model.train()
    torch.manual_seed(0)
    loss, stats = rl_step_loss(RoutedPolicy(pf, p.routing), examples, embeddings, activations, rewards, p)
    loss.backward()
    assert torch.isfinite(loss) and stats["reply_tokens"] > 0 and stats["kl"] >= 0
    assert {"reward", "length", "persona_consistency"} <= stats.keys()
    for name, param in params.items():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


# ---------------------------------------------------------------------------------------------------- the recipe
def test_config_problems_are_collected_before_any_model_loads(tmp_path, corpus):
    config = _config(corpus, tmp_path, routing="label", train_router=True, batch_size=0, method="grpo",
                     num_generations=1)  # fmt: skip
    message = (r"preference.batch_size=0: expected an integer >= 1.*num_generations=1: grpo compares replies; use >= 2"
               r".*routing='label' gives the router no gradient; set preference.train_router=false.*"
               r"method='grpo' needs a reward model: set preference.reward_model")  # fmt: skip
    with pytest.raises(ConfigError, match=message):
        check_preference_config(config)
    config = _config(Path(tmp_path / "nope.jsonl"), tmp_path, beta=0.0)
    with pytest.raises(ConfigError, match=r"DPO needs beta > 0 \(try 0.1\).*data.corpus=.*nope.jsonl.*no such file"):
        check_preference_config(config)


def test_launches_stage_3_cannot_split_are_refused_before_any_model_loads(tmp_path, corpus, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    check_preference_config(_config(corpus, tmp_path, batch_size=4))
    with pytest.raises(ConfigError, match=r"preference.batch_size=3: this launch has 2 processes and each takes an "
                                          r"equal share of every micro-batch; use a multiple of 2"):  # fmt: skip
        check_preference_config(_config(corpus, tmp_path, batch_size=3))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ConfigError, match=r"stage 3 runs on one process or under DDP, not FSDP .*launch --stage "
                                          r"preference with configs/accelerate/ddp.yaml"):  # fmt: skip
        check_preference_config(_config(corpus, tmp_path, batch_size=4))


def _trainable_state(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "preference" / "state" / "trainable.safetensors"))


def test_train_preference_writes_artefacts_and_resumes_after_a_kill(tmp_path, corpus, start, monkeypatch):
    # the uninterrupted run
    full = train_preference(_config(corpus, tmp_path / "full", max_steps=4, save_every=2), start, progress=False)
    out = tmp_path / "full" / "preference"
    assert full.steps == 4 and full.resumed_from == 0 and full.checkpoint == out / "checkpoint"
    for name in ("checkpoint/config.json", "checkpoint/router.safetensors", "checkpoint/experts/A+/adapter_config.json",
                 "metrics.jsonl", "losses.png", "summary.json", "state/state.json"):  # fmt: skip
        assert (out / name).is_file(), name
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all("loss" in r for r in rows)
    for when in ("before", "after"):
        assert {"persona_consistency", "dpo_accuracy", "dpo_loss", "reply_words"} <= full.metrics[when].keys()
    from safetensors.torch import load_file

    expert = "experts/A+/adapter_model.safetensors"
    tuned, initial = load_file(str(full.checkpoint / expert)), load_file(str(start / expert))
    assert tuned.keys() == initial.keys() and any(not torch.equal(tuned[k], initial[k]) for k in tuned)
    # preference.train_router is false by default: the head and router come out as they went in
    router = "router.safetensors"
    tuned, initial = load_file(str(full.checkpoint / router)), load_file(str(start / router))
    assert tuned.keys() == initial.keys() and len(tuned) > 2 and all(torch.equal(tuned[k], initial[k]) for k in tuned)
    assert full.world_size == 1 and json.loads((out / "summary.json").read_text())["world_size"] == 1

    # a run killed during step 3 (after the state of step 2 was saved), then rerun with the same settings
    calls = {"n": 0}
    original = preference_stage.dpo_micro_step

    def dies_on_third_call(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return original(*args, **kwargs)

    monkeypatch.setattr(preference_stage, "dpo_micro_step", dies_on_third_call)
    config = _config(corpus, tmp_path / "killed", max_steps=4, save_every=2, eval_prompts=0)
    with pytest.raises(KeyboardInterrupt):
        train_preference(config, start)
    assert json.loads((tmp_path / "killed/preference/state/state.json").read_text())["step"] == 2
    monkeypatch.setattr(preference_stage, "dpo_micro_step", original)
    resumed = train_preference(config, start)
    assert resumed.resumed_from == 2 and resumed.steps == 4
    rows = [json.loads(line) for line in (tmp_path / "killed/preference/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    final, again = _trainable_state(tmp_path / "full"), _trainable_state(tmp_path / "killed")
    assert final.keys() == again.keys()
    for name in final:
        torch.testing.assert_close(final[name], again[name], atol=1e-6, rtol=1e-5, msg=name)

    # other settings in the same output_dir are refused with the fix
    with pytest.raises(ConfigError, match="holds a stage-3 run with other settings; delete it"):
        train_preference(_config(corpus, tmp_path / "killed", max_steps=4, beta=0.3, eval_prompts=0), start)
