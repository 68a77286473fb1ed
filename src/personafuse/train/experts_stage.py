"""Stage 1 recipe: SFT of the ten persona experts, every sample hard-routed to its pole's expert.

Flat, top to bottom: setup (model, data) -> train (transformers ``Trainer``) -> save (a PersonaFuse checkpoint).

    result = train_experts(load_train_config("configs/smollm2-cpu.yaml"))
    result.checkpoint      # <output_dir>/experts/checkpoint: config.json + experts/<pole>/ + router.safetensors

Layout of ``<output_dir>/experts/``: ``checkpoint/`` (the PersonaFuse checkpoint, written atomically at the end),
``trainer/checkpoint-<step>/`` (resumable Trainer checkpoints: only the experts' weights, optimiser, scheduler,
RNG and trainer state), ``metrics.jsonl``, ``losses.png``, ``fingerprint.json`` (the settings the run was started
with) and ``result.json`` (written last: the stage is done). Rerunning the same command resumes from the newest
complete Trainer checkpoint, or returns the finished result at once.

Why a ``Trainer`` subclass: the gates of a batch are not a model input; the persona layers read them from the
model's shared :class:`~personafuse.moe.GateState`. :class:`PersonaTrainer` therefore pops ``persona_gates`` from
each batch and runs the step inside ``pf.using_gates(gates)``. It wraps ``training_step`` rather than
``compute_loss`` because the backward pass must see the same gates: with gradient checkpointing, the forward is
recomputed during backward, after ``compute_loss`` has returned. It also saves and loads only the trainable
expert weights in Trainer checkpoints (the frozen base would cost its full size at every save).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from personafuse.train.config import TrainConfig, config_to_dict

logger = logging.getLogger(__name__)

STAGE = "experts"
EXPERT_WEIGHTS = "experts_state.safetensors"
"""Trainable weights inside a Trainer checkpoint folder."""
RESULT_NAME = "result.json"
FINGERPRINT_NAME = "fingerprint.json"
NOT_FINGERPRINTED = {"experts": {"logging_steps", "save_steps", "save_total_limit"}}
"""Settings that do not change the trained weights, so a rerun may change them and still resume."""


@dataclass
class ExpertsResult:
    """What stage 1 produced."""

    checkpoint: str
    """The PersonaFuse checkpoint folder."""
    wall_s: float
    """Wall time of this invocation (data + training + saving), in seconds."""
    steps: int
    """Optimiser steps done in total (including those before a resume)."""
    train_loss: float
    """Mean training loss over the run (as the Trainer reports it)."""
    final_loss: float
    """Mean loss of the last logged window."""
    first_loss: float
    """Loss of the first logged window."""
    samples_per_s: float
    """Training samples per second (all processes)."""
    tokens_per_s: float
    """Non-padding tokens per second (all processes)."""
    world_size: int
    """Processes that trained."""
    data: dict[str, int] = field(default_factory=dict)
    """Sample counts (persona, general, per pole, tokens, truncated)."""
    resumed_from: str | None = None
    """The Trainer checkpoint that this invocation resumed from, if any."""
    metrics: str = ""
    """metrics.jsonl path."""
    plot: str = ""
    """losses.png path."""
    cached: bool = False
    """True when the stage had already finished and nothing was trained."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


# ---------------------------------------------------------------------------------------------------- paths / resume
def stage_dir(config: TrainConfig) -> Path:
    """``<output_dir>/experts``."""
    return Path(config.output_dir) / STAGE


def fingerprint(config: TrainConfig) -> dict[str, Any]:
    """The settings that decide stage 1's weights (a rerun with other values must not resume this run)."""
    data = config_to_dict(config)
    out = {key: data[key] for key in ("model", "data", "experts", "seed")}
    out["experts"] = {k: v for k, v in out["experts"].items() if k not in NOT_FINGERPRINTED["experts"]}
    return out


