"""PEFT X-LoRA over the same ten expert adapters: the peer that mixes LoRA experts with a learned gate.

X-LoRA runs a "scaling pass" (the model with adapters off) to compute per-token expert scalings from hidden
states, then the real pass with every adapter applied one after another; its classifier is untrained here,
which does not change its cost. X-LoRA also refuses the KV cache, so it decodes by recomputing the whole
prefix at every token: part of its cost is that design, and the benchmark reports it as it is.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from personafuse.traits import POLES


def build_xlora(pf, workdir: str | Path | None = None):
    """A fresh copy of ``pf``'s base model wrapped by ``peft`` X-LoRA over ``pf``'s ten experts.

    Raises:
        RuntimeError: this PEFT version cannot build X-LoRA for the model (the message says why).
    """
    from peft import XLoraConfig, get_peft_model

    from personafuse.models import load_base_model

    folder = Path(workdir or tempfile.mkdtemp(prefix="personafuse-xlora-"))
    pf.save_pretrained(folder / "ckpt")
    base, _ = load_base_model(pf.config.base, dtype=next(pf.model.parameters()).dtype, device=str(pf.device))
    base.config.use_cache = False  # X-LoRA refuses the KV cache ("`use_cache` must be False")
    config = XLoraConfig(
        task_type="CAUSAL_LM",
        hidden_size=base.config.hidden_size,
        xlora_depth=1,
        # PEFT loads X-LoRA adapters under the names "0".."9" whatever the keys; other keys break its hooks.
        adapters={str(i): str(folder / "ckpt" / "experts" / pole) for i, pole in enumerate(POLES)},
    )
    try:
        model = get_peft_model(base, config)
    except Exception as exc:  # report, do not crash the whole benchmark
        raise RuntimeError(f"peft X-LoRA could not be built: {type(exc).__name__}: {exc}") from exc
    return model.eval()
