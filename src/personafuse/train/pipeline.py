"""The training pipeline: validate everything, then run the chosen stages in order, then write a run summary.

    config = load_train_config("configs/smollm2-cpu.yaml", ["experts.lr=1e-4"])
    validate_run(config, ["experts", "router", "preference"])   # all data problems, before any model loads
    summary = run_pipeline(config, ["experts", "router", "preference"])

How the stages hand over (each is a flat recipe in its own module):

- ``experts`` (:func:`personafuse.train.experts_stage.train_experts`) writes ``<output_dir>/experts/checkpoint``.
- ``router`` (``personafuse.train.router_stage.train_router(config)``) returns a result whose ``router_path`` is a
  ``router.safetensors``; the pipeline composes ``<output_dir>/checkpoint`` = the experts checkpoint with that
  router. When the router stage runs first, stage 1 routes its general-instruction samples with it.
- ``preference`` (``personafuse.train.preference_stage.train_preference(config, checkpoint)``) tunes the newest
  checkpoint and returns a result whose ``checkpoint`` is the tuned one.

The run's outputs: ``<output_dir>/config.yaml`` (the resolved config, written before training starts), each
stage's folder, ``<output_dir>/checkpoint`` (the newest full checkpoint) and ``<output_dir>/summary.json``.
Under ``accelerate launch`` every process runs the stages; only the main one writes shared files.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

from personafuse.train.config import KNOWN_STAGES, TrainConfig, config_to_dict

logger = logging.getLogger(__name__)

STAGE_MODULES: dict[str, tuple[str, str]] = {
    "experts": ("personafuse.train.experts_stage", "train_experts"),
    "router": ("personafuse.train.router_stage", "train_router"),
    "preference": ("personafuse.train.preference_stage", "train_preference"),
    "sft_baseline": ("personafuse.train.sft_baseline_stage", "train_sft_baseline"),
}
"""Stage name -> (module, function). A stage whose module is not there yet is reported as unavailable."""
CHECKPOINT_DIR = "checkpoint"
SUMMARY_NAME = "summary.json"
CONFIG_NAME = "config.yaml"


@dataclass
class StageSummary:
    """One stage's line of the run summary."""

    stage: str
    """experts, router or preference."""
    status: str
    """"trained", or "cached" when an earlier run had already finished it."""
    wall_s: float
    """Wall time of the stage in this run."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """The stage's numbers (losses, throughput, scores)."""
    paths: dict[str, str] = field(default_factory=dict)
    """The files and folders it wrote."""


@dataclass
class RunSummary:
    """What ``personafuse train`` prints and writes to ``summary.json``."""

    output_dir: str
    """Where everything went."""
    stages: list[StageSummary]
    """One entry per stage, in run order."""
    checkpoint: str | None
    """The newest full checkpoint (experts + router [+ preference tuning])."""
    config: str
    """The resolved config that was saved."""
    wall_s: float
    """Wall time of the whole run."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


# ---------------------------------------------------------------------------------------------------- config files
def config_search_dirs() -> list[Path]:
    """Where ``--config NAME`` looks: ``./configs`` and the ``configs/`` of the source checkout."""
    here = Path.cwd() / "configs"
    source = Path(__file__).resolve().parents[3] / "configs"
    return [here] + ([source] if source != here else [])


def resolve_config_path(name: str) -> Path:
    """A YAML path, or a config name (``smollm2-cpu``) found in :func:`config_search_dirs`.

    Raises:
        FileNotFoundError: neither; the message lists the configs that exist.
    """
    path = Path(name).expanduser()
    if path.is_file():
        return path
    stem = name[:-5] if name.endswith(".yaml") else name
    for folder in config_search_dirs():
        candidate = folder / f"{stem}.yaml"
        if candidate.is_file():
            return candidate
    known = sorted({p.stem for d in config_search_dirs() if d.is_dir() for p in d.glob("*.yaml")})
    raise FileNotFoundError(
        f"--config {name!r}: no such file or config name; known configs: {', '.join(known) or 'none'}"
    )


def stage_available(stage: str) -> bool:
    """True when the stage's module can be imported."""
    module, _ = STAGE_MODULES[stage]
    return importlib.util.find_spec(module) is not None


