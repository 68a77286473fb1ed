"""Evaluation: emotional intelligence, personality expression, general ability, safety, judged win rates.

    from personafuse.evaluate import get_task, load_eval_model
    model = load_eval_model("ckpt/", mode="routed")
    result = get_task("emobench").load("shared/data/emobench", limit=50).run(model, records="emobench.jsonl")

Tasks register themselves in :data:`TASKS` on import (one module each); models implement :class:`EvalModel`.
Importing this package does not import torch; the local models do, when they are built.
"""

from __future__ import annotations

from personafuse.evaluate import (  # noqa: F401  (registration)
    counseling,
    customer_service,
    emobench,
    eqbench,
    general,
    judge,
    personality,
    safety,
)
from personafuse.evaluate.models import EvalModel, PersonaModel, SystemPromptModel, load_eval_model, parse_mode
from personafuse.evaluate.scripted import ScriptedModel
from personafuse.evaluate.task import TASKS, Task, TaskConfig, TaskResult, get_task, register_task

__all__ = [
    "TASKS",
    "EvalModel",
    "PersonaModel",
    "ScriptedModel",
    "SystemPromptModel",
    "Task",
    "TaskConfig",
    "TaskResult",
    "get_task",
    "load_eval_model",
    "parse_mode",
    "register_task",
]
