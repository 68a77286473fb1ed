"""Stage-2 losses of the persona head and router: pure functions of tensors, no model, no I/O.

    L = w_c · InfoNCE(z, P; activated poles)          # persona embedding close to its activated poles' prototypes
      + w_s · SupCon(z; same activated-pole set)        # trait consistency across the batch
      + w_r · MSE(tanh activation, labels)              # (or smooth L1) the signed activations themselves
      + w_g · KL(target gates || router gates)          # the router's mix follows the labels

Both contrastive terms are the multi-positive form of supervised contrastive learning (Khosla et al. 2020,
"Supervised Contrastive Learning", the L_out variant): each anchor averages the log-probabilities of all its
positives under one softmax, and anchors without a positive are skipped. Every loss is a mean over the anchors
(rows) that take part, so it is independent of how a batch is cut into micro-batches when the loss is computed
over the whole effective batch (see ``router_stage.train_step``).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from personafuse.traits import ACTIVATION_THRESHOLD, POLES, TRAITS

__all__ = [
    "activated_pole_mask",
    "gate_kl",
    "gate_targets",
    "multi_positive_nll",
    "prototype_infonce",
    "regression_loss",
    "router_losses",
    "trait_consistency",
]


def activated_pole_mask(activation: torch.Tensor, threshold: float = ACTIVATION_THRESHOLD) -> torch.Tensor:
    """Which poles each context activates: [batch, 5] signed activations -> [batch, 10] bool in POLES order.

    Pole ``T+`` is activated when a_T >= threshold, ``T-`` when a_T <= -threshold (the 3-class rule of
    :func:`personafuse.traits.trait_class`). Example: a = (0.4, -0.6, 0.8, 0.2, 0.0) activates O+, C-, E+.
    """
    plus = activation >= threshold  # [B, 5]
    minus = activation <= -threshold  # [B, 5]
    return torch.stack([plus, minus], dim=-1).reshape(activation.shape[0], len(POLES))  # [B, 5, 2] -> [B, 10]


def multi_positive_nll(
    logits: torch.Tensor, positives: torch.Tensor, candidates: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row multi-positive negative log-likelihood under one softmax (the SupCon L_out form).

        loss_i = -(1 / |P_i|) · Σ_{p ∈ P_i} log( exp(l_ip) / Σ_{k ∈ C_i} exp(l_ik) )

    Args:
        logits: [batch, K] similarities already divided by the temperature.
        positives: [batch, K] bool, the positives P_i of each row (must be inside the candidates).
        candidates: [batch, K] bool, the entries C_i of each row's softmax (default: all K).

    Returns:
        (loss [batch], has_positive [batch] bool); rows without a positive have loss 0 and must be skipped.
    """
    if candidates is None:
        candidates = torch.ones_like(positives)
    # A large finite negative, not -inf: a row without candidates (a batch of one) would give inf - inf = NaN,
    # and NaN gradients leak through the zero weight of a skipped row.
    masked = logits.masked_fill(~candidates, -1e9)
    log_prob = masked - torch.logsumexp(masked, dim=-1, keepdim=True)  # [B, K]
    log_prob = log_prob.masked_fill(~positives, 0.0)
    count = positives.sum(dim=-1)  # [B]
    loss = -log_prob.sum(dim=-1) / count.clamp_min(1)
    return loss, count > 0