def stage_function(stage: str) -> Callable[..., Any]:
    """The stage's entry point.

    Raises:
        ConfigError: the stage is not available yet.
    """
    from personafuse.errors import ConfigError

    module, name = STAGE_MODULES[stage]
    if not stage_available(stage):
        raise ConfigError(f"stage {stage!r} is not available yet ({module} is not written); run the other stages")
    return getattr(importlib.import_module(module), name)


def stages_to_run(stage: str, config: TrainConfig) -> list[str]:
    """``--stage all`` -> ``config.stages``; else the one named stage.

    Raises:
        ConfigError: an unknown stage name.
    """
    from personafuse.errors import ConfigError

    if stage == "all":
        return list(config.stages)
    if stage not in KNOWN_STAGES:
        raise ConfigError(f"--stage {stage!r}: expected one of {', '.join(KNOWN_STAGES)} or all")
    return [stage]


# ---------------------------------------------------------------------------------------------------- validation
def _model_problem(key: str, name: str, aliases: dict[str, Any]) -> str | None:
    """Cheap checks of a model name (no loading): an alias's wheel is installed, a local path exists."""
    from personafuse.errors import ModelLoadError
    from personafuse.models.aliases import wheel_file

    if name in aliases:
        try:
            wheel_file(aliases[name])
        except ModelLoadError as exc:
            return f"{key}={name!r}: {exc}"
        return None
    if name.startswith((".", "/", "~")) and not Path(name).expanduser().exists():
        return f"{key}={name!r}: no such folder; expected an alias ({', '.join(aliases)}), a local model folder or a hub id"
    return None


def _corpus_problems(corpus: str) -> tuple[list[str], list[Any]]:
    """Problems that stop training (unreadable records) and the valid records."""
    from personafuse.data.validate import corpus_files, validate_corpus

    try:
        files = corpus_files(corpus)
    except FileNotFoundError:
        return [f"data.corpus={corpus!r}: no such JSONL file or folder of *.jsonl (schema: docs/data.md)"], []
    report = validate_corpus(corpus)
    lines = sum(1 for f in files for raw in f.read_text(encoding="utf-8").splitlines() if raw.strip())
    dropped = lines - len(report.records)
    if dropped:
        first = next((p for p in report.problems), "")
        return [f"data.corpus={corpus!r}: {dropped} record(s) are unreadable or lack needed fields, first: {first}; "
                "check with `personafuse data validate`"], report.records  # fmt: skip
    for problem in report.problems:  # duplicates / leakage / split drift: the records still train
        logger.warning("data.corpus: %s", problem)
    return [], report.records


