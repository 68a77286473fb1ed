"""The plain-SFT baseline: one ordinary PEFT LoRA trained on every train situation's ideal reply (TRL SFTTrainer).

The evaluation puts PersonaFuse next to it (``personafuse eval TASK --model BASE --adapter FOLDER``): same base,
same LoRA rank, alpha and target modules as one expert, the same general-instruction mix, the same schedule as
stage 1 (the ``experts:`` section, so both see the same number of samples). A gain of the routed mix over this
baseline is then a gain of routing ten experts, not of having seen the corpus.

Unlike stages 1 and 3, nothing here needs per-sample gates, so TRL's ``SFTTrainer`` is used as it is:
prompt-completion rows (the situation's messages, then the ideal reply), loss on the completion only, a
``peft_config``. Resumable: its Trainer checkpoints live in ``<output_dir>/sft_baseline/trainer``.

Output in ``<output_dir>/sft_baseline/``: ``adapter/`` (a PEFT LoRA folder, written atomically), ``metrics.jsonl``,
``losses.png`` and ``result.json``.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from personafuse.train.config import TrainConfig

logger = logging.getLogger(__name__)

STAGE = "sft_baseline"
RESULT_NAME = "result.json"


@dataclass
class SftBaselineResult:
    """What the baseline stage returns and writes to ``result.json``."""

    adapter: str
    """The PEFT LoRA folder."""
    wall_s: float
    """Wall time of the stage."""
    steps: int
    """Optimiser steps taken."""
    train_loss: float
    """Mean training loss."""
    samples: int
    """Training rows: ideal replies + general-instruction rows."""
    general: int
    """General-instruction rows among them."""
    world_size: int = 1
    """Processes that trained."""
    cached: bool = False
    """True when an earlier run had already finished."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def stage_dir(config: TrainConfig) -> Path:
    """``<output_dir>/sft_baseline``."""
    return Path(config.output_dir) / STAGE


def baseline_rows(config: TrainConfig) -> tuple[list[dict[str, Any]], int]:
    """Prompt-completion rows: every train record's messages -> its ideal reply, plus the general mix.

    The general rows are ``data.general_ratio`` of all rows (as in stage 1), drawn with ``seed``.
    """
    from personafuse.data.validate import validate_corpus
    from personafuse.train.expert_data import general_count, read_general

    rows = []
    for record in validate_corpus(config.data.corpus).records:
        if record.split == "train":
            prompt = [{"role": m.role, "content": m.content} for m in record.messages]
            rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": record.ideal}]})
    general: list[dict[str, Any]] = []
    if config.data.general and config.data.general_ratio > 0:
        pairs = read_general(config.data.general)
        count = min(general_count(len(rows), config.data.general_ratio), len(pairs))
        for messages, reply in random.Random(config.seed).sample(pairs, count):
            general.append({"prompt": messages, "completion": [{"role": "assistant", "content": reply}]})
    mixed = rows + general
    random.Random(config.seed).shuffle(mixed)
    return mixed, len(general)


def _sft_config(config: TrainConfig, trainer_dir: Path, progress: bool):
    """Stage 1's schedule (``experts:``) as TRL's ``SFTConfig``, with SFT's own data settings."""
    from trl import SFTConfig

    from personafuse.train.experts_stage import trainer_arguments

    return trainer_arguments(config, trainer_dir, progress, args_class=SFTConfig,
                             remove_unused_columns=True,  # SFTTrainer tokenises prompt/completion itself
                             max_length=config.data.max_length, completion_only_loss=True, packing=False)  # fmt: skip


def check_resumable(config: TrainConfig) -> None:
    """Refuse to resume or reuse a baseline run made with other settings (the pipeline calls it before loading).

    The settings are stage 1's (:func:`~personafuse.train.experts_stage.fingerprint`): model, data, schedule, seed.

    Raises:
        ConfigError: names what changed and the fix (--fresh, or another output folder).
    """
    from personafuse.train.experts_stage import fingerprint, refuse_other_settings

    refuse_other_settings(stage_dir(config), fingerprint(config), "a plain-SFT baseline run")


