"""Stage 3: preference / RL tuning of the routed model, with a KL anchor to the base. A flat recipe:

    setup   load the checkpoint, the corpus pairs / prompts, precompute the contexts' embeddings, the rewards
    before  greedy replies to val situations -> mean counsel_reward, persona_consistency; DPO accuracy on val
    train   DPO on (ideal, rejected), or GRPO / RLOO on sampled replies, each sample with its own routing
    after   the same report, then ``<output_dir>/preference/checkpoint`` (atomic) + metrics.jsonl + losses.png

Routing per sample: the gates are the router's for the sample's context (``preference.routing=routed``; when
``preference.train_router`` they come from the differentiable head on the precomputed sentence embedding, so
the loss also tunes the head and router), or the record's labelled activation through the router (``label``).
Reference policy: the same model inside ``pf.experts_disabled()`` (the exact base; no second model copy).
Trainable: the ten experts (+ head and router when ``train_router``); the base stays frozen.

Several processes (``accelerate launch``, DDP): the LM, head and router are one module
(:class:`~personafuse.train.preference_policy.RoutedPolicy`) that ``Accelerator.prepare`` wraps with the optimiser,
so the trainable gradients are averaged over the processes. Every process draws the same global indices for a
step and takes its own equal slice of each micro-batch; the loss is scaled so the averaged gradient is the mean
over the whole step's pairs (the same as one process). The before/after report runs on the main process only,
with the unwrapped model; only the main process writes files; all processes wait for each other at the end.
FSDP and DeepSpeed are refused (see :func:`check_preference_config`).

Why not TRL's DPOTrainer / GRPOTrainer (trl 1.16), which this loop otherwise mirrors (loss, batch layout,
on-policy GRPO with one update per batch):

- the reference: with a non-PEFT model and ``ref_model=None`` both trainers load a second copy of the base from
  ``config._name_or_path``; the no-copy path (``use_adapter`` / ``disable_adapter``) exists only for PEFT
  adapters, and the stacked experts are not PEFT modules. ``precompute_ref_log_probs`` would run the policy model,
  with whatever gates the shared state held.
- per-sample routing: the collators keep only their signature columns (``prompt_ids``, ``chosen_ids``, ...), and
  ``_compute_loss`` passes every batch key to ``model(**kwargs)``; GRPO's generation calls ``model.generate``
  (or vLLM) with no hook to set gates. Carrying gates needs a collator, a ``_compute_loss`` override for the policy
  *and* the reference forward, and a generation override.
- router training: the Trainer's optimiser sees ``model.parameters()``; the head and router live beside the LM.
- checkpoints: the Trainer saves the whole HF model (all base weights) and resumes from it, not the
  PersonaFuse format (experts as PEFT folders + router).
Four overrides of private methods would be larger and more fragile than the loop here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from personafuse.train.config import TrainConfig, config_to_dict
from personafuse.train.preference_data import (
    PreferenceExample,
    TokenizedPair,
    collate_pairs,
    load_preference_examples,
    tokenize_pair,
)
from personafuse.train.preference_losses import dpo_loss
from personafuse.train.preference_policy import (
    RoutedPolicy,
    example_gates,
    policy_logps,
    reference_logps,
    unwrap_policy,
)
from personafuse.train.preference_rl import rl_step_loss
from personafuse.train.rewards import RewardContext, build_reward

logger = logging.getLogger(__name__)

__all__ = [
    "PreferenceStageResult",
    "check_preference_config",
    "dpo_batch_loss",
    "dpo_micro_step",
    "evaluate_dpo",
    "evaluate_replies",
    "example_gates",
    "launched_processes",
    "policy_logps",
    "reference_logps",
    "shard",
    "train_preference",
    "trainable_parameters",
]

STAGE = "preference"
STATE_DIR = "state"
FINGERPRINT_SKIP = {"max_steps", "epochs", "save_every", "eval_prompts"}
"""Schedule-only settings: changing them keeps a saved state resumable (the learning rate is constant)."""


@dataclass
class PreferenceStageResult:
    """What stage 3 produced."""

    checkpoint: Path
    """The tuned PersonaFuse checkpoint."""
    method: str
    """dpo, grpo or rloo."""
    steps: int
    """Optimiser steps in total (including steps of a resumed run)."""
    resumed_from: int
    """The step this run resumed from (0: a fresh start)."""
    wall_s: float
    """Wall time of this call."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """before / after reports, the reward model's accuracy, the last training row."""
    metrics_path: Path | None = None
    """metrics.jsonl."""
    plot_path: Path | None = None
    """losses.png."""
    reward_model_path: Path | None = None
    """The reward-model folder used (trained here or given)."""
    world_size: int = 1
    """Processes that trained together (``accelerate launch``); each took 1/world_size of every micro-batch."""


