"""Fold one fixed persona mix into one ordinary LoRA adapter (exact), for engines that serve one LoRA per request.

A persona layer computes, for a fixed mix ``g`` over the ten experts (each of rank r, scaling s = alpha/r),

    delta(x) = s * sum_e g_e B_e A_e x = B_fold A_fold x

with ``A_fold = [A_e1; A_e2; ...]`` (the active experts' A stacked, [k*r, in]) and
``B_fold = [s g_e1 B_e1, s g_e2 B_e2, ...]`` ([out, k*r]). Written with ``lora_alpha = r_fold = k*r``, PEFT's own
scaling ``lora_alpha / r`` is 1, so plain PEFT (or vLLM, LoRAX) reproduces the mix exactly. Experts with a zero
gate are left out, so the adapter's rank is k*r <= 10*r.
"""

from __future__ import annotations

import torch

from personafuse.traits import POLES

VLLM_MAX_LORA_RANKS: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 320, 512)
"""Values vLLM accepts for ``--max-lora-rank`` (its ``LoRAConfig`` check)."""


def active_experts(gates: torch.Tensor) -> list[int]:
    """Indices of the experts with a non-zero gate, in :data:`POLES` order: ``[0, .7, 0, ..., .3]`` -> ``[1, 9]``.

    Raises:
        ValueError: ``gates`` is not a vector of ten non-negative numbers.
    """
    if gates.dim() != 1 or gates.numel() != len(POLES):
        raise ValueError(f"gates must have shape [{len(POLES)}], got {tuple(gates.shape)}")
    if bool((gates < 0).any()) or not bool(torch.isfinite(gates).all()):
        raise ValueError(f"gates must be finite and >= 0, got {gates.tolist()}")
    return [int(i) for i in (gates != 0).nonzero().flatten()]


def fold_mix(
    lora_a: torch.Tensor, lora_b: torch.Tensor, gates: torch.Tensor, rank: int, scaling: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's ten stacked experts and a fixed mix -> one LoRA pair (A_fold, B_fold) with scaling 1.

    Args:
        lora_a: stacked A [10*r, in]; rows e*r:(e+1)*r belong to expert e.
        lora_b: stacked B [out, 10*r]; columns e*r:(e+1)*r belong to expert e.
        gates: the mix [10], non-negative.
        rank: r, the rank of each expert.
        scaling: alpha / r of the experts.

    Returns:
        (A_fold [k*r, in], B_fold [out, k*r]) over the k active experts, so that
        ``B_fold @ A_fold == scaling * sum_e gates[e] * B_e @ A_e``. With no active expert (all gates 0) the pair
        has rank r and B_fold = 0: the base model, still a valid adapter.
    """
    experts = active_experts(gates)
    if lora_a.shape[0] != len(POLES) * rank or lora_b.shape[1] != len(POLES) * rank:
        raise ValueError(
            f"stacked experts must have {len(POLES)}*{rank} rows of A and columns of B, got A{tuple(lora_a.shape)} "
            f"B{tuple(lora_b.shape)}"
        )
    if not experts:
        return lora_a[:rank].clone(), torch.zeros_like(lora_b[:, :rank])
    index = torch.tensor(experts, device=lora_a.device)
    cols = (index.unsqueeze(1) * rank + torch.arange(rank, device=lora_a.device)).flatten()  # [k*r]
    scale = gates.to(lora_b.device, lora_b.dtype)[index].repeat_interleave(rank) * scaling  # [k*r]
    return lora_a[cols].clone(), lora_b[:, cols] * scale  # [k*r, in], [out, k*r]


def vllm_max_lora_rank(rank: int) -> int:
    """The smallest ``--max-lora-rank`` vLLM accepts that fits an adapter of rank ``rank``.

    Raises:
        ValueError: ``rank`` is above vLLM's largest allowed value.
    """
    for allowed in VLLM_MAX_LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise ValueError(f"adapter rank {rank} exceeds vLLM's largest --max-lora-rank {VLLM_MAX_LORA_RANKS[-1]}")
