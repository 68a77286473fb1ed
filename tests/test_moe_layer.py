"""Exactness of the Persona MoE layer against the naive formula W x + sum_e g_e (alpha/r) B_e A_e x."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from personafuse.moe import GateState, PersonaLoRALinear
from personafuse.routing.router import gates_from_logits

E = 10


def make_layer(rank: int = 4, alpha: float = 8.0, in_f: int = 16, out_f: int = 12, bias: bool = True):
    torch.manual_seed(0)
    state = GateState()
    layer = PersonaLoRALinear(nn.Linear(in_f, out_f, bias=bias), rank, alpha, 0.0, state)
    layer.reset_experts(init_b="random", generator=torch.Generator().manual_seed(1))
    layer.eval()
    return layer, state


def naive(layer: PersonaLoRALinear, x: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """Per-row, per-expert loop: the definition the stacked layer must equal."""
    out = layer.base(x).clone()
    for row in range(x.shape[0]):
        for e in range(E):
            a, b = layer.expert_weights(e)
            out[row] += gates[row, e] * layer.scaling * (x[row] @ a.T @ b.T)
    return out


def random_gates(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.softmax(torch.randn(rows, E, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_dense_per_row_mix_matches_naive():
    layer, state = make_layer()
    x = torch.randn(3, 5, 16)
    gates = random_gates(3)
    state.set(gates)
    torch.testing.assert_close(layer(x), naive(layer, x, gates), atol=1e-5, rtol=0)


def test_shared_mix_folds_into_one_lora_and_matches_naive():
    layer, state = make_layer()
    x = torch.randn(4, 3, 16)
    gates = random_gates(1).expand(4, E).clone()
    state.set(gates)
    assert state.shared
    kind, a, b, scale = layer._prepare()
    assert kind == "fold" and scale is None and a.shape == (E * 4, 16) and b.shape == (12, E * 4)
    torch.testing.assert_close(layer(x), naive(layer, x, gates), atol=1e-5, rtol=0)


@pytest.mark.parametrize("rows", [1, 3])
def test_top_k_gates_use_only_active_experts_and_match_naive(rows):
    layer, state = make_layer()
    x = torch.randn(rows, 4, 16)
    gates = gates_from_logits(torch.randn(rows, E), top_k=3)
    assert ((gates > 0).sum(dim=1) == 3).all()
    torch.testing.assert_close(gates.sum(dim=1), torch.ones(rows))
    state.set(gates)
    kind, a, _, _ = layer._prepare()
    if rows == 1:
        assert kind == "fold" and a.shape == (3 * layer.rank, 16), "top-3 folds to a rank-3r adapter"
    else:
        assert kind == "gather" and a.shape == (rows, 16, 3 * layer.rank), "each row pays for its 3 experts"
    torch.testing.assert_close(layer(x), naive(layer, x, gates), atol=1e-5, rtol=0)


def test_hard_routing_gathers_one_expert_per_row_and_expands_for_beams():
    layer, state = make_layer()
    gates = torch.zeros(3, E)
    gates[0, 6], gates[1, 0], gates[2, 9] = 1.0, 1.0, 0.5  # rows with different single experts
    state.set(gates)
    assert layer._prepare()[0] == "gather"
    x = torch.randn(6, 2, 16)
    torch.testing.assert_close(layer(x), naive(layer, x, gates.repeat_interleave(2, dim=0)), atol=1e-5, rtol=0)


def test_merged_persona_matches_naive_and_unmerge_restores_weights():
    layer, state = make_layer()
    original = layer.base.weight.detach().clone()
    x = torch.randn(2, 3, 16)
    gates = random_gates(1)
    expected = naive(layer, x, gates.expand(2, E))
    layer.merge(gates[0])
    state.set(None)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=0)
    layer.unmerge()
    assert (layer.base.weight - original).abs().max().item() <= 1e-6


def test_zero_gates_and_disabled_are_exactly_the_base():
    layer, state = make_layer()
    x = torch.randn(2, 3, 16)
    base = layer.base(x)
    state.set(torch.zeros(2, E))
    assert torch.equal(layer(x), base)
    state.set(random_gates(2))
    state.enabled = False
    assert torch.equal(layer(x), base)


def test_one_hot_mix_equals_that_single_expert():
    layer, state = make_layer()
    x = torch.randn(1, 3, 16)
    gates = torch.zeros(1, E)
    gates[0, 6] = 1.0  # A+
    state.set(gates)
    a, b = layer.expert_weights(6)
    expected = layer.base(x) + layer.scaling * (x @ a.T @ b.T)
    torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=0)


def test_expanded_batch_reuses_each_rows_gates():
    """generate() with num_return_sequences / beams repeats rows with repeat_interleave."""
    layer, state = make_layer()
    x = torch.randn(2, 3, 16)
    gates = random_gates(2)
    state.set(gates)
    x_expanded = x.repeat_interleave(3, dim=0)
    torch.testing.assert_close(
        layer(x_expanded), naive(layer, x_expanded, gates.repeat_interleave(3, dim=0)), atol=1e-5, rtol=0
    )


def test_gate_change_invalidates_prepared_matrices():
    layer, state = make_layer()
    x = torch.randn(1, 2, 16)
    first, second = random_gates(1, 0), random_gates(1, 1)
    state.set(first)
    layer(x)
    state.set(second)
    torch.testing.assert_close(layer(x), naive(layer, x, second), atol=1e-5, rtol=0)


def test_one_training_step_changes_every_expert_param_and_nothing_frozen():
    layer, state = make_layer()
    layer.base.weight.requires_grad_(False)
    layer.base.bias.requires_grad_(False)
    layer.train()
    frozen = layer.base.weight.detach().clone()
    before_a, before_b = layer.lora_A.detach().clone(), layer.lora_B.detach().clone()
    state.set(torch.full((2, E), 0.1))
    optimizer = torch.optim.SGD([layer.lora_A, layer.lora_B], lr=0.1)
    layer(torch.randn(2, 3, 16)).pow(2).sum().backward()
    optimizer.step()
    assert not torch.equal(layer.lora_A, before_a) and not torch.equal(layer.lora_B, before_b)
    assert (layer.lora_A != before_a).any(dim=1).all(), "every expert's A rows must move"
    assert torch.equal(layer.base.weight, frozen)


def test_gate_state_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"gates must have shape \[batch, 10\]"):
        GateState().set(torch.ones(2, 9))


def test_injected_layers_follow_the_models_eval_mode(tiny_pf):
    from personafuse.moe import persona_layers

    assert not tiny_pf.model.training
    assert all(not layer.training for _, layer in persona_layers(tiny_pf.model))


def test_prepared_matrices_are_reused_across_decode_steps():
    layer, state = make_layer()
    state.set(random_gates(2))
    layer(torch.randn(2, 1, 16))
    prepared = layer._prepared
    layer(torch.randn(2, 1, 16))
    assert layer._prepared is prepared, "gates did not change, so nothing is re-prepared"
