"""Stage-3 maths on hand-picked numbers (derivations in the comments; cf. torchtune's test_dpo_loss)."""

from __future__ import annotations

import math

import pytest
import torch

from personafuse.train.preference_losses import (
    bradley_terry_loss,
    completion_logps,
    dpo_loss,
    grpo_advantages,
    kl_k3,
    masked_mean,
    pairwise_accuracy,
    policy_gradient_loss,
    reinforce_loss,
    rloo_advantages,
    token_logps,
)


def softplus(x: float) -> float:
    """-log sigmoid(-x) = log(1 + e^x)."""
    return math.log1p(math.exp(x))


def test_token_and_completion_logps_by_hand():
    # vocab 2; logits [0, log 3] -> probs [1/4, 3/4]; logits [0, 0] -> [1/2, 1/2]
    logits = torch.tensor([[[0.0, math.log(3)], [0.0, 0.0], [5.0, 5.0]]])  # [1, 3, 2]
    ids = torch.tensor([[0, 1, 0]])
    per_token = token_logps(logits, ids)  # scores ids[1]=1 under position 0, ids[2]=0 under position 1
    torch.testing.assert_close(per_token, torch.tensor([[math.log(0.75), math.log(0.5)]]))
    # completion = only the last token
    total = completion_logps(logits, ids, torch.tensor([[0, 0, 1]]))
    torch.testing.assert_close(total, torch.tensor([math.log(0.5)]))
    total = completion_logps(logits, ids, torch.tensor([[0, 1, 1]]))
    torch.testing.assert_close(total, torch.tensor([math.log(0.75) + math.log(0.5)]))


def test_dpo_loss_hand_picked():
    beta = 0.1
    policy_chosen = torch.tensor([-1.0, -5.0, -3.0])
    policy_rejected = torch.tensor([-3.0, -5.0, -1.0])
    ref_chosen = torch.tensor([-2.0, -5.0, -2.0])
    ref_rejected = torch.tensor([-2.0, -5.0, -2.0])
    loss, chosen, rejected = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    # pair 0: rewards 0.1*(+1)=0.1 and 0.1*(-1)=-0.1, margin 0.2 -> loss log(1 + e^-0.2)
    # pair 1: policy == reference -> margin 0 -> log 2
    # pair 2: margin -0.2 -> log(1 + e^0.2)
    torch.testing.assert_close(loss, torch.tensor([softplus(-0.2), math.log(2), softplus(0.2)]))
    torch.testing.assert_close(chosen, torch.tensor([0.1, 0.0, -0.1]))
    torch.testing.assert_close(rejected, torch.tensor([-0.1, 0.0, 0.1]))


def test_dpo_label_smoothing_and_gradient():
    pc = torch.tensor([-1.0], requires_grad=True)
    loss, _, _ = dpo_loss(pc, torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), 0.1, 0.25)
    # margin 0.2: 0.75 * log(1 + e^-0.2) + 0.25 * log(1 + e^0.2)
    assert loss.item() == pytest.approx(0.75 * softplus(-0.2) + 0.25 * softplus(0.2), abs=1e-6)
    # without smoothing, d loss / d log pi(y_w) = -beta * sigmoid(-margin)
    pc.grad = None
    loss, _, _ = dpo_loss(pc, torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), 0.1)
    loss.sum().backward()
    assert pc.grad.item() == pytest.approx(-0.1 / (1 + math.exp(0.2)), abs=1e-6)


def test_bradley_terry_and_accuracy():
    assert bradley_terry_loss(torch.tensor([1.0]), torch.tensor([1.0])).item() == pytest.approx(math.log(2))
    # mean of log(1 + e^-2) and log(1 + e^2)
    value = bradley_terry_loss(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 2.0])).item()
    assert value == pytest.approx((softplus(-2) + softplus(2)) / 2, abs=1e-6)
    assert pairwise_accuracy(torch.tensor([2.0, 0.0, 1.0]), torch.tensor([0.0, 2.0, 1.0])) == pytest.approx(1 / 3)


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])
    # group 1: mean 2, sample std 1 -> [-1, 0, 1] / (1 + eps); group 2: identical -> 0 (not 0/0)
    out = grpo_advantages(rewards, 3, eps=0.0 + 1e-4)
    torch.testing.assert_close(out, torch.tensor([-1 / 1.0001, 0.0, 1 / 1.0001, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(grpo_advantages(rewards, 3, scale=False), torch.tensor([-1.0, 0.0, 1.0, 0, 0, 0]))
    # RLOO: r_i - mean of the others = [1 - 2.5, 2 - 2, 3 - 1.5] = G/(G-1) * (r - mean)
    torch.testing.assert_close(rloo_advantages(rewards, 3), torch.tensor([-1.5, 0.0, 1.5, 0.0, 0.0, 0.0]))


def test_group_advantages_reject_bad_groups():
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        grpo_advantages(torch.ones(4), 1)
    with pytest.raises(ValueError, match="do not split into groups of 3"):
        rloo_advantages(torch.ones(4), 3)


def test_kl_k3_by_hand_and_unbiased():
    assert kl_k3(torch.tensor([-1.0]), torch.tensor([-1.0])).item() == 0.0
    # pi(y) = 1/2, ref(y) = 1/4: d = log(1/2), k3 = 1/2 - log(1/2) - 1
    value = kl_k3(torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])).item()
    assert value == pytest.approx(0.5 + math.log(2) - 1)
    # E_pi[k3] = KL(pi || ref) for pi = [1/2, 1/2], ref = [1/4, 3/4]
    pi, ref = torch.tensor([0.5, 0.5]), torch.tensor([0.25, 0.75])
    expected = float((pi * (pi / ref).log()).sum())
    assert float((pi * kl_k3(pi.log(), ref.log())).sum()) == pytest.approx(expected, abs=1e-6)


def test_masked_mean():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    torch.testing.assert_close(masked_mean(values, mask), torch.tensor([1.5, 0.0]))


def test_policy_gradient_loss_value_and_gradient():
    logps = torch.tensor([[-1.0, -2.0], [-1.0, -3.0]], requires_grad=True)
    mask = torch.tensor([[1, 1], [1, 0]])
    advantages = torch.tensor([1.0, -2.0])
    loss, kl = policy_gradient_loss(logps, logps.detach().clone(), advantages, mask, beta=0.1)
    # ratio == 1, KL == 0: per sequence -A, mean over sequences -(1 - 2)/2 = 0.5
    assert loss.item() == pytest.approx(0.5)
    assert kl.item() == 0.0
    loss.backward()
    # d/d lp_it = -A_i / (tokens of i) / sequences: row 0 -> -1/2/2, row 1 -> 2/1/2 on its one token
    torch.testing.assert_close(logps.grad, torch.tensor([[-0.25, -0.25], [1.0, 0.0]]))


def test_reinforce_loss():
    sequence = torch.tensor([-3.0, -1.0], requires_grad=True)
    loss = reinforce_loss(sequence, torch.tensor([1.0, -1.0]))
    assert loss.item() == pytest.approx(-(1 * -3 + -1 * -1) / 2)
    loss.backward()
    torch.testing.assert_close(sequence.grad, torch.tensor([-0.5, 0.5]))
