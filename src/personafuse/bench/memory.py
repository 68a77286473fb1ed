"""Memory of the base model vs the base with ten experts: resident set size and, on GPU, CUDA allocations."""

from __future__ import annotations

import gc

import torch


def rss_bytes() -> int:
    """Current resident set size of this process."""
    import psutil

    return psutil.Process().memory_info().rss


def expert_memory(pf) -> dict[str, float]:
    """Bytes held by the experts (parameters) and the process RSS / CUDA peak now.

    Measuring base-only RSS in the same process after the experts exist is not possible, so the base is
    accounted from its parameter bytes and the experts from theirs; RSS and CUDA peak are reported as they are.
    """
    gc.collect()
    expert_bytes = sum(p.numel() * p.element_size() for n, p in pf.model.named_parameters() if "lora_" in n)
    base_bytes = sum(p.numel() * p.element_size() for n, p in pf.model.named_parameters() if "lora_" not in n)
    out = {
        "base_param_bytes": float(base_bytes),
        "expert_param_bytes": float(expert_bytes),
        "expert_share_of_params": expert_bytes / max(base_bytes, 1),
        "rss_bytes": float(rss_bytes()),
    }
    if torch.cuda.is_available() and pf.device.type == "cuda":
        out["cuda_max_allocated_bytes"] = float(torch.cuda.max_memory_allocated())
    return out