def validate_run(config: TrainConfig, stages: Sequence[str], fresh: bool = False) -> None:
    """Check everything the chosen stages need before any model loads; raise all problems at once.

    Checks: stage names and availability; the base and encoder names (aliases installed, local paths present);
    bitsandbytes installed when ``model.load_in`` quantises the base;
    ``data.corpus`` readable with train records; ``data.general`` with the needed fields; each stage module's
    own ``check_<stage>_config(config)`` when it has one; an earlier run of a stage in ``output_dir`` made with the
    same settings.

    Raises:
        ConfigError: one message listing every problem, each naming its key and what is expected.
    """
    from personafuse.errors import ConfigError
    from personafuse.models.aliases import BASE_ALIASES, ENCODER_ALIASES
    from personafuse.models.quantization import check_bitsandbytes

    problems: list[str] = []
    unknown = [s for s in stages if s not in KNOWN_STAGES]
    if unknown:
        problems.append(f"stages={list(stages)!r}: expected names from {', '.join(KNOWN_STAGES)}")
    if not stages:
        problems.append(f"stages=[]: expected at least one of {', '.join(KNOWN_STAGES)}")
    for stage in stages:
        if stage in STAGE_MODULES and not stage_available(stage):
            problems.append(f"stage {stage!r} is not available yet ({STAGE_MODULES[stage][0]} is not written); "
                            "run --stage experts (or the stages that exist)")  # fmt: skip
    for problem in (_model_problem("model.base", config.model.base, BASE_ALIASES),
                    _model_problem("model.encoder", config.model.encoder, ENCODER_ALIASES),
                    check_bitsandbytes(config.model.load_in, "model.load_in")):  # fmt: skip
        if problem:
            problems.append(problem)
    corpus_problems, records = _corpus_problems(config.data.corpus)
    problems.extend(corpus_problems)
    splits = {r.split for r in records}
    if records and "train" not in splits and set(KNOWN_STAGES) & set(stages):
        problems.append(f"data.corpus={config.data.corpus!r}: no record has split 'train'; training needs some")
    if {"experts", "sft_baseline"} & set(stages) and config.data.general and config.data.general_ratio > 0:
        problems.extend(_general_problems(config.data.general))
    for stage in stages:  # a stage module's own up-front checks: check_<stage>_config(config) raising ConfigError
        check = _stage_check(stage)
        if check is not None:
            try:
                check(config)
            except ConfigError as exc:
                problems.append(str(exc))
    for stage in stages if not fresh else ():  # an earlier run in output_dir made with other settings
        check = _stage_check(stage, "check_resumable")
        if check is not None:
            try:
                check(config)
            except ConfigError as exc:
                problems.append(str(exc))
    if problems:
        raise ConfigError("invalid training run: " + "; ".join(problems))


def _stage_check(stage: str, name: str | None = None) -> Callable[[TrainConfig], None] | None:
    """The stage module's ``check_<stage>_config`` (or the function ``name``), if it has one."""
    if stage not in STAGE_MODULES or not stage_available(stage):
        return None
    module = importlib.import_module(STAGE_MODULES[stage][0])
    return getattr(module, name or f"check_{stage}_config", None)


def _general_problems(path: str) -> list[str]:
    from personafuse.data.jsonl import JsonlError
    from personafuse.errors import ConfigError
    from personafuse.train.expert_data import read_general

    if not Path(path).is_file():
        return [f"data.general={path!r}: no such JSONL file; give a question/answer JSONL (e.g. GSM8K train) or null"]
    try:
        read_general(path)
    except (ConfigError, JsonlError) as exc:
        return [f"data.general: {exc}" if not str(exc).startswith("data.general") else str(exc)]
    return []


# ---------------------------------------------------------------------------------------------------- running
def is_main_process() -> bool:
    """True on the process that writes shared files (rank 0 under ``accelerate launch``, else always)."""
    return int(os.environ.get("RANK", "0")) == 0


def existing_checkpoint(config: TrainConfig) -> Path | None:
    """The newest full checkpoint an earlier run left in ``output_dir``, if any."""
    for candidate in (Path(config.output_dir) / CHECKPOINT_DIR, Path(config.output_dir) / "experts" / CHECKPOINT_DIR):
        if (candidate / "config.json").is_file():
            return candidate
    return None


def compose_checkpoint(experts_checkpoint: str | Path, router_path: str | Path, target: str | Path) -> Path:
    """Write ``target`` = the experts checkpoint with the router weights replaced, atomically."""
    from personafuse.routing.persona_router import ROUTER_NAME

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        shutil.copytree(experts_checkpoint, tmp, dirs_exist_ok=True)
        shutil.copyfile(router_path, tmp / ROUTER_NAME)
        old = target.with_name(f".{target.name}.old")
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def save_resolved_config(config: TrainConfig) -> Path:
    """Write ``<output_dir>/config.yaml``: the config after YAML, overrides and defaults (atomic)."""
    import yaml

    path = Path(config.output_dir) / CONFIG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    os.replace(tmp, path)
    return path


