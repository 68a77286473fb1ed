"""Stage-2 losses and router metrics against hand-derived values (derivations in each function's docstring)."""

from __future__ import annotations

import math

import pytest
import torch

from personafuse.train.router_losses import (
    activated_pole_mask,
    gate_kl,
    gate_targets,
    multi_positive_nll,
    prototype_infonce,
    regression_loss,
    router_losses,
    trait_consistency,
)
from personafuse.train.router_metrics import (
    accuracy,
    activated_gate_mass,
    format_table,
    macro_f1,
    majority_classes,
    score_classes,
)

E = math.e


def test_activated_pole_mask_follows_the_three_class_rule():
    activation = torch.tensor([[0.4, -0.6, 0.8, 0.2, 0.0], [1 / 3, -1 / 3, 0.33, -0.33, 0.0]])
    mask = activated_pole_mask(activation)
    # POLES = O+ O- C+ C- E+ E- A+ A- N+ N-
    assert mask[0].tolist() == [True, False, False, True, True, False, False, False, False, False]
    assert mask[1].tolist() == [True, False, False, True, False, False, False, False, False, False]


def test_prototype_infonce_single_and_multi_positive():
    prototypes = torch.eye(10)  # pole p's prototype is e_p
    z = torch.eye(10)[:1]  # e_0: cosine 1 with O+, 0 with the rest
    only_o_plus = torch.tensor([[0.9, 0.0, 0.0, 0.0, 0.0]])
    assert prototype_infonce(z, prototypes, only_o_plus, 1.0).item() == pytest.approx(math.log(E + 9) - 1)
    o_plus_c_minus = torch.tensor([[0.9, -0.5, 0.0, 0.0, 0.0]])
    assert prototype_infonce(z, prototypes, o_plus_c_minus, 1.0).item() == pytest.approx(math.log(E + 9) - 0.5)


def test_prototype_infonce_skips_contexts_without_activated_pole_and_scales_with_temperature():
    prototypes, z = torch.eye(10), torch.eye(10)[:2]
    labels = torch.tensor([[0.9, 0, 0, 0, 0], [0.1, 0, 0, 0, 0]])  # second row: nothing activated
    # Only row 0 counts; tau = 0.5 doubles the logits: -log(e^2 / (e^2 + 9)).
    expected = math.log(E**2 + 9) - 2
    assert prototype_infonce(z, prototypes, labels, 0.5).item() == pytest.approx(expected)
    neutral = torch.zeros(2, 5)
    assert prototype_infonce(z, prototypes, neutral, 1.0).item() == 0.0


def test_trait_consistency_hand_example():
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([[0.8, 0, 0, 0, 0], [0.5, 0, 0, 0, 0], [-0.8, 0, 0, 0, 0]])  # O+, O+, O-
    assert trait_consistency(z, labels, 1.0).item() == pytest.approx(math.log(1 + math.exp(-1)))


def test_trait_consistency_without_partners_is_zero_and_keeps_finite_gradients():
    z = torch.randn(1, 4, requires_grad=True)
    loss = trait_consistency(z, torch.tensor([[0.8, 0, 0, 0, 0]]), 0.1)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(z.grad).all()


def test_multi_positive_nll_with_candidates():
    logits = torch.tensor([[0.0, 1.0, 5.0]])
    positives = torch.tensor([[False, True, False]])
    candidates = torch.tensor([[True, True, False]])  # the 5.0 entry is not in the softmax
    loss, keep = multi_positive_nll(logits, positives, candidates)
    assert keep.tolist() == [True]
    assert loss.item() == pytest.approx(-math.log(E / (1 + E)))


def test_regression_losses():
    predicted, target = torch.tensor([[0.5, 0.0]]), torch.zeros(1, 2)
    assert regression_loss(predicted, target, "mse").item() == pytest.approx(0.125)
    assert regression_loss(predicted, target, "smooth_l1", beta=0.1).item() == pytest.approx(0.225)
    with pytest.raises(ValueError, match="regression kind must be 'mse' or 'smooth_l1', got 'l3'"):
        regression_loss(predicted, target, "l3")  # type: ignore[arg-type]


