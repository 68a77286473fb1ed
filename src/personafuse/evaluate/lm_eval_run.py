"""``personafuse eval lm-eval``: lm-eval-harness's GSM8K / MMLU on a local model in any PersonaFuse mode, offline.

:func:`run_lm_eval` writes the offline task folder (:mod:`personafuse.evaluate.lm_eval_tasks`) into a temporary
directory, wraps the model in :class:`~personafuse.evaluate.lm_eval_model.PersonaFuseLM` and calls
``lm_eval.simple_evaluate``. The result JSON keeps lm-eval's per-task metrics beside what is needed to reproduce
them: lm-eval's version, the tasks, limit, few-shot count, seed, prompt format, the sha256 of every data file and
the model's ``info()`` (name, mode, adapter, chat template).

``--limit N`` is lm-eval's limit: the **first** N documents of each task (each MMLU subject), not a sample, so
``--limit 2`` on ``mmlu`` is 57 x 2 questions. ``--seed`` seeds lm-eval's python, numpy, torch and few-shot
samplers (GSM8K draws its shots at random from train; MMLU takes the first dev examples).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from personafuse.errors import UserError
from personafuse.evaluate.models import EvalModel

PROMPT_NEEDS_CHAT = (
    "--mode prompt puts the persona in a system prompt, which plain lm-eval prompts do not have; "
    "add --apply-chat-template"
)

RESULT_SCHEMA = "personafuse.lm_eval/1"
"""Written into every result JSON; bumped when its layout changes."""


def lm_eval_version() -> str:
    """The installed lm-eval's version.

    Raises:
        UserError: lm-eval is not installed; the message says how to install it.
    """
    from importlib import metadata

    try:
        return metadata.version("lm_eval")
    except metadata.PackageNotFoundError:
        raise UserError(
            "`personafuse eval lm-eval` needs lm-eval-harness: pip install 'lm-eval>=0.4.13,<0.5'"
        ) from None


def run_lm_eval(model: EvalModel | Callable[[], EvalModel], tasks: list[str], data: str | Path | None, limit: int | None = None,
                num_fewshot: int | None = None, seed: int = 0, apply_chat_template: bool = False,
                bootstrap_iters: int = 1000) -> dict[str, Any]:  # fmt: skip
    """Run lm-eval's ``tasks`` on ``model`` from local data; returns the result dict (see the module docstring).

    Args:
        model: an :class:`~personafuse.evaluate.models.EvalModel` (local, or scripted), or a function that loads
            one: it is called after the data is checked, so a bad ``--data`` fails before a slow load.
        tasks: names checked by :func:`~personafuse.evaluate.lm_eval_tasks.parse_tasks`.
        data: data root holding ``gsm8k/`` and ``mmlu/`` (or one task's own folder).
        limit: lm-eval's per-task limit (the first N documents); ``None`` for the full sets.
        num_fewshot: shots per question; ``None`` keeps each task's default (GSM8K 5, MMLU 0).
        seed: lm-eval's random, numpy, torch and few-shot seed.
        apply_chat_template: render prompts with the model's chat template (few-shot examples as turns).
        bootstrap_iters: lm-eval's bootstrap resamples for the standard errors of non-mean metrics.

    Raises:
        UserError: lm-eval missing, an unknown task, missing data, ``--mode prompt`` without a chat template.
    """
    version = lm_eval_version()
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from personafuse.evaluate.lm_eval_model import PersonaFuseLM
    from personafuse.evaluate.lm_eval_tasks import prepare_task_folder
    from personafuse.evaluate.task import runtime_versions

    if limit is not None and limit < 1:
        raise UserError(f"--limit must be a positive whole number, got {limit}")
    if num_fewshot is not None and num_fewshot < 0:
        raise UserError(f"--num-fewshot must be 0 or more, got {num_fewshot}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="personafuse-lm-eval-") as folder:
        prepared = prepare_task_folder(tasks, data, Path(folder) / "tasks")
        if not isinstance(model, EvalModel):
            model = model()
        info = model.info()
        if info.get("mode") == "prompt" and not apply_chat_template:
            raise UserError(PROMPT_NEEDS_CHAT)
        manager = TaskManager(include_path=str(prepared.path), include_defaults=False)
        results = simple_evaluate(
            model=PersonaFuseLM(model),
            tasks=list(tasks),
            task_manager=manager,
            limit=limit,
            num_fewshot=num_fewshot,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
            apply_chat_template=apply_chat_template,
            fewshot_as_multiturn=apply_chat_template,
            bootstrap_iters=bootstrap_iters,
            log_samples=False,
        )
    assert results is not None  # rank 0 of a single process
    return {
        "schema": RESULT_SCHEMA,
        "lm_eval_version": version,
        "tasks": list(tasks),
        "limit": limit,
        "num_fewshot": num_fewshot,
        "seed": seed,
        "apply_chat_template": apply_chat_template,
        "data_files": [dataclasses.asdict(f) for f in prepared.data_files],
        "model": info,
        "results": results["results"],
        "groups": results.get("groups", {}),
        "n_samples": results.get("n-samples", {}),
        "n_shot": results.get("n-shot", {}),
        "task_versions": results.get("versions", {}),
        "higher_is_better": results.get("higher_is_better", {}),
        "wall_s": round(time.perf_counter() - started, 3),
        "versions": {**runtime_versions(), "lm_eval": version},
    }


def metric_rows(result: dict[str, Any]) -> list[tuple[str, str, str, float, float | None, int | None]]:
    """``(task, metric, filter, value, stderr, n)`` per reported number: groups first, then tasks, alphabetical."""
    rows = []
    n_samples = result.get("n_samples", {})
    for name, metrics in sorted(result["results"].items(), key=lambda kv: (kv[0] not in result["groups"], kv[0])):
        for key, value in metrics.items():
            if "," not in key or "_stderr" in key or not isinstance(value, (int, float)):
                continue
            metric, filt = key.split(",", 1)
            stderr = metrics.get(f"{metric}_stderr,{filt}")
            n = n_samples.get(name, {}).get("effective")
            rows.append((name, metric, filt, float(value), stderr if isinstance(stderr, (int, float)) else None, n))
    return rows


def save_result(result: dict[str, Any], path: str | Path) -> Path:
    """Write ``result`` as indented JSON (parents created, atomically replaced); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path
