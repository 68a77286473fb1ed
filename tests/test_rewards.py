"""Rewards: the TRL signature, the registry, and the agreement maths on hand-picked activations."""

from __future__ import annotations

import pytest
import torch

from personafuse.errors import ConfigError
from personafuse.train.rewards import (
    RewardContext,
    activation_agreement,
    available_rewards,
    build_reward,
    combine_rewards,
    completion_text,
    prompt_text,
    register_reward,
)


def test_activation_agreement_cosine_by_hand():
    reply = torch.tensor(
        [[1.0, 0, 0, 0, 0], [1.0, 0, 0, 0, 0], [1.0, 0, 0, 0, 0], [0.0, 0, 0, 0, 0], [3.0, 4, 0, 0, 0]]
    )
    prompt = torch.tensor(
        [[2.0, 0, 0, 0, 0], [-1.0, 0, 0, 0, 0], [0.0, 1, 0, 0, 0], [1.0, 0, 0, 0, 0], [4.0, 3, 0, 0, 0]]
    )
    # same direction 1; flipped -1; orthogonal 0; zero profile 0; (3,4).(4,3) / 25 = 24/25
    assert activation_agreement(reply, prompt) == pytest.approx([1.0, -1.0, 0.0, 0.0, 0.96])


def test_activation_agreement_neg_mse_by_hand():
    reply = torch.tensor([[1.0, 0, 0, 0, 0], [0.5, 0.5, 0, 0, 0]])
    prompt = torch.tensor([[0.0, 0, 0, 0, 0], [0.5, 0.5, 0, 0, 0]])
    assert activation_agreement(reply, prompt, "neg_mse") == pytest.approx([-0.2, 0.0])
    with pytest.raises(ValueError, match="differ"):
        activation_agreement(reply, prompt[:1])
    with pytest.raises(ValueError, match="kind must be"):
        activation_agreement(reply, prompt, "l1")  # type: ignore[arg-type]


def test_combine_rewards():
    assert combine_rewards([[1.0, 2.0], [3.0, 4.0]], [1.0, 0.5]) == pytest.approx([2.5, 4.0])
    with pytest.raises(ValueError, match="2 rewards but 1 weights"):
        combine_rewards([[1.0], [2.0]], [1.0])
    with pytest.raises(ValueError, match="different lengths"):
        combine_rewards([[1.0], [2.0, 3.0]], [1.0, 1.0])


def test_prompt_and_completion_text_accept_strings_and_conversations():
    conversation = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello"}, {"role": "user", "content": "my cat died"}]  # fmt: skip
    assert prompt_text(conversation) == "hi\nhello\nmy cat died"
    assert prompt_text("plain") == "plain"
    assert completion_text([{"role": "assistant", "content": "so sorry"}]) == "so sorry"


def test_registry_lists_builds_and_explains():
    assert {"counsel_reward", "persona_consistency", "persona_consistency_mse"} <= set(available_rewards())
    with pytest.raises(ConfigError, match="unknown reward 'nope'; available: counsel_reward"):
        build_reward("nope", RewardContext())
    with pytest.raises(ConfigError, match="counsel_reward' needs a reward_model; set preference.reward_model"):
        build_reward("counsel_reward", RewardContext())
    with pytest.raises(ConfigError, match="persona_consistency' needs a persona_router"):
        build_reward("persona_consistency", RewardContext())
    with pytest.raises(ValueError, match="already registered"):
        register_reward("counsel_reward")(lambda context: None)


class StubRouter:
    """Encoder + head + router stand-in: the embedding is a one-hot of a keyword, the head maps it to traits."""

    KEYWORDS = ("sorry", "plan", "party")
    ACTIVATIONS = torch.tensor([[0.0, 0, 0, 1.0, -1.0], [0.0, 1.0, 0, 0, 0], [0.0, 0, 1.0, 0, 0]])

    def embed_texts(self, texts):
        out = torch.zeros(len(texts), len(self.KEYWORDS))
        for i, text in enumerate(texts):
            for k, word in enumerate(self.KEYWORDS):
                out[i, k] = float(word in text)
        return out

    def head(self, embeddings):
        return embeddings, embeddings @ self.ACTIVATIONS

    def activations_and_gates(self, texts):
        _, activation = self.head(self.embed_texts(texts))
        return activation, torch.zeros(len(texts), 10)


def test_persona_consistency_scores_the_reply_against_the_prompt():
    reward = build_reward("persona_consistency", RewardContext(persona_router=StubRouter()))
    prompts = [[{"role": "user", "content": "I'm sorry to say my dog died"}]] * 3 + ["help me plan"]
    completions = ["I'm so sorry.", "Let's make a plan.", "", "Here is the plan."]
    # prompt 0-2 activation (A+, N-); replies: same profile 1, orthogonal (C) 0, blank 0; prompt 3 C, reply C: 1
    assert reward(prompts=prompts, completions=completions) == pytest.approx([1.0, 0.0, 0.0, 1.0])
    # a given routed activation (TRL passes dataset columns as keyword arguments) replaces the prompt's routing
    given = [[0.0, 1.0, 0, 0, 0]] * 4
    assert reward(prompts=prompts, completions=completions, activation=given) == pytest.approx([0.0, 1.0, 0.0, 1.0])
    mse = build_reward("persona_consistency_mse", RewardContext(persona_router=StubRouter()))
    assert mse(prompts=prompts[:1], completions=["sorry"]) == pytest.approx([0.0])


def test_counsel_reward_calls_the_reward_model_with_texts():
    class StubModel:
        def score(self, questions, answers):
            return torch.tensor([float(len(a)) - len(q) for q, a in zip(questions, answers)])

    reward = build_reward("counsel_reward", RewardContext(reward_model=StubModel()))
    prompts = [[{"role": "user", "content": "abc"}], "ab"]
    completions = [[{"role": "assistant", "content": "abcdef"}], "a"]
    assert reward(prompts, completions) == pytest.approx([3.0, -1.0])
