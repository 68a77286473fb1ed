"""Stage 2: train the persona head and router on the corpus's activation labels. A flat recipe:

    setup   validate the corpus (before any model loads) -> load the frozen encoder -> embed every context once
            (cached under <output_dir>/router/) -> score the zero-shot head and the constant baseline on val
    train   AdamW on head + router; each step: InfoNCE to the pole prototypes + trait consistency + regression
            + gate KL (``router_losses``), over an effective batch of batch_size × grad_accum contexts
    save    a resumable state every epoch (atomic), then router.safetensors, metrics.jsonl, losses.png and
            router_metrics.json (val scores of trained vs zero-shot vs constant; test only with eval_test)

``train_router(config)`` is what ``personafuse train --stage router`` calls. Rerunning it on the same output
folder after a crash resumes from the last finished epoch and ends with the same weights as an unbroken run.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from personafuse.routing import PersonaHead, Router
from personafuse.train.config import RouterStageConfig, TrainConfig, config_to_dict
from personafuse.train.router_losses import router_losses

logger = logging.getLogger(__name__)

__all__ = ["RouterStageResult", "learning_rate", "train_router", "train_step"]

STATE_NAME = "state.pt"
METRICS_NAME = "metrics.jsonl"
PLOT_NAME = "losses.png"
SUMMARY_NAME = "router_metrics.json"

EpochHook = Callable[[int, dict[str, Any]], None]
"""Called as ``(epoch, val_row)`` after each epoch's checkpoint is written (progress display, tests)."""


@dataclass
class RouterStageResult:
    """What stage 2 produced."""

    output_dir: Path
    """``<output_dir>/router``."""
    router_path: Path
    """The trained head + router (``PersonaRouter.load`` reads it)."""
    metrics_path: Path
    """One JSON line per optimiser step and per epoch."""
    plot_path: Path
    """The loss curves."""
    summary_path: Path
    """``router_metrics.json``: the val (and test) scores of trained vs zero-shot vs constant."""
    metrics: dict[str, Any]
    """The content of ``router_metrics.json``."""
    resumed_from_epoch: int
    """0 for a fresh run; else the epoch whose checkpoint the run continued from."""
    wall_s: float
    """Seconds this call took."""


# ---------------------------------------------------------------------------------------------------- the step
def learning_rate(step: int, total_steps: int, lr: float, schedule: str) -> float:
    """The learning rate of optimiser step ``step`` (0-based): constant, or cosine from ``lr`` towards 0."""
    if schedule == "constant" or total_steps <= 1:
        return lr
    return 0.5 * lr * (1.0 + math.cos(math.pi * step / total_steps))


def _loss_kwargs(rc: RouterStageConfig) -> dict[str, Any]:
    return {
        "temperature": rc.temperature,
        "consistency_temperature": rc.consistency_temperature,
        "regression": rc.regression,
        "w_contrastive": rc.w_contrastive,
        "w_consistency": rc.w_consistency,
        "w_regression": rc.w_regression,
        "w_gates": rc.w_gates,
    }


def train_step(
    head: PersonaHead,
    router: Router,
    optimizer: torch.optim.Optimizer,
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    micro_batches: list[torch.Tensor],
    rc: RouterStageConfig,
) -> dict[str, float]:
    """One optimiser step over the micro-batches together (gradient accumulation that keeps contrastive losses exact).

    A contrastive loss over a batch is not a sum of per-micro-batch losses (a batch of one has no positive
    partner), so plain accumulation would change the objective. This is GradCache (Gao et al. 2021,
    arXiv 2101.06983): (1) forward every micro-batch without a graph, (2) compute the loss on the concatenated
    outputs and backpropagate to them (and to the prototypes and router, used only here), (3) forward each
    micro-batch again with a graph and backpropagate the cached output gradients. The parameter gradients equal
    those of one big batch, while only one micro-batch's graph is alive at a time.

    Args:
        head: persona head (trained).
        router: router (trained through the gate loss; it reads the head's activation detached, so the gate
            loss teaches the router to follow the labels without pulling the head's activations).
        optimizer: over head + router parameters; its learning rate is set by the caller.
        embeddings: [n, d] frozen sentence embeddings of all training contexts.
        labels: [n, 5] their activation labels.
        micro_batches: index tensors into ``embeddings``; together they form the effective batch.
        rc: loss temperatures and weights.

    Returns:
        The loss terms of the effective batch as floats.
    """
    optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        outputs = [head(embeddings[idx]) for idx in micro_batches]  # [(z [b, d], a [b, 5])]
    z = torch.cat([o[0] for o in outputs]).requires_grad_(True)  # [B, d]
    activation = torch.cat([o[1] for o in outputs]).requires_grad_(True)  # [B, 5]
    batch_labels = labels[torch.cat(micro_batches)]  # [B, 5]
    losses = router_losses(
        z, activation, head.prototypes, router.logits(activation.detach()), batch_labels, **_loss_kwargs(rc)
    )
    losses["loss"].backward()
    sizes = [len(idx) for idx in micro_batches]
    for idx, z_grad, a_grad in zip(micro_batches, z.grad.split(sizes), activation.grad.split(sizes)):
        z_i, a_i = head(embeddings[idx])
        torch.autograd.backward([z_i, a_i], [z_grad, a_grad])
    optimizer.step()
    return {key: float(value.detach()) for key, value in losses.items()}


