"""Rewards for stage 3, all with TRL's reward signature: ``reward(prompts, completions, **kwargs) -> list[float]``.

As in ``trl/rewards``, ``prompts`` and ``completions`` are strings or conversations (lists of ``{role, content}``;
a completion is then the list of assistant messages), and extra per-sample columns arrive as keyword arguments.
Rewards that need a model are built from a :class:`RewardContext` by a factory in the registry:

    reward = build_reward("persona_consistency", RewardContext(persona_router=pf.persona_router))
    reward(prompts=["my cat died"], completions=["I'm so sorry."])        # -> [0.83]

| name | what it scores |
|---|---|
| ``counsel_reward`` | the CounselChat reward model's score of (prompt, reply) (:mod:`personafuse.train.reward_model`) |
| ``persona_consistency`` | cosine between the encoder's activation of the reply and the routed activation of the prompt |
| ``persona_consistency_mse`` | the same agreement as ``-mean((a_reply - a_prompt)^2)`` |

Why cosine by default: the prompt's and the reply's activations come from the same head applied to different kinds
of text (a user's situation vs an assistant's reply), whose activations differ in overall magnitude; the cosine
compares the *profile* (which traits, which sign) and ignores that scale. The MSE variant also asks the reply to
match the strength of each trait. A blank reply scores 0 under cosine (no profile) and the MSE of a zero activation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

__all__ = [
    "RewardContext",
    "RewardFn",
    "activation_agreement",
    "available_rewards",
    "build_reward",
    "combine_rewards",
    "completion_text",
    "prompt_text",
    "register_reward",
]

RewardFn = Callable[..., list[float]]
"""``reward(prompts, completions, **kwargs) -> list[float]``, one float per completion."""


@dataclass
class RewardContext:
    """What reward factories may need; each factory checks for the part it uses."""

    persona_router: Any = None
    """A :class:`~personafuse.routing.persona_router.PersonaRouter` (encoder + head + router)."""
    reward_model: Any = None
    """A :class:`~personafuse.train.reward_model.RewardModel`."""


_REGISTRY: dict[str, Callable[[RewardContext], RewardFn]] = {}


def register_reward(name: str) -> Callable[[Callable[[RewardContext], RewardFn]], Callable[[RewardContext], RewardFn]]:
    """Decorator adding a reward factory ``factory(context) -> reward`` under ``name``.

    Raises:
        ValueError: the name is taken.
    """

    def decorate(factory: Callable[[RewardContext], RewardFn]) -> Callable[[RewardContext], RewardFn]:
        if name in _REGISTRY:
            raise ValueError(f"reward {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorate


def available_rewards() -> list[str]:
    """Names of the registered rewards."""
    return sorted(_REGISTRY)


def build_reward(name: str, context: RewardContext) -> RewardFn:
    """The reward function ``name`` bound to the models in ``context``.

    Raises:
        ConfigError: an unknown name (the message lists the known ones), or a context lacking a needed model.
    """
    from personafuse.errors import ConfigError

    if name not in _REGISTRY:
        raise ConfigError(f"unknown reward {name!r}; available: {', '.join(available_rewards())}")
    return _REGISTRY[name](context)


# ---------------------------------------------------------------------------------------------------- pure parts
def prompt_text(prompt: str | Sequence[Mapping[str, str]]) -> str:
    """The text a prompt stands for: a string as is, a conversation's non-system turns joined by newlines."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(str(m.get("content", "")) for m in prompt if m.get("role") != "system")


def completion_text(completion: str | Sequence[Mapping[str, str]]) -> str:
    """The reply text: a string as is, else the contents of the (assistant) messages joined by newlines."""
    if isinstance(completion, str):
        return completion
    return "\n".join(str(m.get("content", "")) for m in completion)


