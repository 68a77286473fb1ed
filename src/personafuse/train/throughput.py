"""Stage-1 training throughput: ten hard-routed experts vs one plain PEFT LoRA of the same rank.

The issue asks that training all ten experts at once costs about what training a single LoRA costs. Stage-1
batches are hard-routed (each row one pole), so the expert layer takes its gather path (one rank-r LoRA per row,
two batched matmuls); this module measures how close that gets to PEFT's LoRA on the same base, the same batches
and the same optimiser, timing the two interleaved (alternating which goes first) so that drifting load on a
shared machine hits both alike, and reporting medians.

    from personafuse.train.throughput import compare_with_single_lora, corpus_batches
    batches = corpus_batches(pf.tokenizer, records, batch_size=8, max_length=128, count=4)
    result = compare_with_single_lora(pf, batches, steps=10)
    result.ratio            # persona step time / LoRA step time (1.0 = same cost)
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from personafuse.traits import POLES


@dataclass(frozen=True)
class ThroughputResult:
    """Median step times of the two trainings and their ratio."""

    steps: int
    """Timed steps per variant (after the warm-up)."""
    batch_size: int
    """Rows per batch."""
    tokens_per_batch: float
    """Mean non-padding tokens per batch."""
    rank: int
    """LoRA rank of each expert and of the single LoRA."""
    persona_step_s: float
    """Median seconds per optimiser step, ten experts hard-routed."""
    lora_step_s: float
    """Median seconds per optimiser step, one PEFT LoRA."""
    device: str
    """Where it ran."""

    @property
    def ratio(self) -> float:
        """persona_step_s / lora_step_s: 1.0 means the ten experts cost what one LoRA costs."""
        return self.persona_step_s / self.lora_step_s

    @property
    def persona_samples_per_s(self) -> float:
        """Training samples per second with the ten experts."""
        return self.batch_size / self.persona_step_s

    @property
    def lora_samples_per_s(self) -> float:
        """Training samples per second with one LoRA."""
        return self.batch_size / self.lora_step_s

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, with the derived rates."""
        return {**asdict(self), "ratio": self.ratio, "persona_samples_per_s": self.persona_samples_per_s,
                "lora_samples_per_s": self.lora_samples_per_s,
                "persona_tokens_per_s": self.tokens_per_batch / self.persona_step_s,
                "lora_tokens_per_s": self.tokens_per_batch / self.lora_step_s}  # fmt: skip


def corpus_batches(tokenizer: Any, records: Sequence[Any], batch_size: int, max_length: int, count: int,
                   seed: int = 0) -> list[dict[str, torch.Tensor]]:  # fmt: skip
    """``count`` stage-1 batches of hard-routed pole replies (the real stage-1 data, no general mix)."""
    from personafuse.train.expert_data import ExpertCollator, build_expert_data

    data = build_expert_data(records, tokenizer, max_length, seed=seed)
    needed = batch_size * count
    if len(data.samples) < needed:
        raise ValueError(f"{len(data.samples)} samples cannot fill {count} batches of {batch_size}")
    collate = ExpertCollator(tokenizer.pad_token_id)
    return [collate([s.as_features() for s in data.samples[i : i + batch_size]]) for i in range(0, needed, batch_size)]


