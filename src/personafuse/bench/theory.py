"""Theoretical cost of the adapters relative to the base: the bound next to each measured ratio.

Per decoded token, a linear layer [in -> out] costs 2·in·out FLOPs and reads in·out weights; a rank-R adapter
adds 2·R·(in + out) FLOPs and R·(in + out) weights. Attention over the KV cache, norms and the output head
are counted for the base only, so the bound is what the adapters alone would allow.
"""

from __future__ import annotations

from torch import nn

from personafuse.moe.inject import persona_layers


def adapter_bounds(model: nn.Module, rank: int, active_experts: dict[str, int]) -> dict[str, dict[str, float]]:
    """Throughput bound (base = 1) per mode.

    Args:
        model: a model with persona layers.
        rank: LoRA rank per expert.
        active_experts: experts whose adapters run per mode, e.g. {"dense": 10, "top3": 3, "merged": 0}.

    Returns:
        {mode: {"bound": base / (base + extra), "adapter_params": extra, "base_params": base}}. Per token,
        FLOPs and weight bytes both scale with these parameter counts (2 FLOPs and one read per weight),
        so one bound serves both while decoding is matmul- or bandwidth-bound.
    """
    adapted = [(layer.in_features, layer.out_features) for _, layer in persona_layers(model)]
    adapted_ids = {id(layer.base) for _, layer in persona_layers(model)}
    other = sum(m.in_features * m.out_features for m in model.modules()
                if isinstance(m, nn.Linear) and id(m) not in adapted_ids)  # fmt: skip
    embed = model.get_input_embeddings()
    tied_head = getattr(model.config, "tie_word_embeddings", False)
    head_cost = embed.weight.numel() if tied_head else 0
    base_weights = sum(i * o for i, o in adapted) + other + head_cost
    lora_per_rank = sum(i + o for i, o in adapted)
    out = {}
    for mode, experts in active_experts.items():
        extra = experts * rank * lora_per_rank
        out[mode] = {
            "bound": base_weights / (base_weights + extra),
            "adapter_params": extra,
            "base_params": base_weights,
        }
    return out