def activation_agreement(
    reply: torch.Tensor, prompt: torch.Tensor, kind: Literal["cosine", "neg_mse"] = "cosine", eps: float = 1e-8
) -> list[float]:
    """Agreement of two signed activation profiles, one score per row.

    - ``cosine``: ``r . p / max(|r| |p|, eps)`` in [-1, 1]; 1 = same traits with the same signs in the same
      proportions, -1 = every trait flipped, 0 when either profile is zero.
    - ``neg_mse``: ``-mean_t (r_t - p_t)^2`` in [-4, 0]; 0 only for identical activations.

    Args:
        reply, prompt: [n, 5] activations in [-1, 1].
        kind: which score.
        eps: guards the cosine of a zero vector.

    Returns:
        n floats.
    """
    if reply.shape != prompt.shape:
        raise ValueError(f"reply activations {tuple(reply.shape)} and prompt activations {tuple(prompt.shape)} differ")
    reply, prompt = reply.float(), prompt.float()
    if kind == "cosine":
        norms = (reply.norm(dim=-1) * prompt.norm(dim=-1)).clamp(min=eps)
        return ((reply * prompt).sum(dim=-1) / norms).tolist()
    if kind == "neg_mse":
        return (-(reply - prompt).pow(2).mean(dim=-1)).tolist()
    raise ValueError(f"kind must be 'cosine' or 'neg_mse', got {kind!r}")


def combine_rewards(per_reward: Sequence[Sequence[float]], weights: Sequence[float]) -> list[float]:
    """Weighted sum over reward functions (TRL's ``reward_weights``): ``sum_k w_k * r_k[i]`` per completion.

    Raises:
        ValueError: a weight count or a reward length that does not match.
    """
    if len(per_reward) != len(weights):
        raise ValueError(f"{len(per_reward)} rewards but {len(weights)} weights")
    if not per_reward:
        return []
    size = len(per_reward[0])
    if any(len(r) != size for r in per_reward):
        raise ValueError(f"rewards of different lengths {[len(r) for r in per_reward]}")
    return [sum(w * r[i] for w, r in zip(weights, per_reward)) for i in range(size)]


# ---------------------------------------------------------------------------------------------------- registry
def _need(context: RewardContext, attribute: str, reward: str, how: str) -> Any:
    from personafuse.errors import ConfigError

    value = getattr(context, attribute)
    if value is None:
        raise ConfigError(f"reward {reward!r} needs a {attribute}; {how}")
    return value


@register_reward("counsel_reward")
def _counsel_reward(context: RewardContext) -> RewardFn:
    model = _need(context, "reward_model", "counsel_reward",
                  "set preference.reward_model to a trained folder or data.counsel_chat to the CSV")  # fmt: skip

    def counsel_reward(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        """Score of the CounselChat reward model (higher = more likely upvoted by readers)."""
        return model.score([prompt_text(p) for p in prompts], [completion_text(c) for c in completions]).tolist()

    return counsel_reward


def _reply_activations(persona_router: Any, texts: list[str]) -> torch.Tensor:
    """Head activations [n, 5] of reply texts (blank texts give zeros)."""
    out = torch.zeros(len(texts), 5)
    keep = [i for i, t in enumerate(texts) if t.strip()]
    if keep:
        with torch.no_grad():
            _, activation = persona_router.head(persona_router.embed_texts([texts[i] for i in keep]))
        out[keep] = activation.float().cpu()
    return out


def _persona_factory(kind: Literal["cosine", "neg_mse"], name: str) -> Callable[[RewardContext], RewardFn]:
    def factory(context: RewardContext) -> RewardFn:
        router = _need(context, "persona_router", name, "pass the model's persona_router in the RewardContext")

        def persona_consistency(prompts: Sequence[Any], completions: Sequence[Any], activation: Any = None,
                                **kwargs: Any) -> list[float]:  # fmt: skip
            """Agreement of the reply's activation with the prompt's routed one (``activation`` column if given)."""
            if activation is None:
                prompt_act, _ = router.activations_and_gates([prompt_text(p) for p in prompts])
            else:
                prompt_act = torch.as_tensor(activation, dtype=torch.float32)
            reply_act = _reply_activations(router, [completion_text(c) for c in completions])
            return activation_agreement(reply_act, prompt_act.float().cpu().view(-1, 5), kind)

        persona_consistency.__name__ = name
        return persona_consistency

    return factory


register_reward("persona_consistency")(_persona_factory("cosine", "persona_consistency"))
register_reward("persona_consistency_mse")(_persona_factory("neg_mse", "persona_consistency_mse"))
