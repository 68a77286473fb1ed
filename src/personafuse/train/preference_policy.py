"""Stage 3's policy as one module: the LM with its persona head and router, computing each row's gates and logits.

    gates  = router(head(embedding))  (routing "routed")   or   router(labelled activation)  ("label")   [N, 10]
    logits = LM(tokens) with gates[rows]                    (each token row takes its context's gates)  [R, T, V]
    reference: the same LM with the experts disabled (the exact base), no second copy of the model

Why one module: under ``accelerate launch`` the policy is wrapped by ``Accelerator.prepare`` (DDP), which
all-reduces the gradients of the parameters *inside* the wrapped module that its forward used. The head and
router live beside the LM, so they are submodules here and the gates are computed inside ``forward``: then
the experts' and (with ``preference.train_router``) the head's and router's gradients are all averaged over the
processes. The sentence encoder is frozen and stays outside (its embeddings are computed once, before training).
"""

from __future__ import annotations

from typing import Any

import torch

from personafuse.train.preference_losses import completion_logps

__all__ = ["RoutedPolicy", "example_gates", "policy_logps", "reference_logps", "unwrap_policy"]


def example_gates(pf, embeddings: torch.Tensor, activations: torch.Tensor, routing: str) -> torch.Tensor:
    """Gates [B, 10] of a batch: ``router(head(embedding))`` (routed) or ``router(labelled activation)`` (label).

    Differentiable in the head and router parameters when they require grad and grad mode is on.
    """
    router = pf.persona_router.router
    if routing == "label":
        return router(activations.to(router.weight.device)).float()
    if embeddings.is_inference():  # sentence-transformers encodes under inference_mode; autograd refuses those
        embeddings = embeddings.clone()
    _, activation = pf.persona_router.head(embeddings.to(router.weight.device))
    return router(activation).float()


class RoutedPolicy(torch.nn.Module):
    """The tuned model (LM + persona head + router) as one ``nn.Module`` for ``Accelerator.prepare``.

    The submodules are the PersonaFuse's own (no copies): the optimiser steps, saving and generation still use
    ``pf``. ``pf`` itself is kept as a plain attribute, so the frozen sentence encoder is not part of the module.
    """

    def __init__(self, pf, routing: str) -> None:
        super().__init__()
        self.lm = pf.model
        self.head = pf.persona_router.head
        self.router = pf.persona_router.router
        self.routing = routing
        self.__dict__["pf"] = pf  # not registered: nn.Module would otherwise look for parameters in it

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        embeddings: torch.Tensor | None = None,
        activations: torch.Tensor | None = None,
        rows: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        reference: bool = False,
    ) -> torch.Tensor:
        """Logits [R, T, V] of R token rows, routed per row; or the reference policy's (``reference=True``).

        Args:
            input_ids: [R, T].
            attention_mask: [R, T].
            embeddings: [N, d] sentence embeddings of the N contexts (used by routing "routed").
            activations: [N, 5] labelled activations of the contexts (used by routing "label").
            rows: [R] long, the context of each token row (DPO: ``arange(N)`` twice, chosen rows then rejected
                rows; RL: each prompt's G samples one after another).
            position_ids: [R, T] for left-padded rows (the RL rollouts), else None.
            reference: run with the experts disabled (the exact base model); the caller adds ``no_grad``.

        Returns:
            The LM's logits [R, T, V].
        """
        inputs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
        if position_ids is not None:
            inputs["position_ids"] = position_ids
        if reference:
            with self.pf.experts_disabled():
                return self.lm(**inputs).logits
        if embeddings is None or activations is None or rows is None:
            raise TypeError("RoutedPolicy needs embeddings, activations and rows unless reference=True")
        gates = example_gates(self.pf, embeddings, activations, self.routing)  # [N, 10]
        with self.pf.using_gates(gates[rows.to(gates.device)].to(input_ids.device)):  # [R, 10]
            return self.lm(**inputs).logits


def unwrap_policy(policy: torch.nn.Module) -> RoutedPolicy:
    """The :class:`RoutedPolicy` inside what ``Accelerator.prepare`` returned (DDP wrapper), or itself."""
    from accelerate.utils import extract_model_from_parallel

    inner = extract_model_from_parallel(policy)
    if not isinstance(inner, RoutedPolicy):
        raise TypeError(f"expected a RoutedPolicy (or its accelerate wrapper), got {type(inner).__name__}")
    return inner


def policy_logps(policy: torch.nn.Module, batch: dict[str, torch.Tensor], embeddings: torch.Tensor,
                 activations: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """``log pi(reply | prompt)`` [2B] of a collated pair batch; chosen and rejected rows share their context's gates.

    Args:
        policy: a :class:`RoutedPolicy`, or its accelerate wrapper (the forward then goes through DDP).
        batch: ``input_ids`` / ``attention_mask`` / ``completion_mask`` [2B, T] (chosen rows, then rejected).
        embeddings: [B, d] sentence embeddings of the pairs' contexts.
        activations: [B, 5] labelled activations.
    """
    device = unwrap_policy(policy).pf.device
    batch = {k: v.to(device) for k, v in batch.items()}
    rows = torch.arange(activations.shape[0]).repeat(2)  # [2B]: rows are [chosen..., rejected...]
    logits = policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], embeddings=embeddings,
                    activations=activations, rows=rows)  # fmt: skip
    return completion_logps(logits, batch["input_ids"], batch["completion_mask"])


def reference_logps(policy: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``log ref(reply | prompt)`` [2B] with the experts disabled (the exact base model), without gradient."""
    device = unwrap_policy(policy).pf.device
    batch = {k: v.to(device) for k, v in batch.items()}
    with torch.no_grad():
        logits = policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], reference=True)
        return completion_logps(logits, batch["input_ids"], batch["completion_mask"])