# ---------------------------------------------------------------------------------------------------- validation
def check_preference_config(config: TrainConfig) -> None:
    """Every problem of the stage-3 settings at once, before any model loads.

    Raises:
        ConfigError: one message naming each bad ``preference.*`` / ``data.*`` key, its value and the fix.
    """
    from personafuse.errors import ConfigError

    p = config.preference
    problems: list[str] = []
    if p.method not in ("dpo", "grpo", "rloo"):
        problems.append(f"preference.method={p.method!r}: expected one of ['dpo', 'grpo', 'rloo']")
    for name in ("batch_size", "grad_accum", "save_every", "max_new_tokens"):
        value = getattr(p, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            problems.append(f"preference.{name}={value!r}: expected an integer >= 1")
    if not isinstance(p.max_steps, int) or (p.max_steps < 1 and p.max_steps != -1):
        problems.append(f"preference.max_steps={p.max_steps!r}: expected an integer >= 1, or -1 to run the epochs")
    if p.max_steps == -1 and not p.epochs > 0:
        problems.append(f"preference.epochs={p.epochs!r}: expected > 0 when max_steps is -1")
    if not p.lr > 0:
        problems.append(f"preference.lr={p.lr!r}: expected a number > 0")
    if p.method == "dpo" and not p.beta > 0:
        problems.append(f"preference.beta={p.beta!r}: DPO needs beta > 0 (try 0.1)")
    if not p.beta >= 0:
        problems.append(f"preference.beta={p.beta!r}: expected a number >= 0")
    if not 0 <= p.label_smoothing < 0.5:
        problems.append(f"preference.label_smoothing={p.label_smoothing!r}: expected a number in [0, 0.5)")
    if not p.max_grad_norm >= 0 or not p.w_persona_reward >= 0 or not p.temperature > 0:
        problems.append(
            f"preference.max_grad_norm={p.max_grad_norm!r} / w_persona_reward={p.w_persona_reward!r} must be >= 0 "
            f"and preference.temperature={p.temperature!r} > 0"
        )
    if p.method != "dpo" and (not isinstance(p.num_generations, int) or p.num_generations < 2):
        problems.append(f"preference.num_generations={p.num_generations!r}: {p.method} compares replies; use >= 2")
    if not isinstance(p.eval_prompts, int) or p.eval_prompts < 0:
        problems.append(f"preference.eval_prompts={p.eval_prompts!r}: expected an integer >= 0 (0 skips the report)")
    if p.routing not in ("routed", "label"):
        problems.append(f"preference.routing={p.routing!r}: expected 'routed' or 'label'")
    elif p.routing == "label" and p.train_router:
        problems.append("preference.routing='label' gives the router no gradient; set preference.train_router=false "
                        "or preference.routing=routed")  # fmt: skip
    if not Path(config.data.corpus).exists():
        problems.append(f"data.corpus={config.data.corpus!r}: no such file or folder")
    if p.reward_model is not None and not (Path(p.reward_model) / "config.json").is_file():
        problems.append(f"preference.reward_model={p.reward_model!r}: not a reward-model folder (no config.json)")
    if config.data.counsel_chat is not None and not Path(config.data.counsel_chat).is_file():
        problems.append(f"data.counsel_chat={config.data.counsel_chat!r}: no such file")
    world = launched_processes()
    if isinstance(p.batch_size, int) and p.batch_size >= 1 and p.batch_size % world:
        problems.append(f"preference.batch_size={p.batch_size}: this launch has {world} processes and each takes an "
                        f"equal share of every micro-batch; use a multiple of {world}")  # fmt: skip
    sharded = [
        name for name in ("FSDP", "DEEPSPEED") if os.environ.get(f"ACCELERATE_USE_{name}", "").lower() == "true"
    ]
    if sharded:
        problems.append(f"stage 3 runs on one process or under DDP, not {sharded[0]} (this launch set "
                        f"ACCELERATE_USE_{sharded[0]}=true): its resumable state and main-process report need "
                        "unsharded weights; launch --stage preference with configs/accelerate/ddp.yaml")  # fmt: skip
    if p.method != "dpo" and p.reward_model is None and config.data.counsel_chat is None:
        problems.append(f"preference.method={p.method!r} needs a reward model: set preference.reward_model to a "
                        "trained folder or data.counsel_chat to the CounselChat CSV")  # fmt: skip
    if problems:
        raise ConfigError("invalid preference settings: " + "; ".join(problems))


def launched_processes() -> int:
    """Processes of this launch (``WORLD_SIZE``, set by ``accelerate launch`` / torchrun; 1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


# ---------------------------------------------------------------------------------------------------- building blocks
def trainable_parameters(pf, train_router: bool) -> dict[str, torch.nn.Parameter]:
    """The parameters stage 3 updates: every expert's A and B, plus the head and router when ``train_router``.

    The head's pole prototypes are left out: stage 3's losses do not use them (they shape stage 2's InfoNCE).
    Everything returned has ``requires_grad`` set; every other parameter of the LM and the router is frozen.
    """
    from personafuse.moe import persona_layers

    params: dict[str, torch.nn.Parameter] = {}
    for name, layer in persona_layers(pf.model):
        params[f"experts.{name}.lora_A"] = layer.lora_A
        params[f"experts.{name}.lora_B"] = layer.lora_B
    for prefix, module in (("head", pf.persona_router.head), ("router", pf.persona_router.router)):
        for name, param in module.named_parameters():
            param.requires_grad_(False)
            if train_router and name != "prototypes":
                params[f"{prefix}.{name}"] = param
    for param in params.values():
        param.requires_grad_(True)
    return params


def dpo_batch_loss(policy, batch: dict[str, torch.Tensor], embeddings: torch.Tensor, activations: torch.Tensor,
                   beta: float, label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Per-pair DPO loss [B] of a collated batch, and the chosen / rejected implicit rewards [B].

    ``policy`` is a :class:`~personafuse.train.preference_policy.RoutedPolicy` or its accelerate wrapper; the
    pairs' ``embeddings`` [B, d] / ``activations`` [B, 5] give their gates.
    """
    logps = policy_logps(policy, batch, embeddings, activations)  # [2B]
    reference = reference_logps(policy, batch)  # [2B]
    chosen, rejected = logps.chunk(2)
    ref_chosen, ref_rejected = reference.chunk(2)
    return dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta, label_smoothing)


def dpo_micro_step(policy, pairs: list[TokenizedPair], embeddings: torch.Tensor, activations: torch.Tensor, p,
                   per_step: int) -> tuple[torch.Tensor, dict[str, float]]:  # fmt: skip
    """The loss to backpropagate for one micro-batch, and its statistics.

    The per-pair losses are summed and divided by the pairs this process sees in the whole optimiser step
    (``per_step``), so the accumulated gradient is the mean over the step's pairs whatever the split into
    micro-batches. Under DDP each of W processes passes ``per_step`` = step pairs / W, and DDP averages the W
    gradients: ``(1/W) sum_w (sum of w's losses) / (P/W) = (sum of all P losses) / P``, the one-process gradient.
    """
    batch = collate_pairs(pairs, unwrap_policy(policy).pf.tokenizer.pad_token_id)
    losses, chosen, rejected = dpo_batch_loss(policy, batch, embeddings, activations, p.beta, p.label_smoothing)
    stats = {"loss": float(losses.detach().mean()), "reward_accuracy": float((chosen > rejected).float().mean()),
             "reward_margin": float((chosen - rejected).mean())}  # fmt: skip
    return losses.sum() / per_step, stats


def _routing_inputs(pf, examples: list[PreferenceExample]) -> tuple[torch.Tensor, torch.Tensor]:
    """(sentence embeddings [N, d], labelled activations [N, 5]); the encoder is frozen, so embed once."""
    embeddings = pf.persona_router.embed_texts([e.context for e in examples]) if examples else torch.zeros(0, 1)
    activations = torch.tensor([e.activation for e in examples], dtype=torch.float32).view(-1, 5)
    return embeddings.cpu(), activations


# ---------------------------------------------------------------------------------------------------- reports
def evaluate_dpo(pf, pairs: list[TokenizedPair], embeddings: torch.Tensor, activations: torch.Tensor,
                 routing: str, beta: float, batch_size: int = 4) -> dict[str, float]:  # fmt: skip
    """DPO loss, implicit-reward accuracy (chosen reward > rejected) and mean margin on held-out pairs."""
    if not pairs:
        return {}
    losses, margins = [], []
    pad = pf.tokenizer.pad_token_id
    policy = RoutedPolicy(pf, routing)  # unwrapped: under DDP only the main process reports, with no collective
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            index = slice(start, start + batch_size)
            batch = collate_pairs(pairs[index], pad)
            loss, chosen, rejected = dpo_batch_loss(policy, batch, embeddings[index], activations[index], beta)
            losses.append(loss)
            margins.append(chosen - rejected)
    margin = torch.cat(margins)
    return {"dpo_loss": float(torch.cat(losses).mean()), "dpo_accuracy": float((margin > 0).float().mean()),
            "dpo_margin": float(margin.mean())}  # fmt: skip


def evaluate_replies(pf, examples: list[PreferenceExample], rewards: dict[str, Any], max_new_tokens: int,
                     batch_size: int = 8) -> dict[str, Any]:  # fmt: skip
    """Greedy routed replies to ``examples``: the mean of each reward, mean reply words, three sample replies."""
    if not examples:
        return {}
    replies: list[str] = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        replies.extend(pf.generate([e.messages for e in chunk], max_new_tokens=max_new_tokens, do_sample=False))
    prompts = [e.messages for e in examples]
    report: dict[str, Any] = {"prompts": len(examples)}
    for name, reward in rewards.items():
        values = reward(prompts=prompts, completions=replies)
        report[name] = sum(values) / len(values)
    report["reply_words"] = sum(len(r.split()) for r in replies) / len(replies)
    report["examples"] = [{"id": e.id, "reply": r} for e, r in zip(examples[:3], replies[:3])]
    return report


# ---------------------------------------------------------------------------------------------------- state
def _fingerprint(config: TrainConfig, checkpoint: str | None) -> str:
    settings = config_to_dict(config)
    settings["preference"] = {k: v for k, v in settings["preference"].items() if k not in FINGERPRINT_SKIP}
    payload = json.dumps({"settings": {k: settings[k] for k in ("model", "data", "preference", "seed")},
                          "checkpoint": checkpoint}, sort_keys=True, default=str)  # fmt: skip
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _save_state(folder: Path, step: int, fingerprint: str, params: dict[str, torch.nn.Parameter],
                optimizer: torch.optim.Optimizer, before: dict[str, Any]) -> None:  # fmt: skip
    """Trainable weights + optimiser + step, written into a temp folder and renamed over ``folder``."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in params.items()}, str(tmp / "trainable.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "rng": torch.get_rng_state()}, tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, "fingerprint": fingerprint, "before": before}))
        old = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_state(folder: Path, fingerprint: str) -> dict[str, Any] | None:
    """The saved state's ``state.json`` (None without one).

    Raises:
        ConfigError: the state was written with other settings.
    """
    from personafuse.errors import ConfigError

    if not (folder / "state.json").is_file():
        return None
    info = json.loads((folder / "state.json").read_text())
    if info.get("fingerprint") != fingerprint:
        raise ConfigError(f"{folder} holds a stage-3 run with other settings; delete it to start over, or use "
                          "another output_dir")  # fmt: skip
    return info


def _load_state(folder: Path, fingerprint: str, params: dict[str, torch.nn.Parameter],
                optimizer: torch.optim.Optimizer) -> tuple[int, dict[str, Any]]:  # fmt: skip
    """Restore a saved state; (0, {}) when there is none.

    Raises:
        ConfigError: the state was written with other settings.
    """
    info = _check_state(folder, fingerprint)
    if info is None:
        return 0, {}
    tensors = load_file(str(folder / "trainable.safetensors"))
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(tensors[name].to(param))
    saved = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["rng"])
    return int(info["step"]), dict(info.get("before") or {})


def _trim_metrics(path: Path, through_step: int) -> None:
    """Keep the rows of steps <= ``through_step`` (a killed run may have logged past its last saved state)."""
    from personafuse.data.jsonl import write_jsonl_atomic
    from personafuse.train.metrics import read_metrics

    if path.is_file():
        write_jsonl_atomic(path, [r for r in read_metrics(path) if r.get("step", 0) <= through_step])


# ---------------------------------------------------------------------------------------------------- the recipe
def _sample_indices(step: int, per_step: int, size: int, seed: int) -> list[int]:
    """The dataset indices of optimiser step ``step``: a fresh permutation per epoch, seeded by (seed, epoch)."""
    out = []
    for position in range(step * per_step, (step + 1) * per_step):
        epoch, offset = divmod(position, size)
        order = torch.randperm(size, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        out.append(int(order[offset]))
    return out


def _load_model(config: TrainConfig, checkpoint: str | Path | None, device: str):
    from personafuse import PersonaFuse

    if checkpoint is None:
        logger.info("stage 3 starts from a fresh model (untrained experts): %s", config.model.base)
        return PersonaFuse.create(config=config.model, seed=config.seed, device=device)
    return PersonaFuse.from_pretrained(checkpoint, device=device)


def _accelerator():
    """The run's ``Accelerator`` (one process: no wrapping; under ``accelerate launch``: DDP over the processes).

    Mixed precision is left to the launch (``--mixed_precision`` / the config file), as stage 1's Trainer shares
    the same process-wide accelerate state. That state also holds gradient accumulation, which this loop does
    itself: accelerate's ``backward`` divides the loss by its ``num_steps`` and its optimiser skips steps while
    ``sync_gradients`` is false, so both are set here (stage 1's Trainer may have left other values).
    ``broadcast_buffers=False``: the LM's buffers (rotary frequencies) never change, so DDP's forward needs no
    collective for them.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, GradientAccumulationPlugin

    accelerator = Accelerator(gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=1),
                              kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)])  # fmt: skip
    accelerator.sync_gradients = True
    return accelerator


