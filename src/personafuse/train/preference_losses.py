"""The maths of stage 3 as pure functions: log-probs, DPO, Bradley–Terry, group advantages, KL estimators.

No models and no I/O: every function takes tensors and returns tensors, and each has a test with hand-picked
numbers (``tests/test_preference_losses.py``). The derivations are in the docstrings.

Notation: ``pi`` is the policy (the routed model being tuned), ``ref`` the reference policy (the same model with
the experts disabled, i.e. the frozen base), ``log pi(y|x)`` the summed log-probability of the reply tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "bradley_terry_loss",
    "completion_logps",
    "dpo_loss",
    "grpo_advantages",
    "kl_k3",
    "masked_mean",
    "pairwise_accuracy",
    "policy_gradient_loss",
    "reinforce_loss",
    "rloo_advantages",
    "token_logps",
]


def token_logps(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Log-probability of each next token: ``out[b, t] = log softmax(logits[b, t])[input_ids[b, t + 1]]``.

    Args:
        logits: [batch, seq, vocab] from a causal LM over ``input_ids``.
        input_ids: [batch, seq].

    Returns:
        [batch, seq - 1]; position ``t`` scores token ``t + 1`` given tokens ``0..t``.
    """
    logits = logits[:, :-1].float()  # [B, T-1, V]
    targets = input_ids[:, 1:]  # [B, T-1]
    # log_softmax(x)[y] = x[y] - logsumexp(x); gathering first avoids a second [B, T-1, V] tensor.
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [B, T-1]
    return picked - torch.logsumexp(logits, dim=-1)


def completion_logps(logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """Summed log-probability of the completion tokens of each row: ``log pi(y | x)``.

    Args:
        logits: [batch, seq, vocab].
        input_ids: [batch, seq], prompt then completion then padding.
        completion_mask: [batch, seq], 1 on completion tokens (never on the first position).

    Returns:
        [batch] float32.
    """
    per_token = token_logps(logits, input_ids)  # [B, T-1]
    return (per_token * completion_mask[:, 1:].to(per_token.dtype)).sum(dim=1)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO loss (Rafailov et al. 2023, eq. 7) and the implicit rewards.

    With the implicit reward ``r(x, y) = beta * (log pi(y|x) - log ref(y|x))`` and the margin
    ``m = r(x, y_w) - r(x, y_l)``, the loss is ``-log sigmoid(m)``; with label smoothing ``eps`` (conservative
    DPO, Mitchell 2023) it is ``-(1 - eps) log sigmoid(m) - eps log sigmoid(-m)``. At ``pi = ref`` every margin is
    0 and the loss is ``log 2``. The gradient pushes ``log pi(y_w)`` up and ``log pi(y_l)`` down with weight
    ``beta * sigmoid(-m)``: pairs the policy already ranks well contribute little.

    Args:
        policy_chosen, policy_rejected, ref_chosen, ref_rejected: [batch] summed log-probs.
        beta: KL strength; larger keeps the policy closer to the reference.
        label_smoothing: assumed probability that a preference label is flipped, in [0, 0.5).

    Returns:
        (loss [batch], chosen reward [batch], rejected reward [batch]); the rewards are detached.
    """
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    margin = chosen_reward - rejected_reward
    loss = -(1.0 - label_smoothing) * F.logsigmoid(margin) - label_smoothing * F.logsigmoid(-margin)
    return loss, chosen_reward.detach(), rejected_reward.detach()


def bradley_terry_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor) -> torch.Tensor:
    """Mean Bradley–Terry loss of a reward model: ``-log sigmoid(s_w - s_l)``.

    Under the Bradley–Terry model ``P(w > l) = sigmoid(s_w - s_l)``, so this is the negative log-likelihood of
    the observed preferences; equal scores give ``log 2``.

    Args:
        chosen_scores, rejected_scores: [batch].

    Returns:
        A scalar.
    """
    return -F.logsigmoid(chosen_scores - rejected_scores).mean()


def pairwise_accuracy(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor) -> float:
    """Fraction of pairs where the chosen item scores strictly higher (ties count as wrong, as in TRL)."""
    if chosen_scores.numel() == 0:
        return float("nan")
    return float((chosen_scores > rejected_scores).float().mean())


def grpo_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """Group-normalised advantages (GRPO, Shao et al. 2024): ``(r_i - mean(group)) / (std(group) + eps)``.

    The ``group_size`` replies to one prompt are consecutive rows. The std is the sample std (Bessel's
    correction), as in TRL's GRPOTrainer; ``scale=False`` keeps only the mean-centering (Dr. GRPO).

    Args:
        rewards: [num_prompts * group_size].
        group_size: replies per prompt (>= 2).
        scale: divide by the group's std.
        eps: keeps a group of identical rewards at advantage 0 instead of 0/0.

    Returns:
        [num_prompts * group_size].

    Raises:
        ValueError: a group size below 2, or rewards that do not split into whole groups.
    """
    grouped = _groups(rewards, group_size)  # [P, G]
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    return centred.flatten()


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out advantages (Ahmadian et al. 2024): ``r_i - mean_{j != i} r_j``.

    Equal to ``G / (G - 1) * (r_i - mean(group))``: an unbiased baseline that does not use the sample itself.

    Args:
        rewards: [num_prompts * group_size], groups consecutive.
        group_size: replies per prompt (>= 2).

    Returns:
        [num_prompts * group_size].
    """
    grouped = _groups(rewards, group_size)  # [P, G]
    others = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - others).flatten()