def _mean_over(loss: torch.Tensor, keep: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """Mean of ``loss`` over the kept rows; 0 (still attached to ``anchor``'s graph) when no row is kept."""
    if not bool(keep.any()):
        return anchor.sum() * 0.0
    return loss[keep].mean()


def prototype_infonce(
    z: torch.Tensor, prototypes: torch.Tensor, activation: torch.Tensor, temperature: float
) -> torch.Tensor:
    """InfoNCE between persona embeddings and the ten pole prototypes; positives are the activated poles.

    With s_ip = cos(z_i, P_p) / τ and A_i the activated poles of context i:

        L = mean over {i : A_i ≠ ∅} of  -(1/|A_i|) Σ_{p ∈ A_i} log softmax_p(s_i)

    Contexts with no activated pole are skipped (nothing says which prototype they belong to).

    Hand derivation (the unit test): prototypes = the 10 basis vectors of R^10, z = e_0 (O+), τ = 1, so
    s = (1, 0, ..., 0) and the softmax denominator is e + 9. Positives {O+}: L = -log(e / (e + 9)) =
    log(e + 9) - 1. Positives {O+, C-}: L = -(1/2)(log(e/(e+9)) + log(1/(e+9))) = log(e + 9) - 1/2.

    Args:
        z: [batch, d] persona embeddings (normalised here again, so any scale works).
        prototypes: [10, d] pole prototypes in POLES order (normalised here).
        activation: [batch, 5] signed activation labels.
        temperature: τ > 0.

    Returns:
        Scalar loss.
    """
    logits = F.normalize(z, dim=-1) @ F.normalize(prototypes, dim=-1).T / temperature  # [B, 10]
    loss, keep = multi_positive_nll(logits, activated_pole_mask(activation))
    return _mean_over(loss, keep, z)


def trait_consistency(z: torch.Tensor, activation: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss over the batch: contexts with the same activated-pole set are positives.

    With s_ij = cos(z_i, z_j) / τ, candidates j ≠ i and positives P_i = {j ≠ i : poles(j) = poles(i)} (the
    empty set of poles is a profile too: two neutral contexts are positives):

        L = mean over {i : P_i ≠ ∅} of  -(1/|P_i|) Σ_{j ∈ P_i} log( exp(s_ij) / Σ_{k ≠ i} exp(s_ik) )

    Hand derivation (the unit test): z_1 = z_2 = e_0, z_3 = e_1, τ = 1; contexts 1 and 2 share a profile, 3
    has another. Anchor 1: candidates {2: s = 1, 3: s = 0}, positive 2: -log(e / (e + 1)); anchor 2 the
    same; anchor 3 has no positive and is skipped. L = log(e + 1) - 1 = log(1 + e^-1).

    Args:
        z: [batch, d] persona embeddings (normalised here).
        activation: [batch, 5] signed activation labels.
        temperature: τ > 0.

    Returns:
        Scalar loss (0 when no context has a partner in the batch).
    """
    batch = z.shape[0]
    zn = F.normalize(z, dim=-1)
    logits = zn @ zn.T / temperature  # [B, B]
    poles = activated_pole_mask(activation)  # [B, 10]
    same = (poles[:, None, :] == poles[None, :, :]).all(dim=-1)  # [B, B]
    not_self = ~torch.eye(batch, dtype=torch.bool, device=z.device)
    loss, keep = multi_positive_nll(logits, same & not_self, not_self)
    return _mean_over(loss, keep, z)


def regression_loss(
    predicted: torch.Tensor, target: torch.Tensor, kind: Literal["mse", "smooth_l1"] = "mse", beta: float = 0.1
) -> torch.Tensor:
    """Mean over all traits and contexts of the squared error (or smooth L1 with ``beta``).

    Hand derivation: predicted (0.5, 0), target (0, 0): MSE = (0.25 + 0) / 2 = 0.125; smooth L1 with
    beta 0.1: |0.5| ≥ beta gives 0.5 - beta/2 = 0.45, so (0.45 + 0) / 2 = 0.225.

    Args:
        predicted: [batch, 5] the head's tanh activations.
        target: [batch, 5] labels.
        kind: "mse" or "smooth_l1".
        beta: smooth-L1 switch point from quadratic to linear.
    """
    if kind == "mse":
        return F.mse_loss(predicted, target)
    if kind == "smooth_l1":
        return F.smooth_l1_loss(predicted, target, beta=beta)
    raise ValueError(f"regression kind must be 'mse' or 'smooth_l1', got {kind!r}")


def gate_targets(activation: torch.Tensor, threshold: float = ACTIVATION_THRESHOLD) -> torch.Tensor:
    """The gate distribution the labels call for: activated poles weighted by |a|, others 0.

        t_p = |a_T(p)| · [p activated] / Σ_q |a_T(q)| · [q activated]

    Why this target and not the router's own formula applied to the labels: that would only teach the router
    to copy itself. The labels say which experts the situation calls for and how strongly, so the target puts
    all mass on the activated poles in proportion to |a|; rows without an activated pole are all zero and are
    skipped by :func:`gate_kl`. Example: a = (0.4, -0.6, 0.8, 0.2, 0) -> O+ 0.4/1.8, C- 0.6/1.8, E+ 0.8/1.8.

    Args:
        activation: [batch, 5] signed activation labels.

    Returns:
        [batch, 10] rows summing to 1 (or 0 for contexts with no activated pole).
    """
    strength = activation.abs().repeat_interleave(2, dim=-1)  # [B, 5] -> [B, 10], POLES alternate + / -
    weights = strength * activated_pole_mask(activation, threshold)
    return weights / weights.sum(dim=-1, keepdim=True).clamp_min(1e-12)


def gate_kl(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """KL(target || softmax(logits)), averaged over the rows that have a target.

    Computed on the dense softmax (the router's top-k and intensity are inference settings, not trained).
    Hand derivation: logits all 0 (uniform gates 1/10), target (1/2, 1/2, 0, ...): KL = Σ t log(t / q) =
    2 · 1/2 · log((1/2) / (1/10)) = log 5.

    Args:
        logits: [batch, 10] router logits (already divided by the router temperature).
        targets: [batch, 10] from :func:`gate_targets`.
    """
    keep = targets.sum(dim=-1) > 0  # [B]
    log_q = torch.log_softmax(logits, dim=-1)
    t_log_t = torch.xlogy(targets, targets)  # 0 · log 0 = 0
    kl = (t_log_t - targets * log_q).sum(dim=-1)  # [B]
    return _mean_over(kl, keep, logits)


def router_losses(
    z: torch.Tensor,
    activation: torch.Tensor,
    prototypes: torch.Tensor,
    gate_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    consistency_temperature: float,
    regression: Literal["mse", "smooth_l1"] = "mse",
    w_contrastive: float = 1.0,
    w_consistency: float = 0.5,
    w_regression: float = 1.0,
    w_gates: float = 0.1,
) -> dict[str, torch.Tensor]:
    """All four stage-2 terms and their weighted sum.

    Args:
        z: [batch, d] persona embeddings.
        activation: [batch, 5] the head's tanh activations.
        prototypes: [10, d] pole prototypes.
        gate_logits: [batch, 10] the router's logits (the router reads the head's activation, detached).
        labels: [batch, 5] signed activation labels.
        temperature: InfoNCE temperature.
        consistency_temperature: trait-consistency temperature.
        regression: regression kind.
        w_contrastive: InfoNCE weight.
        w_consistency: trait-consistency weight.
        w_regression: regression weight.
        w_gates: gate KL weight.

    Returns:
        ``{"loss", "loss_infonce", "loss_consistency", "loss_regression", "loss_gates"}`` scalars.
    """
    if labels.shape[-1] != len(TRAITS):
        raise ValueError(f"labels must be [batch, {len(TRAITS)}], got {tuple(labels.shape)}")
    parts = {
        "loss_infonce": prototype_infonce(z, prototypes, labels, temperature),
        "loss_consistency": trait_consistency(z, labels, consistency_temperature),
        "loss_regression": regression_loss(activation, labels, regression),
        "loss_gates": gate_kl(gate_logits, gate_targets(labels)),
    }
    weights = {
        "loss_infonce": w_contrastive,
        "loss_consistency": w_consistency,
        "loss_regression": w_regression,
        "loss_gates": w_gates,
    }
    total = sum(weights[k] * v for k, v in parts.items())
    return {"loss": total, **parts}