def shard(items: list, rank: int, world: int) -> list:
    """Process ``rank``'s equal, contiguous slice of a micro-batch (``len(items)`` is a multiple of ``world``)."""
    size = len(items) // world
    return items[rank * size : (rank + 1) * size]


def _mean_over_processes(accelerator, stats: dict[str, float]) -> dict[str, float]:
    """Each statistic averaged over the processes (their micro-batch slices are equal, so this is the step mean)."""
    if accelerator.num_processes == 1 or not stats:
        return stats
    keys = sorted(stats)
    values = torch.tensor([stats[k] for k in keys], dtype=torch.float64, device=accelerator.device)
    return dict(zip(keys, accelerator.reduce(values, reduction="mean").tolist()))


def _reward_setup(config: TrainConfig, pf, folder: Path) -> tuple[dict[str, Any], Path | None, dict[str, Any]]:
    """The rewards by name, the reward-model folder and its metrics (trained on CounselChat when not given)."""
    from personafuse.train.counsel_pairs import load_counsel_pairs
    from personafuse.train.reward_model import RewardModel, RewardModelConfig, train_reward_model

    encoder = pf.persona_router.encoder
    model, path, metrics = None, None, {}
    if config.preference.reward_model is not None:
        path = Path(config.preference.reward_model)
        model = RewardModel.load(path, encoder=encoder if _same_encoder(path, config) else None)
        metrics = model.metrics
    elif config.data.counsel_chat is not None:
        path = folder / "reward_model"
        rm_config = RewardModelConfig(encoder=config.model.encoder, seed=config.seed)
        if (path / "config.json").is_file():
            model = RewardModel.load(path, encoder=encoder)
        else:
            pairs = load_counsel_pairs(config.data.counsel_chat, rm_config.val_percent, rm_config.test_percent)
            model = train_reward_model(pairs, rm_config, encoder, path, folder / "reward_embeddings.pt").model
        metrics = model.metrics
    context = RewardContext(persona_router=pf.persona_router, reward_model=model)
    names = (["counsel_reward"] if model is not None else []) + ["persona_consistency"]
    return {name: build_reward(name, context) for name in names}, path, metrics