def test_gate_targets_and_kl():
    targets = gate_targets(torch.tensor([[0.4, -0.6, 0.8, 0.2, 0.0], [0.1, 0, 0, 0, 0]]))
    expected = torch.zeros(10)
    expected[0], expected[3], expected[4] = 0.4 / 1.8, 0.6 / 1.8, 0.8 / 1.8
    assert torch.allclose(targets[0], expected)
    assert targets[1].sum().item() == 0.0  # nothing activated -> no target
    half = torch.zeros(1, 10)
    half[0, 0] = half[0, 1] = 0.5
    assert gate_kl(torch.zeros(1, 10), half).item() == pytest.approx(math.log(5))
    # the row without a target is skipped, not averaged in as 0
    two = torch.cat([half, torch.zeros(1, 10)])
    assert gate_kl(torch.zeros(2, 10), two).item() == pytest.approx(math.log(5))


def test_router_losses_is_the_weighted_sum():
    torch.manual_seed(0)
    z, activation, prototypes = torch.randn(6, 8), torch.tanh(torch.randn(6, 5)), torch.randn(10, 8)
    gate_logits, labels = torch.randn(6, 10), torch.rand(6, 5) * 2 - 1
    out = router_losses(
        z, activation, prototypes, gate_logits, labels, temperature=0.1, consistency_temperature=0.2,
        w_contrastive=1.0, w_consistency=0.5, w_regression=2.0, w_gates=0.1,
    )  # fmt: skip
    expected = (
        out["loss_infonce"] + 0.5 * out["loss_consistency"] + 2.0 * out["loss_regression"] + 0.1 * out["loss_gates"]
    )
    assert out["loss"].item() == pytest.approx(expected.item())
    with pytest.raises(ValueError, match=r"labels must be \[batch, 5\], got \(6, 4\)"):
        router_losses(
            z, activation, prototypes, gate_logits, labels[:, :4], temperature=0.1, consistency_temperature=0.1
        )


# ------------------------------------------------------------------------------------------------ metrics
def test_accuracy_and_macro_f1_hand_example():
    predicted, gold = [0, 1, 1, 2], [0, 1, 2, 2]
    assert accuracy(predicted, gold) == pytest.approx(3 / 4)
    assert macro_f1(predicted, gold) == pytest.approx(7 / 9)


def test_macro_f1_leaves_out_classes_nobody_has_and_punishes_constants():
    # gold has no class 2 and nobody predicts it: scored over classes 0 and 1 only
    assert macro_f1([0, 1, 1], [0, 1, 1]) == 1.0
    # constant class 1 on gold (0, 1, 1): class 0 F1 = 0, class 1 F1 = 2*2/(2*2+1+0) = 0.8 -> 0.4
    assert macro_f1([1, 1, 1], [0, 1, 1]) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="predicted has 2 labels, gold 3"):
        macro_f1([1, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="no labels to score"):
        accuracy([], [])


def test_majority_classes_and_ties():
    rows = [[-0.5, 0.5, 0.0, 0.9, -0.9], [0.0, 0.5, 0.0, -0.9, 0.9], [0.1, -0.5, 0.9, 0.0, 0.0]]
    # O: 0,1,1 -> 1; C: 2,2,0 -> 2; E: 1,1,2 -> 1; A: 2,0,1 -> tie, lowest = 0; N: 0,2,1 -> 0
    assert majority_classes(rows) == [1, 2, 1, 0, 0]


def test_score_classes_per_trait_and_mean():
    gold = [[0.9, 0.0, 0.0, 0.0, 0.0], [-0.9, 0.0, 0.0, 0.0, 0.0]]
    predicted = [[0.5, 0.0, 0.0, 0.0, 0.0], [0.5, 0.0, 0.0, 0.0, 0.0]]  # O: (2, 2) vs gold (2, 0)
    scores = score_classes(predicted, gold)
    assert scores["O"] == {"accuracy": 0.5, "macro_f1": pytest.approx((2 / 3 + 0) / 2)}
    assert scores["C"] == {"accuracy": 1.0, "macro_f1": 1.0}
    assert scores["mean"]["accuracy"] == pytest.approx((0.5 + 4) / 5)
    constant = score_classes([[1, 1, 1, 1, 1]] * 2, gold, predicted_are_classes=True)
    assert constant["C"]["accuracy"] == 1.0 and constant["O"]["accuracy"] == 0.0
    assert "| trained |" in format_table({"trained": scores})


def test_activated_gate_mass():
    gates = [[0.0] * 6 + [0.6] + [0.4 / 3] * 3, [0.1] * 10]
    gold = [[0.0, 0.0, 0.0, 0.9, 0.0], [0.0] * 5]  # second context activates nothing: skipped
    assert activated_gate_mass(gates, gold) == pytest.approx(0.6)