def _result_dict(result: Any) -> dict[str, Any]:
    if hasattr(result, "as_dict"):
        return result.as_dict()
    if is_dataclass(result):
        return asdict(result)
    return dict(result) if isinstance(result, dict) else dict(vars(result))


def _field(result: Any, name: str) -> Any:
    return result.get(name) if isinstance(result, dict) else getattr(result, name, None)


def summarise(stage: str, result: Any, wall_s: float) -> StageSummary:
    """A stage result -> its summary line: numbers under ``metrics``, paths under ``paths``."""
    raw = _result_dict(result)
    metrics: dict[str, Any] = {}
    paths: dict[str, str] = {}
    for key, value in raw.items():
        if isinstance(value, Path) or (isinstance(value, str) and ("/" in value or key.endswith(("path", "dir")))):
            paths[key] = str(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key != "wall_s":
            metrics[key] = value
        elif isinstance(value, dict):
            metrics[key] = value
    status = "cached" if raw.get("cached") else "trained"
    return StageSummary(stage, status, round(wall_s, 2), metrics, paths)


def run_pipeline(config: TrainConfig, stages: Sequence[str], fresh: bool = False, progress: bool = True,
                 on_stage: Callable[[str, str], None] | None = None) -> RunSummary:  # fmt: skip
    """Run ``stages`` in order (after :func:`validate_run`), save the resolved config and the summary.

    Args:
        config: the validated config.
        stages: stage names, in run order.
        fresh: start stage 1 and the plain-SFT baseline over instead of resuming (the other stages resume on their
            own terms).
        progress: show progress bars.
        on_stage: called with (stage, "start" | "done") for the CLI's status lines.

    Returns:
        The run summary (also written to ``<output_dir>/summary.json`` by the main process).
    """
    from personafuse.train.metrics import write_json_atomic

    started = time.perf_counter()
    main = is_main_process()
    config_path = Path(config.output_dir) / CONFIG_NAME
    if main:
        config_path = save_resolved_config(config)
    checkpoint = existing_checkpoint(config) if "experts" not in stages else None
    router_path: str | None = None
    summaries: list[StageSummary] = []
    for stage in stages:
        if on_stage:
            on_stage(stage, "start")
        stage_started = time.perf_counter()
        if stage == "experts":
            result = stage_function("experts")(config, router_weights=router_path, fresh=fresh, progress=progress)
            checkpoint = Path(result.checkpoint)
            if router_path and main:
                checkpoint = compose_checkpoint(checkpoint, router_path, Path(config.output_dir) / CHECKPOINT_DIR)
        elif stage == "sft_baseline":  # a comparison model beside the pipeline: no checkpoint hand-over
            result = stage_function(stage)(config, fresh=fresh, progress=progress)
        elif stage == "router":
            result = stage_function("router")(config)
            router_path = str(_field(result, "router_path"))
            experts_ckpt = Path(config.output_dir) / "experts" / CHECKPOINT_DIR
            if (experts_ckpt / "config.json").is_file() and main:
                checkpoint = compose_checkpoint(experts_ckpt, router_path, Path(config.output_dir) / CHECKPOINT_DIR)
        else:
            if checkpoint is None:
                checkpoint = existing_checkpoint(config)
            result = stage_function("preference")(config, str(checkpoint) if checkpoint else None, progress=progress)
            tuned = _field(result, "checkpoint")
            checkpoint = Path(tuned) if tuned else checkpoint
        summaries.append(summarise(stage, result, time.perf_counter() - stage_started))
        if on_stage:
            on_stage(stage, "done")
    summary = RunSummary(str(config.output_dir), summaries, str(checkpoint) if checkpoint else None, str(config_path),
                         round(time.perf_counter() - started, 2))  # fmt: skip
    if main:
        write_json_atomic(Path(config.output_dir) / SUMMARY_NAME, _jsonable(summary.as_dict()))
    return summary


def _jsonable(value: Any) -> Any:
    import math

    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return (
        value
        if isinstance(value, (str, int, float, bool)) or value is None
        else json.loads(json.dumps(value, default=str))
    )