def _same_encoder(path: Path, config: TrainConfig) -> bool:
    return json.loads((path / "config.json").read_text()).get("config", {}).get("encoder") == config.model.encoder


def train_preference(
    config: TrainConfig, checkpoint: str | Path | None = None, progress: bool = True
) -> PreferenceStageResult:
    """Run stage 3 on ``checkpoint`` (None: a fresh ``PersonaFuse.create(config.model)``) and save the tuned model.

    Resumable: state is saved every ``preference.save_every`` steps to ``<output_dir>/preference/state``; a rerun
    with the same settings continues from there (and a finished run only re-reports and re-saves).

    Args:
        config: the run's settings (``preference``, ``data``, ``model``, ``output_dir``, ``seed``).
        checkpoint: the PersonaFuse checkpoint to tune (the pipeline passes the newest one).
        progress: show a progress bar over the optimiser steps.

    Returns:
        The tuned checkpoint's path, the before/after report and where the metrics went.

    Raises:
        ConfigError: bad settings (all at once, before any model loads), or a saved state with other settings.
        UserError: an invalid corpus.
    """
    from tqdm.auto import tqdm

    from personafuse.train.metrics import MetricsLogger, plot_losses, write_json_atomic

    started = time.perf_counter()
    check_preference_config(config)
    p = config.preference
    accelerator = _accelerator()
    rank, world, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    folder = Path(config.output_dir) / STAGE
    folder.mkdir(parents=True, exist_ok=True)
    train = load_preference_examples(config.data.corpus, "train")
    val = load_preference_examples(config.data.corpus, "val")[: p.eval_prompts]
    if not train:
        from personafuse.errors import UserError

        raise UserError(f"data.corpus={config.data.corpus!r} has no train-split records for stage 3")

    fingerprint = _fingerprint(config, str(checkpoint) if checkpoint else None)
    _check_state(folder / STATE_DIR, fingerprint)  # refuse a foreign state before loading anything

    torch.manual_seed(config.seed)
    pf = _load_model(config, checkpoint, str(accelerator.device))
    params = trainable_parameters(pf, p.train_router)
    optimizer = torch.optim.AdamW(list(params.values()), lr=p.lr, weight_decay=0.0)
    with accelerator.main_process_first():  # the main process trains and saves the reward model; the others load it
        rewards, reward_path, reward_metrics = _reward_setup(config, pf, folder)
    train_emb, train_act = _routing_inputs(pf, train)
    val_emb, val_act = _routing_inputs(pf, val)

    def tokenize(example: PreferenceExample) -> TokenizedPair:
        return tokenize_pair(pf.tokenizer, example.messages, example.chosen, example.rejected, config.data.max_length)

    val_pairs = [tokenize(e) for e in val]

    start_step, before = _load_state(folder / STATE_DIR, fingerprint, params, optimizer)
    metrics_path = folder / "metrics.jsonl"
    if start_step:
        if main:
            _trim_metrics(metrics_path, start_step)
        logger.info("stage 3 resumes at step %d from %s", start_step, folder / STATE_DIR)
    elif main:
        metrics_path.unlink(missing_ok=True)
        pf.model.eval()
        before = _report(pf, val, val_pairs, val_emb, val_act, rewards, p) if p.eval_prompts else {}
    accelerator.wait_for_everyone()
    # DDP under `accelerate launch` (one process: unchanged). Same parameters, so `params` and `pf` stay valid.
    policy, optimizer = accelerator.prepare(RoutedPolicy(pf, p.routing), optimizer)

    per_step = p.batch_size * p.grad_accum  # pairs / prompts of one optimiser step, over all processes
    total = p.max_steps if p.max_steps > 0 else max(1, math.ceil(p.epochs * len(train) / per_step))
    log = MetricsLogger(metrics_path, STAGE)
    pf.model.train()
    row: dict[str, Any] = {}
    bar = tqdm(total=total, initial=start_step, desc=f"stage 3 ({p.method})", disable=not (progress and main))
    for step in range(start_step, total):
        indices = _sample_indices(step, per_step, len(train), config.seed)  # the same on every process
        optimizer.zero_grad(set_to_none=True)
        stats: dict[str, float] = {}
        for micro in range(p.grad_accum):
            index = shard(indices[micro * p.batch_size : (micro + 1) * p.batch_size], rank, world)
            last = micro + 1 == p.grad_accum  # DDP all-reduces once, in the step's last backward
            with contextlib.nullcontext() if last else accelerator.no_sync(policy):
                if p.method == "dpo":
                    loss, micro_stats = dpo_micro_step(policy, [tokenize(train[i]) for i in index], train_emb[index],
                                                       train_act[index], p, per_step // world)  # fmt: skip
                else:  # the same samples after a resume; each process its own
                    torch.manual_seed(config.seed * 100_003 + step * 131 + micro + rank * 7_919)
                    loss, micro_stats = rl_step_loss(policy, [train[i] for i in index], train_emb[index],
                                                     train_act[index], rewards, p)  # fmt: skip
                    loss = loss / p.grad_accum  # a mean over this process's replies; DDP averages the processes
                accelerator.backward(loss)
            _add(stats, micro_stats, p.grad_accum)
        stats = _mean_over_processes(accelerator, stats)
        if p.max_grad_norm:
            stats["grad_norm"] = float(accelerator.clip_grad_norm_(list(params.values()), p.max_grad_norm))
        optimizer.step()
        row = log.log(step + 1, lr=p.lr, **stats) if main else {"step": step + 1, **stats}
        bar.update(1)
        bar.set_postfix(loss=f"{stats['loss']:.4f}")
        if main and ((step + 1) % p.save_every == 0 or step + 1 == total):
            _save_state(folder / STATE_DIR, step + 1, fingerprint, params, optimizer, before)

    bar.close()
    pf.model.eval()
    target = folder / "checkpoint"
    # The report, the checkpoint and the files: the main process alone, with the unwrapped model (no collective).
    after = _report(pf, val, val_pairs, val_emb, val_act, rewards, p) if main and p.eval_prompts else {}
    metrics = {"before": before, "after": after, "reward_model": reward_metrics, "last": row,
               "train_examples": len(train), "val_examples": len(val)}  # fmt: skip
    plot = None
    if main:
        pf.save_pretrained(target)
        plot = plot_losses(metrics_path, folder / "losses.png") if metrics_path.is_file() else None
        summary = {"method": p.method, "steps": total, "world_size": world, "checkpoint": str(target), **metrics}
        write_json_atomic(folder / "summary.json", summary)
    accelerator.wait_for_everyone()
    return PreferenceStageResult(target, p.method, total, start_step, round(time.perf_counter() - started, 2), metrics,
                                 metrics_path, plot, reward_path, world)  # fmt: skip


def _add(stats: dict[str, float], values: dict[str, float], parts: int) -> None:
    """Average micro-batch statistics over the accumulation steps."""
    for key, value in values.items():
        stats[key] = stats.get(key, 0.0) + value / parts


def _report(pf, val, val_pairs, val_emb, val_act, rewards, p) -> dict[str, Any]:
    report = evaluate_replies(pf, val, rewards, p.max_new_tokens)
    with torch.no_grad():
        report.update(evaluate_dpo(pf, val_pairs, val_emb, val_act, p.routing, p.beta))
    return report