def finished_result(config: TrainConfig) -> SftBaselineResult | None:
    """The result of an earlier finished run in ``output_dir``, if its adapter is there."""
    folder = stage_dir(config)
    path = folder / RESULT_NAME
    if not path.is_file() or not (folder / "adapter" / "adapter_config.json").is_file():
        return None
    return SftBaselineResult(**{**json.loads(path.read_text()), "cached": True})


def train_sft_baseline(config: TrainConfig, *, fresh: bool = False, progress: bool = True) -> SftBaselineResult:
    """Train the plain-SFT LoRA baseline and save it to ``<output_dir>/sft_baseline/adapter``.

    Args:
        config: the whole training config (uses ``model``, ``data``, ``experts`` as the schedule, ``seed``).
        fresh: delete what an earlier run left in ``<output_dir>/sft_baseline`` and start over.
        progress: show the Trainer's progress bar.

    Raises:
        ConfigError: an earlier run in ``output_dir`` used other settings (see :func:`check_resumable`).
    """
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback, set_seed
    from transformers.trainer_utils import get_last_checkpoint
    from trl import SFTTrainer

    from personafuse.atomic_io import staged_folder
    from personafuse.models import load_base_model
    from personafuse.train.experts_stage import begin_run, record_start
    from personafuse.train.metrics import (
        MetricsLogger,
        plot_losses,
        quiet_trainer_logs,
        write_json_atomic,
    )

    started = time.perf_counter()
    folder = stage_dir(config)
    trainer_dir = folder / "trainer"
    args = _sft_config(config, trainer_dir, progress)  # also sets up the processes under accelerate/torchrun
    begin_run(folder, args.should_save, fresh, lambda: check_resumable(config))
    done = finished_result(config)
    if done is not None:
        return done
    set_seed(config.seed)
    rows, general = baseline_rows(config)
    model, tokenizer = load_base_model(config.model.base, dtype=getattr(torch, config.model.dtype),
                                       device=str(args.device), load_in=config.model.load_in)  # fmt: skip
    experts = config.model.experts
    lora = LoraConfig(r=experts.rank, lora_alpha=experts.alpha, lora_dropout=experts.dropout,
                      target_modules=experts.target_modules, task_type="CAUSAL_LM")  # fmt: skip
    metrics_path = folder / "metrics.jsonl"
    resume = get_last_checkpoint(str(trainer_dir)) if trainer_dir.is_dir() else None
    if args.should_save:
        record_start(folder, config, int(Path(resume).name.rpartition("-")[2]) if resume else None)
    metrics = MetricsLogger(metrics_path, STAGE) if args.should_save else None

    class _Metrics(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if metrics is not None and logs and "loss" in logs:
                metrics.log(state.global_step, loss=float(logs["loss"]), lr=float(logs.get("learning_rate", 0.0)))

    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=lora, callbacks=[_Metrics()])  # fmt: skip
    quiet_trainer_logs(trainer)
    logger.info("sft baseline: %d rows (%d general), resuming from %s", len(rows), general, resume)
    output = trainer.train(resume_from_checkpoint=resume)
    result = SftBaselineResult(adapter=str(folder / "adapter"), wall_s=0.0, steps=trainer.state.global_step,
                               train_loss=float(output.training_loss), samples=len(rows), general=general,
                               world_size=args.world_size)  # fmt: skip
    if args.should_save:
        with staged_folder(folder / "adapter") as tmp:
            trainer.model.save_pretrained(tmp)
        if metrics_path.is_file():
            plot_losses(metrics_path, folder / "losses.png", keys=["loss"])
        result.wall_s = round(time.perf_counter() - started, 2)
        write_json_atomic(folder / RESULT_NAME, result.as_dict())
    trainer.accelerator.wait_for_everyone()
    return result