def _groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 to compare replies to one prompt, got {group_size}")
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards of shape {tuple(rewards.shape)} do not split into groups of {group_size}")
    return rewards.float().view(-1, group_size)  # [P, G]


def kl_k3(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi || ref) estimator k3 (Schulman 2020): ``exp(d) - d - 1`` with ``d = log ref - log pi``.

    For tokens sampled from ``pi``, ``E[exp(d)] = 1``, so the estimator is unbiased for ``KL(pi||ref)``; it is
    always >= 0 (``e^d >= 1 + d``) and 0 exactly where the two log-probs agree. GRPO uses it as its KL term.

    Args:
        logps, ref_logps: per-token log-probs of the sampled tokens, same shape.

    Returns:
        Same shape as the inputs.
    """
    delta = ref_logps - logps
    return torch.exp(delta) - delta - 1.0


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Mean of ``values`` over ``dim`` where ``mask`` is 1 (a row with no kept entry gives 0)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum(dim=dim) / mask.sum(dim=dim).clamp(min=1.0)


def policy_gradient_loss(
    logps: torch.Tensor, ref_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO loss for one on-policy update: per-sequence token mean, then the mean over sequences.

    ``L = mean_i [ mean_t ( -A_i * exp(lp_it - sg(lp_it)) + beta * k3_it ) ]`` where ``sg`` stops the gradient.
    The ratio ``exp(lp - sg(lp))`` equals 1 but has gradient ``grad lp``: with one update per batch of samples
    (TRL's default ``num_iterations=1``) PPO's clipping never triggers, so this is exactly GRPO's objective.

    Args:
        logps: [batch, seq] per-token log-probs of the sampled reply under the policy (with gradient).
        ref_logps: [batch, seq] the same under the reference (no gradient).
        advantages: [batch], one per sequence.
        mask: [batch, seq], 1 on reply tokens.
        beta: KL coefficient (0 drops the term).

    Returns:
        (loss scalar, mean per-sequence KL detached).
    """
    ratio = torch.exp(logps - logps.detach())  # [B, T], == 1
    per_token = -advantages.unsqueeze(1) * ratio  # [B, T]
    kl = kl_k3(logps, ref_logps)  # [B, T]
    if beta:
        per_token = per_token + beta * kl
    loss = masked_mean(per_token, mask).mean()
    return loss, masked_mean(kl.detach(), mask).mean()


def reinforce_loss(sequence_logps: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """REINFORCE on whole sequences (RLOO): ``mean_i -A_i * log pi(y_i | x_i)``.

    In RLOO the KL anchor is folded into the reward before the advantages are taken
    (``r_i - beta * (log pi(y_i) - log ref(y_i))``), so the loss itself has no KL term.

    Args:
        sequence_logps: [batch] summed reply log-probs under the policy (with gradient).
        advantages: [batch] (no gradient).

    Returns:
        A scalar.
    """
    return -(advantages.detach() * sequence_logps).mean()