def _effective_batches(n: int, rc: RouterStageConfig, seed: int, epoch: int) -> list[list[torch.Tensor]]:
    """This epoch's shuffled effective batches, each cut into micro-batches (a function of seed and epoch only)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=generator)
    size = rc.batch_size * rc.grad_accum
    return [list(order[start : start + size].split(rc.batch_size)) for start in range(0, n, size)]


def _predict(head: PersonaHead, router: Router, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        _, activation = head(embeddings)
        return activation, router(activation)  # [n, 5], [n, 10]


def _scores(activation: torch.Tensor, gates: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    from personafuse.train.router_metrics import activated_gate_mass, score_classes

    out: dict[str, Any] = score_classes(activation.tolist(), labels.tolist())
    out["gate_mass_on_activated"] = activated_gate_mass(gates.tolist(), labels.tolist())
    return out


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run the head's tiny matmuls on one thread.

    Why: a [64, 384] x [384, 256] matmul takes microseconds; with several OpenMP threads on a busy CPU the
    threads' synchronisation dominates (measured 40x slower on 2 shared cores). One thread also makes the
    result independent of the machine's core count.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------------- checkpoint
def _fingerprint(config: TrainConfig) -> dict[str, Any]:
    """The settings a checkpoint must share with the run that resumes it (eval_test only adds a report)."""
    stage = config_to_dict(config.router)
    stage.pop("eval_test")
    model = config.model
    return {
        "router": stage,
        "encoder": model.encoder,
        "head_hidden": model.head_hidden,
        "router_model": config_to_dict(model.router),
        "corpus": str(Path(config.data.corpus).resolve()),
        "seed": config.seed,
    }


def _save_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_state(path: Path, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    from personafuse.errors import ConfigError

    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    stored = state.get("fingerprint", {})
    if stored != fingerprint:
        keys = sorted(k for k in set(stored) | set(fingerprint) if stored.get(k) != fingerprint.get(k))
        raise ConfigError(
            f"{path} was written by a run with other settings ({', '.join(keys)} differ); use another "
            f"output_dir, or delete {path} to start over"
        )
    return state


def _trim_metrics(path: Path, last_step: int) -> None:
    """Drop rows logged after the checkpoint we resume from, so a resumed run's file equals an unbroken one's."""
    from personafuse.data.jsonl import write_jsonl_atomic
    from personafuse.train.metrics import read_metrics

    if path.is_file():
        write_jsonl_atomic(path, [row for row in read_metrics(path) if row.get("step", 0) <= last_step])


# ---------------------------------------------------------------------------------------------------- the recipe
def train_router(config: TrainConfig, on_epoch_end: EpochHook | None = None) -> RouterStageResult:
    """Train the persona head + router (stage 2) and score it on val against the zero-shot and constant baselines.

    Args:
        config: the run; uses ``data.corpus``, ``model.encoder/head_hidden/router``, ``router.*``, ``seed`` and
            ``output_dir`` (outputs go to ``<output_dir>/router/``).
        on_epoch_end: optional hook, see :data:`EpochHook`.

    Returns:
        Paths of the outputs and the scores.

    Raises:
        ConfigError: a bad corpus or a checkpoint from other settings, before any model loads.
        ModelLoadError: the encoder cannot be loaded.
    """
    from personafuse import __version__
    from personafuse.routing import PersonaRouter
    from personafuse.train.metrics import MetricsLogger, plot_losses, write_json_atomic
    from personafuse.train.router_data import cached_embeddings, load_router_examples
    from personafuse.train.router_metrics import majority_classes, score_classes

    started = time.perf_counter()
    rc = config.router
    # ---- setup: everything that can be wrong with the inputs fails here, before the encoder loads
    examples = load_router_examples(config.data.corpus)
    out = Path(config.output_dir) / "router"
    out.mkdir(parents=True, exist_ok=True)
    state_path, metrics_path = out / STATE_NAME, out / METRICS_NAME
    fingerprint = _fingerprint(config)
    state = _load_state(state_path, fingerprint)

    torch.manual_seed(config.seed)
    persona = PersonaRouter.create(config.model.encoder, config.model.router, config.model.head_hidden, "cpu")
    head, router = persona.head, persona.router
    encoder_id = hashlib.sha256(config.model.encoder.encode()).hexdigest()[:12]
    t0 = time.perf_counter()
    embeddings, embedded_now = cached_embeddings(
        persona.embed_texts, [e.text for e in examples], out / f"embeddings-{encoder_id}.safetensors",
        config.model.encoder,
    )  # fmt: skip
    embed_s = time.perf_counter() - t0
    labels = torch.tensor([e.activation for e in examples], dtype=torch.float32)  # [n, 5]
    split_index = {s: torch.tensor([i for i, e in enumerate(examples) if e.split == s], dtype=torch.long)
                   for s in ("train", "val", "test")}  # fmt: skip
    train_x, train_y = embeddings[split_index["train"]], labels[split_index["train"]]
    eval_splits = ["val", "test"] if rc.eval_test and len(split_index["test"]) else ["val"]

    with _one_thread():  # see _one_thread: the head is tiny
        # Baselines, before any training: the untrained head IS the zero-shot router (cosine similarity to the pole
        # descriptions, routing/head.py), and the constant baseline predicts each trait's majority class on train.
        majority = majority_classes(train_y.tolist())
        baselines: dict[str, dict[str, Any]] = {}
        for split in eval_splits:
            x, y = embeddings[split_index[split]], labels[split_index[split]]
            baselines[split] = {
                "zero_shot": _scores(*_predict(head, router, x), y),
                "constant": score_classes([majority] * len(y), y.tolist(), predicted_are_classes=True),
            }

        router_lr = rc.lr if rc.router_lr is None else rc.router_lr
        groups = [{"params": list(head.parameters()), "base_lr": rc.lr},
                  {"params": list(router.parameters()), "base_lr": router_lr}]  # fmt: skip
        optimizer = torch.optim.AdamW(groups, lr=rc.lr, weight_decay=rc.weight_decay)
        steps_per_epoch = len(_effective_batches(len(train_y), rc, config.seed, 0))
        total_steps = steps_per_epoch * rc.epochs
        start_epoch, step = 0, 0
        if state is not None:
            head.load_state_dict(state["head"])
            router.load_state_dict(state["router"])
            optimizer.load_state_dict(state["optimizer"])
            start_epoch, step = int(state["epoch"]), int(state["step"])
            _trim_metrics(metrics_path, step)
            logger.info("resuming stage 2 from epoch %d/%d (%s)", start_epoch, rc.epochs, state_path)
        else:
            metrics_path.unlink(missing_ok=True)
        log = MetricsLogger(metrics_path, "router")

        # ---- train
        t1 = time.perf_counter()
        val_x, val_y = embeddings[split_index["val"]], labels[split_index["val"]]
        for epoch in range(start_epoch, rc.epochs):
            head.train()
            for batch in _effective_batches(len(train_y), rc, config.seed, epoch):
                factor = learning_rate(step, total_steps, 1.0, rc.lr_schedule)
                for group in optimizer.param_groups:
                    group["lr"] = group["base_lr"] * factor
                lr = rc.lr * factor
                losses = train_step(head, router, optimizer, train_x, train_y, batch, rc)
                step += 1
                log.log(step, epoch=epoch + 1, lr=lr, **losses)
            head.eval()
            val = _scores(*_predict(head, router, val_x), val_y)
            with torch.no_grad():
                val_z, val_a = head(val_x)
                val_losses = router_losses(
                    val_z, val_a, head.prototypes, router.logits(val_a), val_y, **_loss_kwargs(rc)
                )
            row = log.log(
                step, epoch=epoch + 1, val_loss=val_losses["loss"], val_loss_regression=val_losses["loss_regression"],
                val_macro_f1=val["mean"]["macro_f1"], val_accuracy=val["mean"]["accuracy"],
                val_gate_mass=val["gate_mass_on_activated"],
            )  # fmt: skip
            _save_state(state_path, {"head": head.state_dict(), "router": router.state_dict(),
                                     "optimizer": optimizer.state_dict(), "epoch": epoch + 1, "step": step,
                                     "fingerprint": fingerprint})  # fmt: skip
            logger.info("router epoch %d/%d: val macro-F1 %.3f", epoch + 1, rc.epochs, val["mean"]["macro_f1"])
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, row)
        train_s = time.perf_counter() - t1

    # ---- save
    head.eval()
    router_path = out / "router.safetensors"
    persona.save(router_path)
    plot_path = plot_losses(metrics_path, out / PLOT_NAME)
    summary: dict[str, Any] = {
        "personafuse_version": __version__,
        "encoder": config.model.encoder,
        "stage_config": config_to_dict(rc),
        "seed": config.seed,
        "corpus": str(config.data.corpus),
        "contexts": {s: len(idx) for s, idx in split_index.items()},
        "majority_classes": majority,
        "epochs": rc.epochs,
        "steps": step,
    }
    with _one_thread():
        for split in eval_splits:
            x, y = embeddings[split_index[split]], labels[split_index[split]]
            summary[split] = {"trained": _scores(*_predict(head, router, x), y), **baselines[split]}
    wall_s = time.perf_counter() - started
    summary["timing_s"] = {"total": round(wall_s, 2), "embed": round(embed_s, 2), "train": round(train_s, 2),
                           "embedded_now": embedded_now}  # fmt: skip
    summary_path = out / SUMMARY_NAME
    write_json_atomic(summary_path, summary)
    return RouterStageResult(out, router_path, metrics_path, plot_path, summary_path, summary,
                             start_epoch, wall_s)  # fmt: skip
