"""Export for engines beyond one machine: a merged fixed-persona model, or K folded prototype adapters + a sidecar.

See docs/export.md for serving the result with vLLM.
"""

from personafuse.export.fold import VLLM_MAX_LORA_RANKS, active_experts, fold_mix, vllm_max_lora_rank
from personafuse.export.kmeans import KMeansResult, kmeans, nearest
from personafuse.export.merged import export_merged, merged_state_dict
from personafuse.export.prototypes import (
    Prototype,
    PrototypeExport,
    cluster_gates,
    corpus_contexts,
    export_prototypes,
    save_folded_adapter,
)

__all__ = [
    "VLLM_MAX_LORA_RANKS",
    "KMeansResult",
    "Prototype",
    "PrototypeExport",
    "active_experts",
    "cluster_gates",
    "corpus_contexts",
    "export_merged",
    "export_prototypes",
    "fold_mix",
    "kmeans",
    "merged_state_dict",
    "nearest",
    "save_folded_adapter",
    "vllm_max_lora_rank",
]