def fingerprint_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ, as ``key: old -> new`` (pure; nested dicts are walked)."""
    changes = []
    for key in sorted(set(old) | set(new)):
        name = f"{prefix}{key}"
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes.extend(fingerprint_changes(a, b, f"{name}."))
        elif a != b:
            changes.append(f"{name}: {a!r} -> {b!r}")
    return changes


def check_resumable(config: TrainConfig) -> None:
    """Refuse to resume a stage-1 run that was started with other settings (call before loading models).

    Raises:
        ConfigError: ``output_dir`` holds a stage-1 run with a different fingerprint; names what changed.
    """
    refuse_other_settings(stage_dir(config), fingerprint(config), "a stage-1 run")


def refuse_other_settings(folder: Path, current: dict[str, Any], what: str) -> None:
    """Raise when ``folder`` holds a run whose ``fingerprint.json`` differs from ``current``; name what changed.

    Raises:
        ConfigError: the one-line message names up to four changed keys and the fix (--fresh or another folder).
    """
    from personafuse.errors import ConfigError

    path = folder / FINGERPRINT_NAME
    if not path.is_file():
        return
    changes = fingerprint_changes(json.loads(path.read_text()), current)
    if changes:
        shown = "; ".join(changes[:4]) + (f"; and {len(changes) - 4} more" if len(changes) > 4 else "")
        raise ConfigError(
            f"{folder} holds {what} started with other settings ({shown}); rerun with --fresh "
            f"to start over there, or choose another --output-dir"
        )


def begin_run(folder: Path, should_save: bool, fresh: bool, check: Any) -> None:
    """Start of a resumable Trainer stage: ``fresh`` deletes ``folder`` (main process), then every rank runs
    ``check()`` (refusing an earlier run made with other settings)."""
    from accelerate import PartialState

    if fresh and should_save and folder.exists():
        shutil.rmtree(folder)
    PartialState().wait_for_everyone()
    check()


def record_start(folder: Path, config: TrainConfig, resumed_step: int | None) -> Path:
    """Main process, before training: write the run's fingerprint and cut ``metrics.jsonl`` to the resumed step.

    A fresh start drops the old rows; a resume keeps the rows up to its checkpoint (later ones are logged again).
    Returns the metrics path.
    """
    from personafuse.data.jsonl import write_jsonl_atomic
    from personafuse.train.metrics import read_metrics, write_json_atomic

    metrics_path = folder / "metrics.jsonl"
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / FINGERPRINT_NAME, fingerprint(config))
    if resumed_step is None:
        metrics_path.unlink(missing_ok=True)
    elif metrics_path.is_file():
        kept = [r for r in read_metrics(metrics_path) if r.get("step", 0) <= resumed_step]
        write_jsonl_atomic(metrics_path, kept)
    return metrics_path


def complete_checkpoints(trainer_dir: Path) -> list[Path]:
    """Trainer checkpoint folders that were written completely, oldest first.

    The Trainer writes ``trainer_state.json`` last, so a folder without it (or without the expert weights) is
    what a kill during saving leaves behind; it is never resumed from.
    """
    if not trainer_dir.is_dir():
        return []
    found = []
    for folder in trainer_dir.glob("checkpoint-*"):
        step = folder.name.rpartition("-")[2]
        if step.isdigit() and (folder / "trainer_state.json").is_file() and (folder / EXPERT_WEIGHTS).is_file():
            found.append((int(step), folder))
    return [folder for _, folder in sorted(found)]


def finished_result(config: TrainConfig) -> ExpertsResult | None:
    """The result of a finished stage-1 run in ``output_dir`` (its checkpoint still present), else None."""
    path = stage_dir(config) / RESULT_NAME
    if not path.is_file():
        return None
    result = ExpertsResult(**json.loads(path.read_text()))
    if not (Path(result.checkpoint) / "config.json").is_file():
        return None
    result.cached = True
    result.resumed_from = None
    return result


# ---------------------------------------------------------------------------------------------------- the trainer
def _trainer_class():
    from transformers import Trainer

    class PersonaTrainer(Trainer):
        """``Trainer`` that routes each batch by its ``persona_gates`` and checkpoints only the experts.

        See the module docstring for why ``training_step`` (not ``compute_loss``) is wrapped.
        """

        def __init__(self, *args: Any, pf: Any, **kwargs: Any) -> None:
            with _experts_count_as_adapters(kwargs["model"]):
                super().__init__(*args, **kwargs)
            self.pf = pf
            self.seen_samples = 0
            self.seen_tokens = 0

        def _gates(self, inputs: dict[str, Any]) -> torch.Tensor:
            gates = inputs.pop("persona_gates")  # [B, 10]
            return gates.to(self.args.device, torch.float32)

        def training_step(self, model, inputs, num_items_in_batch=None):
            inputs = dict(inputs)
            gates = self._gates(inputs)
            self.seen_samples += int(inputs["input_ids"].shape[0])
            self.seen_tokens += int(inputs["attention_mask"].sum())
            with self.pf.using_gates(gates):
                return super().training_step(model, inputs, num_items_in_batch)

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            inputs = dict(inputs)
            with self.pf.using_gates(self._gates(inputs)):
                return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)

        def _trainable_names(self) -> set[str]:
            model = self.accelerator.unwrap_model(self.model)
            return {name for name, param in model.named_parameters() if param.requires_grad}

        def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
            from safetensors.torch import save_file

            output_dir = output_dir or self.args.output_dir
            if not self.args.should_save:
                return
            os.makedirs(output_dir, exist_ok=True)
            if state_dict is None:
                state_dict = self.accelerator.unwrap_model(self.model).state_dict()
            names = self._trainable_names()
            tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items() if k in names}
            tmp = os.path.join(output_dir, f".{EXPERT_WEIGHTS}.tmp")
            save_file(tensors, tmp, metadata={"format": "pt"})
            os.replace(tmp, os.path.join(output_dir, EXPERT_WEIGHTS))

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
            from safetensors.torch import load_file

            from personafuse.errors import ModelLoadError

            path = os.path.join(resume_from_checkpoint, EXPERT_WEIGHTS)
            if not os.path.isfile(path):
                raise ModelLoadError(
                    f"{resume_from_checkpoint} has no {EXPERT_WEIGHTS}; it is not a stage-1 checkpoint"
                )
            tensors = load_file(path)
            target = self.accelerator.unwrap_model(model if model is not None else self.model)
            missing = sorted(self._trainable_names() - set(tensors))
            if missing or set(tensors) - self._trainable_names():
                raise ModelLoadError(
                    f"{path} does not fit this model (missing {missing[:3]}); it was written for other expert "
                    "settings; rerun with --fresh"
                )
            params = dict(target.named_parameters())
            with torch.no_grad():
                for name, value in tensors.items():
                    params[name].copy_(value)

    return PersonaTrainer


def _metrics_callback(metrics_logger: Any, trainer_ref: list[Any]):
    from transformers import TrainerCallback

    class MetricsCallback(TrainerCallback):
        """Write each Trainer log as a metrics row, with samples/s and tokens/s since the previous row."""

        def __init__(self) -> None:
            self.last = (time.perf_counter(), 0, 0)
            self.rows: list[dict[str, Any]] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            trainer = trainer_ref[0]
            now = time.perf_counter()
            then, samples, tokens = self.last
            elapsed = max(now - then, 1e-9)
            row = {k: v for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            if "loss" in row and trainer.seen_samples > samples:
                world = args.world_size
                row["samples_per_s"] = (trainer.seen_samples - samples) * world / elapsed
                row["tokens_per_s"] = (trainer.seen_tokens - tokens) * world / elapsed
                self.last = (now, trainer.seen_samples, trainer.seen_tokens)
            self.rows.append(metrics_logger.log(state.global_step, **row))

    return MetricsCallback()


# ---------------------------------------------------------------------------------------------------- the recipe
def trainer_arguments(config: TrainConfig, trainer_dir: Path, progress: bool, args_class: type | None = None,
                      **overrides: Any):  # fmt: skip
    """Stage 1's Trainer arguments from the ``experts:`` schedule; also the plain-SFT baseline's (same schedule).

    Args:
        args_class: ``TrainingArguments`` (default) or a subclass such as TRL's ``SFTConfig``.
        overrides: arguments that replace or extend the defaults.
    """
    from transformers import TrainingArguments

    args_class = args_class or TrainingArguments
    stage = config.experts
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    # transformers 5 renamed gradient_checkpointing -> activation_checkpointing; use what this version has.
    prefix = "activation" if "activation_checkpointing" in names else "gradient"
    checkpointing = {f"{prefix}_checkpointing": stage.gradient_checkpointing,
                     f"{prefix}_checkpointing_kwargs": {"use_reentrant": False}}  # fmt: skip
    defaults = dict(
        output_dir=str(trainer_dir),
        per_device_train_batch_size=stage.batch_size,
        gradient_accumulation_steps=stage.grad_accum,
        learning_rate=stage.lr,
        num_train_epochs=stage.epochs,
        max_steps=stage.max_steps,
        warmup_steps=stage.warmup_ratio,  # a float < 1 is a ratio of the total steps (transformers >= 5)
        lr_scheduler_type=stage.lr_schedule,
        weight_decay=stage.weight_decay,
        max_grad_norm=stage.max_grad_norm,
        optim="adamw_torch",
        bf16=stage.mixed_precision == "bf16",
        fp16=stage.mixed_precision == "fp16",
        **checkpointing,  # non-reentrant: with a frozen base, reentrant checkpointing would drop the grads
        logging_steps=stage.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=stage.save_steps,
        save_total_limit=stage.save_total_limit,
        seed=config.seed,
        data_seed=config.seed,
        report_to="none",
        remove_unused_columns=False,  # persona_gates is not a model argument; the trainer pops it itself
        dataloader_num_workers=0,
        # Without an accelerator, say so: only then do processes started by torchrun / `accelerate launch
        # --multi_gpu` join one gloo group on the CPU instead of each training alone.
        use_cpu=not (torch.cuda.is_available() or torch.backends.mps.is_available()),
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=not progress,
        ddp_find_unused_parameters=False,  # stacked experts: every tensor gets a (partly zero) gradient
    )
    return args_class(**{**defaults, **overrides})


def build_model(config: TrainConfig, router_weights: str | Path | None = None, device: str | None = None):
    """The PersonaFuse to train: base + ten fresh experts, and trained router weights when there are any.

    The router only routes the general-instruction samples here; it comes from ``router_weights``, else the
    weights the project ships for the encoder, else the zero-shot head.
    """
    import copy

    from personafuse import PersonaFuse
    from personafuse.loading import shipped_router_weights

    pf = PersonaFuse.create(config=copy.deepcopy(config.model), device=device, seed=config.seed)
    weights = Path(router_weights) if router_weights else shipped_router_weights(config.model.encoder)
    if weights is not None:
        pf.persona_router.load(weights)
    return pf


def _experts_count_as_adapters(model: Any):
    """While the Trainer is built, mark a quantised base as carrying trainable adapters.

    Why: ``Trainer.__init__`` refuses a quantised model unless PEFT adapters are attached ("You cannot perform
    fine-tuning on purely quantized models"). The persona experts are such adapters, but not PEFT's, so the check
    does not see them; it looks at ``_hf_peft_config_loaded``, which is set here and restored afterwards. The
    check runs only in ``__init__`` (transformers 5), and the flag changes nothing else of ours: this Trainer
    saves only the experts itself (``_save``).
    """
    import contextlib

    if not getattr(model, "is_quantized", False):
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def marked():
        previous = getattr(model, "_hf_peft_config_loaded", False)
        model._hf_peft_config_loaded = True
        try:
            yield
        finally:
            model._hf_peft_config_loaded = previous

    return marked()


def prepare_quantized_training(pf: Any, gradient_checkpointing: bool) -> None:
    """PEFT's ``prepare_model_for_kbit_training`` for a quantised base, minus its casts: base frozen, input grads.

    The base is already frozen by the injection (only ``lora_A`` / ``lora_B`` train); this checks it and keeps
    bitsandbytes' CPU kernel differentiable (see ``keep_cpu_kernel_trainable``). With gradient checkpointing it
    also makes the embeddings' output require grad, as PEFT does: reentrant checkpointing would otherwise return
    no gradient for blocks whose input comes only from the frozen base (the non-reentrant kind this stage uses
    does not need it, so this is a guard against a changed setting). Unlike PEFT, nothing is upcast to float32:
    the norms and the head stay in ``model.dtype`` and the experts are upcast under mixed precision by
    :func:`_upcast_experts`, which keeps the memory a 4-bit base saves.
    """
    from personafuse.models.quantization import keep_cpu_kernel_trainable

    trainable = [n for n, p in pf.model.named_parameters() if p.requires_grad and ".lora_" not in n]
    assert not trainable, f"base parameters left trainable: {trainable[:3]}"
    keep_cpu_kernel_trainable(pf.model)
    if gradient_checkpointing:
        pf.model.enable_input_require_grads()


def _upcast_experts(pf: Any) -> None:
    """Keep the experts in float32 under mixed precision (autocast runs the matmuls in bf16/fp16)."""
    from personafuse.moe import persona_layers

    for _, layer in persona_layers(pf.model):
        layer.lora_A.data = layer.lora_A.data.float()
        layer.lora_B.data = layer.lora_B.data.float()


def load_training_data(config: TrainConfig, pf: Any):
    """Stage-1 samples from ``data.corpus`` (+ ``data.general``), tokenised for ``pf``'s base."""
    from personafuse.data.validate import validate_corpus
    from personafuse.train.expert_data import build_expert_data, read_general

    records = validate_corpus(config.data.corpus).records
    general = read_general(config.data.general) if config.data.general and config.data.general_ratio > 0 else []

    def route(texts: list[str]) -> torch.Tensor:
        return pf.persona_router.activations_and_gates(texts)[1]  # [n, 10]

    return build_expert_data(records, pf.tokenizer, config.data.max_length, general, config.data.general_ratio,
                             route, seed=config.seed)  # fmt: skip


def train_experts(config: TrainConfig, *, pf: Any = None, data: Any = None, router_weights: str | Path | None = None,
                  fresh: bool = False, progress: bool = True, stop_after_steps: int | None = None) -> ExpertsResult:  # fmt: skip
    """Run stage 1 and save the PersonaFuse checkpoint to ``<output_dir>/experts/checkpoint``.

    Args:
        config: the whole training config (uses ``model``, ``data``, ``experts``, ``seed``, ``output_dir``).
        pf: a ready ``PersonaFuse`` to train (tests); default: built from ``config.model`` by :func:`build_model`.
        data: ready :class:`~personafuse.train.expert_data.ExpertData` (tests); default: read from ``config.data``.
        router_weights: trained head + router for routing the general samples (see :func:`build_model`).
        fresh: delete what an earlier run left in ``<output_dir>/experts`` and start over.
        progress: show the Trainer's progress bar.
        stop_after_steps: stop (as if killed) after this many optimiser steps, without the final save (tests).

    Returns:
        Paths, wall time, losses and throughput.

    Raises:
        ConfigError: an earlier run in ``output_dir`` used other settings (see :func:`check_resumable`).
    """
    from accelerate import PartialState
    from transformers import TrainerCallback, set_seed

    from personafuse.train.expert_data import ExpertCollator, ExpertDataset
    from personafuse.train.metrics import (
        MetricsLogger,
        plot_losses,
        quiet_trainer_logs,
        read_metrics,
        write_json_atomic,
    )

    started = time.perf_counter()
    folder = stage_dir(config)
    trainer_dir = folder / "trainer"
    metrics_path = folder / "metrics.jsonl"
    args = trainer_arguments(config, trainer_dir, progress)  # also sets up the processes under accelerate/torchrun
    processes = PartialState()
    begin_run(folder, args.should_save, fresh, lambda: check_resumable(config))
    done = finished_result(config)
    if done is not None and stop_after_steps is None:
        return done
    set_seed(config.seed)

    # ---- setup
    if pf is None:
        pf = build_model(config, router_weights, device=str(args.device))
    if data is None:
        data = load_training_data(config, pf)
    if config.experts.mixed_precision != "no":
        _upcast_experts(pf)
    if pf.config.load_in is not None:
        prepare_quantized_training(pf, config.experts.gradient_checkpointing)
    pf.model.config.use_cache = False  # no KV cache while training
    resume = complete_checkpoints(trainer_dir)
    resume_from = resume[-1] if resume else None
    if args.should_save:
        step = json.loads((resume_from / "trainer_state.json").read_text())["global_step"] if resume_from else None
        record_start(folder, config, step)
        for partial in trainer_dir.glob("checkpoint-*") if trainer_dir.is_dir() else []:
            if partial not in resume:
                shutil.rmtree(partial, ignore_errors=True)
    processes.wait_for_everyone()

    trainer_ref: list[Any] = []
    callbacks = [_metrics_callback(MetricsLogger(metrics_path, STAGE), trainer_ref)]
    if stop_after_steps is not None:

        class _Stop(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step >= stop_after_steps:
                    raise _Killed

        callbacks.append(_Stop())
    trainer = _trainer_class()(
        model=pf.model,
        args=args,
        data_collator=ExpertCollator(pf.tokenizer.pad_token_id, 8 if torch.cuda.is_available() else None),
        train_dataset=ExpertDataset(data.samples),
        callbacks=callbacks,
        pf=pf,
    )
    trainer_ref.append(trainer)
    quiet_trainer_logs(trainer)

    # ---- train
    logger.info("stage 1: %d samples (%d persona, %d general), resuming from %s", len(data.samples), data.persona,
                data.general, resume_from)  # fmt: skip
    train_started = time.perf_counter()
    try:
        output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except _Killed:
        pf.model.eval()
        return _partial_result(trainer, folder, started)
    train_s = time.perf_counter() - train_started
    pf.model.eval()
    pf.model.config.use_cache = True

    # ---- save
    checkpoint = folder / "checkpoint"
    rows = read_metrics(metrics_path) if args.should_save and metrics_path.is_file() else callbacks[0].rows
    losses = [r["loss"] for r in rows if isinstance(r.get("loss"), (int, float))]
    world = args.world_size
    result = ExpertsResult(
        checkpoint=str(checkpoint),
        wall_s=round(time.perf_counter() - started, 2),
        steps=trainer.state.global_step,
        train_loss=float(output.training_loss),
        final_loss=losses[-1] if losses else float("nan"),
        first_loss=losses[0] if losses else float("nan"),
        samples_per_s=trainer.seen_samples * world / max(train_s, 1e-9),
        tokens_per_s=trainer.seen_tokens * world / max(train_s, 1e-9),
        world_size=world,
        data=data.summary(),
        resumed_from=str(resume_from) if resume_from else None,
        metrics=str(metrics_path),
        plot=str(folder / "losses.png"),
    )
    with _full_params(trainer):  # a collective under FSDP: every rank enters, rank 0 writes
        if args.should_save:
            pf.save_pretrained(checkpoint)
    if args.should_save:
        if metrics_path.is_file():
            plot_losses(metrics_path, folder / "losses.png", keys=["loss"])
        result.wall_s = round(time.perf_counter() - started, 2)
        write_json_atomic(folder / RESULT_NAME, _finite(result.as_dict()))
    trainer.accelerator.wait_for_everyone()
    return result


def _full_params(trainer: Any):
    """Under FSDP, the experts' full (unsharded) weights for saving; elsewhere a no-op.

    Not exercised on this project's CPU test machine: the FSDP path is wired but untested here.
    """
    import contextlib

    if not getattr(trainer, "is_fsdp_enabled", False):
        return contextlib.nullcontext()
    from torch.distributed.fsdp import FullyShardedDataParallel

    return FullyShardedDataParallel.summon_full_params(trainer.model_wrapped, writeback=False, offload_to_cpu=True)


class _Killed(Exception):
    """Raised by the test hook ``stop_after_steps`` to end training the way a kill would."""


def _partial_result(trainer: Any, folder: Path, started: float) -> ExpertsResult:
    return ExpertsResult(checkpoint="", wall_s=time.perf_counter() - started, steps=trainer.state.global_step,
                         train_loss=float("nan"), final_loss=float("nan"), first_loss=float("nan"),
                         samples_per_s=0.0, tokens_per_s=0.0, world_size=trainer.args.world_size,
                         metrics=str(folder / "metrics.jsonl"))  # fmt: skip


def _finite(value: Any) -> Any:
    """NaN/inf -> None so the JSON stays standard."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value