def synthetic_batches(vocab_size: int, batch_size: int, length: int, count: int, seed: int = 0
                      ) -> list[dict[str, torch.Tensor]]:  # fmt: skip
    """Random full-length batches, each row routed to a different pole in turn (for tiny models and GPUs)."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for index in range(count):
        ids = torch.randint(0, vocab_size, (batch_size, length), generator=generator)  # [B, T]
        poles = (torch.arange(batch_size) + index * batch_size) % len(POLES)  # [B]
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone(),
                        "persona_gates": torch.nn.functional.one_hot(poles, len(POLES)).float()})  # fmt: skip
    return batches


def single_lora_model(pf: Any) -> torch.nn.Module:
    """A second copy of ``pf``'s base with one PEFT LoRA of the experts' rank on the same modules."""
    from peft import LoraConfig, get_peft_model

    from personafuse.models import load_base_model
    from personafuse.moe import persona_layers

    names = [name for name, _ in persona_layers(pf.model)]
    base, _ = load_base_model(pf.config.base, dtype=getattr(torch, pf.config.dtype), device=str(pf.device))
    experts = pf.config.experts
    config = LoraConfig(r=experts.rank, lora_alpha=experts.alpha, lora_dropout=0.0, target_modules=names,
                        bias="none", task_type="CAUSAL_LM")  # fmt: skip
    return get_peft_model(base, config)


def _step_fn(model: torch.nn.Module, optimizer: torch.optim.Optimizer, gates_ctx: Callable[[torch.Tensor], Any] | None
             ) -> Callable[[dict[str, torch.Tensor]], float]:  # fmt: skip
    def step(batch: dict[str, torch.Tensor]) -> float:
        inputs = {k: v for k, v in batch.items() if k != "persona_gates"}
        _sync(model)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        if gates_ctx is not None:
            with gates_ctx(batch["persona_gates"]):
                loss = model(**inputs).loss
                loss.backward()  # inside the gates: recomputation (gradient checkpointing) needs them too
        else:
            loss = model(**inputs).loss
            loss.backward()
        optimizer.step()
        _sync(model)
        return time.perf_counter() - start

    return step


def _sync(model: torch.nn.Module) -> None:
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compare_with_single_lora(pf: Any, batches: Sequence[dict[str, torch.Tensor]], steps: int = 10, warmup: int = 2,
                             lr: float = 1e-4, lora_model: torch.nn.Module | None = None) -> ThroughputResult:  # fmt: skip
    """Time ``steps`` stage-1 optimiser steps of ``pf`` (ten experts) and of one PEFT LoRA, interleaved.

    Each step is zero_grad + forward + backward + AdamW step on the trainable (LoRA) parameters only; both
    models see the same batches in the same order, and each round alternates which goes first.

    Args:
        pf: a ``PersonaFuse``; its experts train (the base is frozen).
        batches: collated batches with ``persona_gates`` [B, 10] (see :func:`corpus_batches`); cycled.
        steps: timed steps per variant.
        warmup: untimed steps per variant first (allocator, kernels, caches).
        lr: AdamW learning rate (the values do not matter for timing, only that the step is real).
        lora_model: the single-LoRA model (default: :func:`single_lora_model` of ``pf``).

    Returns:
        The median step times and their ratio.
    """
    if not batches:
        raise ValueError("no batches to time")
    device = pf.device
    lora_model = lora_model if lora_model is not None else single_lora_model(pf)
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    models = {"persona": pf.model, "lora": lora_model}
    was_training = {name: m.training for name, m in models.items()}
    for model in models.values():
        model.train()
    optimizers = {name: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=lr)
                  for name, m in models.items()}  # fmt: skip
    run = {"persona": _step_fn(pf.model, optimizers["persona"], pf.using_gates),
           "lora": _step_fn(lora_model, optimizers["lora"], None)}  # fmt: skip
    times: dict[str, list[float]] = {"persona": [], "lora": []}
    try:
        for index in range(warmup + steps):
            batch = batches[index % len(batches)]
            order = ("persona", "lora") if index % 2 == 0 else ("lora", "persona")
            for name in order:
                elapsed = run[name](batch)
                if index >= warmup:
                    times[name].append(elapsed)
    finally:
        for name, model in models.items():
            model.train(was_training[name])
    tokens = statistics.fmean(float(b["attention_mask"].sum()) for b in batches)
    return ThroughputResult(
        steps=steps,
        batch_size=int(batches[0]["input_ids"].shape[0]),
        tokens_per_batch=tokens,
        rank=pf.config.experts.rank,
        persona_step_s=statistics.median(times["persona"]),
        lora_step_s=statistics.median(times["lora"]),
        device=str(device),
    )
