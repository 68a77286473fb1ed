"""Stage-3 RL step (GRPO or RLOO): sample replies with the routed model, score them, one on-policy update.

    for each prompt: G replies sampled with the prompt's gates (the layer repeats each row's gates G times)
    rewards  = counsel_reward + w * persona_consistency                        (TRL reward signature)
    GRPO     : A = (r - mean_group) / std_group;   loss = -A * ratio + beta * k3(pi, base)   per token
    RLOO     : r' = r - beta * (log pi - log base);  A = r' - mean of the other G-1;  loss = -A * log pi(y)
The reference ("base") log-probs come from the same model inside ``pf.experts_disabled()``. The policy and
reference forwards go through the :class:`~personafuse.train.preference_policy.RoutedPolicy` (or its DDP wrapper
under ``accelerate launch``); sampling uses the unwrapped LM, which needs no gradient and no collective.
"""

from __future__ import annotations

from typing import Any

import torch

from personafuse.train.preference_losses import (
    grpo_advantages,
    kl_k3,
    masked_mean,
    policy_gradient_loss,
    reinforce_loss,
    rloo_advantages,
    token_logps,
)
from personafuse.train.preference_policy import example_gates, unwrap_policy
from personafuse.train.rewards import combine_rewards

__all__ = ["Rollout", "rl_step_loss", "rollout_token_logps", "sample_rollout"]


class Rollout(dict):
    """``sequences`` / ``attention_mask`` / ``completion_mask`` [N*G, T], ``texts`` (N*G replies), ``prompt_len``."""


def sample_rollout(pf, conversations: list[list[dict[str, str]]], gates: torch.Tensor, group_size: int,
                   max_new_tokens: int, temperature: float = 1.0) -> Rollout:  # fmt: skip
    """Sample ``group_size`` replies per conversation (rows of one prompt are consecutive).

    Plain sampling (no top-k / top-p), so the replies are draws from the policy whose log-probs the loss uses.
    """
    inputs = pf.chat_inputs(conversations)  # left-padded [N, P]
    training = pf.model.training
    pf.model.eval()
    try:
        with torch.no_grad(), pf.using_gates(gates.detach()):
            output = pf.model.generate(**inputs, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                                       num_return_sequences=group_size, max_new_tokens=max_new_tokens,
                                       pad_token_id=pf.tokenizer.pad_token_id)  # fmt: skip
    finally:
        pf.model.train(training)
    prompt_len = inputs["input_ids"].shape[1]
    completion = output[:, prompt_len:]  # [N*G, L]
    eos = pf.tokenizer.eos_token_id
    is_eos = completion == eos
    # Keep the tokens up to and including the first end-of-turn; after it generate() only pads.
    after_eos = (is_eos.cumsum(dim=1) - is_eos.long()) > 0  # [N*G, L]
    completion_mask = (~after_eos).long()
    prompt_mask = inputs["attention_mask"].repeat_interleave(group_size, dim=0)  # [N*G, P]
    attention = torch.cat([prompt_mask, completion_mask], dim=1)  # [N*G, P+L]
    full_completion = torch.cat([torch.zeros_like(prompt_mask), completion_mask], dim=1)
    texts = pf.tokenizer.batch_decode(completion.masked_fill(after_eos, pf.tokenizer.pad_token_id),
                                      skip_special_tokens=True)  # fmt: skip
    return Rollout(sequences=output, attention_mask=attention, completion_mask=full_completion, texts=texts,
                   prompt_len=prompt_len)  # fmt: skip


def rollout_token_logps(policy, rollout: Rollout, embeddings: torch.Tensor | None = None,
                        activations: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Per-token log-probs [N*G, T-1] of the sampled sequences: the routed policy given the N prompts'
    ``embeddings`` / ``activations``, or the base (experts disabled, no gradient) when they are None.
    Position ids follow the left padding, as in generate()."""
    mask = rollout["attention_mask"]
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)  # [N*G, T]
    inputs = {"input_ids": rollout["sequences"], "attention_mask": mask, "position_ids": positions}
    if embeddings is None or activations is None:
        with torch.no_grad():
            return token_logps(policy(**inputs, reference=True), rollout["sequences"])
    prompts = activations.shape[0]
    rows = torch.arange(prompts).repeat_interleave(mask.shape[0] // prompts)  # [N*G]: a prompt's samples in a row
    logits = policy(**inputs, embeddings=embeddings, activations=activations, rows=rows)
    return token_logps(logits, rollout["sequences"])


def rl_step_loss(
    policy, examples: list, embeddings: torch.Tensor, activations: torch.Tensor, rewards: dict[str, Any], p
) -> tuple[torch.Tensor, dict[str, float]]:
    """One micro-batch of GRPO / RLOO: sample, score, and the loss (mean over this micro-batch's replies).

    Args:
        policy: the :class:`~personafuse.train.preference_policy.RoutedPolicy`, or its accelerate wrapper.
        examples: the prompts' :class:`~personafuse.train.preference_data.PreferenceExample`.
        embeddings: [N, d] sentence embeddings of the prompts' contexts (routing "routed").
        activations: [N, 5] their labelled activations (routing "label").
        rewards: reward functions by name (``counsel_reward``, ``persona_consistency``).
        p: the :class:`~personafuse.train.config.PreferenceStageConfig`.

    Returns:
        (loss, statistics: mean reward and each reward's mean, KL, reply length).
    """
    pf = unwrap_policy(policy).pf
    with torch.no_grad():  # the sampling gates; the policy forward below recomputes them with gradient
        gates = example_gates(pf, embeddings, activations, p.routing)  # [N, 10]
    group = p.num_generations
    conversations = [e.messages for e in examples]
    rollout = sample_rollout(pf, conversations, gates, group, p.max_new_tokens, p.temperature)
    prompts = [c for c in conversations for _ in range(group)]
    with torch.no_grad():
        routed, _ = pf.persona_router.activations_and_gates([e.context for e in examples])
    activation = routed if p.routing == "routed" else torch.tensor([e.activation for e in examples])
    activation = activation.float().cpu().repeat_interleave(group, dim=0).tolist()
    names = list(rewards)
    scores = [rewards[name](prompts=prompts, completions=rollout["texts"], activation=activation) for name in names]
    weights = [p.w_persona_reward if name == "persona_consistency" else 1.0 for name in names]
    reward = torch.tensor(combine_rewards(scores, weights), dtype=torch.float32)  # [N*G]

    logps = rollout_token_logps(policy, rollout, embeddings, activations)  # [N*G, T-1]
    ref = rollout_token_logps(policy, rollout)
    mask = rollout["completion_mask"][:, 1:].to(logps.device)  # [N*G, T-1]
    kl = masked_mean(kl_k3(logps.detach(), ref), mask).mean()
    if p.method == "grpo":
        advantages = grpo_advantages(reward, group).to(logps.device)
        loss, _ = policy_gradient_loss(logps, ref, advantages, mask, p.beta)
    else:
        sequence = (logps * mask).sum(dim=1)  # [N*G]
        shaped = reward.to(logps.device) - p.beta * (sequence.detach() - (ref * mask).sum(dim=1))
        loss = reinforce_loss(sequence, rloo_advantages(shaped, group))
    stats = {"loss": float(loss.detach()), "reward": float(reward.mean()), "kl": float(kl),
             "reply_tokens": float(mask.sum(dim=1).float().mean())}  # fmt: skip
    for name, values in zip(names, scores):
        stats[name] = sum(values) / len(values)
    return loss, stats
