"""`personafuse eval TASK --model ...` (one subcommand per registered task), `personafuse eval report RUN...` and
`personafuse eval lm-eval --tasks gsm8k,mmlu ...` (lm-eval-harness's own tasks, offline).

Each task's flags are generated from its config dataclass (type, default, attribute docstring as help), so the
CLI is the config's signature and a new task needs no CLI code. Flags every task shares: --model, --mode,
--adapter, --data, --limit, --seed, --out, --records, --json, --batch-size, --device, --progress.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import logging
import re
import sys
import textwrap
import typing
from pathlib import Path
from typing import Any

import typer
from click import Context
from typer.core import TyperGroup

from personafuse.evaluate.task import TASKS, Task, TaskConfig, UnknownTaskError

_COMMON_FIELDS = ("limit", "seed")
"""Config fields that are common flags (declared once below), not generated per task."""


class _EvalGroup(TyperGroup):
    """The `eval` group: an unknown task name is a one-line user error listing the tasks."""

    def resolve_command(self, ctx: Context, args: list[str]) -> Any:
        if args and not args[0].startswith("-") and self.get_command(ctx, args[0]) is None:
            known = ", ".join(sorted(self.commands))
            raise UnknownTaskError(f"unknown eval task {args[0]!r}; use one of: {known}")
        return super().resolve_command(ctx, args)


eval_app = typer.Typer(
    cls=_EvalGroup,
    help="Evaluate a model on a task (EmoBench, EQ-Bench v2, personality, GSM8K, MMLU, safety, judge), run "
    "lm-eval-harness's GSM8K / MMLU (lm-eval), or report runs.",
    no_args_is_help=True,
)


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass and its dataclass bases (``x: int = 1`` followed by ``\"\"\"doc\"\"\"``)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, following in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def parse_limit(text: str | None) -> int | None:
    """``--limit``: a positive whole number, or omitted for the full set.

    Raises:
        ConfigError: anything else, naming the flag and the value.
    """
    from personafuse.errors import ConfigError

    if text is None:
        return None
    if not re.fullmatch(r"\s*\d+\s*", text) or int(text) < 1:
        raise ConfigError(f"--limit must be a positive whole number (or omitted for the full set), got {text!r}")
    return int(text)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", text).strip("-") or "model"


def default_out(task: str, model: str, mode: str | None) -> Path:
    """``eval_runs/<task>-<model>-<mode>.json`` in the working directory."""
    name = model.rpartition("#")[2] if model.startswith("openai:") else (Path(model).name or model)
    return Path("eval_runs") / f"{task}-{_slug(name)}-{_slug(mode or 'default')}.json"


def _common_parameters() -> list[inspect.Parameter]:
    def option(name: str, annotation: Any, default: Any, *decls: str, help: str) -> inspect.Parameter:
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                                 default=typer.Option(default, *decls, help=help))  # fmt: skip

    return [
        option("model", str, ..., "--model", help="A PersonaFuse checkpoint folder, an HF model folder / id / alias "
               "(e.g. smollm2-135m-instruct), or openai:URL#MODEL for an OpenAI-compatible endpoint."),
        option("mode", str | None, None, "--mode", help="Checkpoint mode: base | routed | uniform | "
               "pole:<P> | prompt (default routed; other models run base)."),
        option("adapter", str | None, None, "--adapter", help="PEFT LoRA folder applied on an HF model "
               "(the plain-SFT baseline)."),
        option("data", str | None, None, "--data", help="The task's data: its file, its folder, or a data "
               "root holding the task's folder (e.g. shared/data)."),
        option("limit", str | None, None, "--limit", help="Evaluate N sampled items (per subset where the "
               "task says so); omit for the full set."),
        option("seed", int, 0, "--seed", help="Seed of the subset sample."),
        option("out", Path | None, None, "--out", help="Result JSON (default eval_runs/<task>-<model>-<mode>"
               ".json); per-item records go beside it and make the run resumable."),
        option("records", Path | None, None, "--records", help="Per-item records JSONL (default: --out with "
               ".records.jsonl); an existing one is resumed."),
        option("json_out", bool, False, "--json", help="Print the result as JSON on stdout."),
        option("batch_size", int, 8, "--batch-size", help="Sequences per forward pass (local models)."),
        option("device", str | None, None, "--device", help="Torch device (default: cuda if available)."),
        option("progress", bool, True, "--progress/--no-progress", help="Progress bar on stderr (when a terminal)."),
    ]  # fmt: skip


def _task_parameters(config_class: type[TaskConfig]) -> list[inspect.Parameter]:
    hints = typing.get_type_hints(config_class)
    docs = field_docs(config_class)
    params = []
    for f in dataclasses.fields(config_class):
        if f.name in _COMMON_FIELDS:
            continue
        flag = "--" + f.name.replace("_", "-")
        annotation, help_text = hints[f.name], docs.get(f.name, "")
        if typing.get_origin(annotation) is typing.Literal:
            # A plain string, checked by the config: its message is one line naming the flag and the choices
            # (a click BadParameter would print usage + a box).
            choices = [str(a) for a in typing.get_args(annotation)]
            annotation, help_text = str, f"{help_text} One of: {' | '.join(choices)}."
        decls = (f"{flag}/--no-{f.name.replace('_', '-')}",) if annotation is bool else (flag,)
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                                        default=typer.Option(f.default, *decls, help=help_text)))  # fmt: skip
    return params


def _task_command(task_class: type[Task]) -> Any:
    """A typer command for one task, its signature = the common flags + the task's config fields."""
    params = _common_parameters() + _task_parameters(task_class.config_class)

    def command(**kwargs: Any) -> None:
        run_task(task_class, kwargs)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = inspect.getdoc(task_class)
    return command


def run_task(task_class: type[Task], kwargs: dict[str, Any]) -> None:
    """Load the task (data first: fast errors), then the model, run, save, print."""
    from personafuse.cli.common import quiet_libraries
    from personafuse.evaluate.models import load_eval_model

    quiet_libraries()

    limit = parse_limit(kwargs.pop("limit"))
    seed = kwargs.pop("seed")
    common = {k: kwargs.pop(k) for k in ("model", "mode", "adapter", "data", "out", "records", "json_out",
                                         "batch_size", "device", "progress")}  # fmt: skip
    task = task_class.load(common["data"], limit=limit, seed=seed, **kwargs)
    out = common["out"] or default_out(task_class.name, common["model"], common["mode"])
    records = common["records"] or out.with_name(out.name.removesuffix(".json") + ".records.jsonl")
    model = load_eval_model(common["model"], common["mode"], common["adapter"], common["device"], common["batch_size"])
    result = task.run(model, records=records, progress=common["progress"] and sys.stderr.isatty())
    result.save(out)
    if common["json_out"]:
        print(json.dumps(result.to_dict(), ensure_ascii=False, indent=2))
        return
    _print_result(result, out)


def _print_result(result: Any, out: Path) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    version = f" ({result.task_version})" if result.task_version not in ("", "1") else ""
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in result.metrics.items():
        style = "bold" if name == result.headline else ""
        table.add_row(name, f"{value:.4f}" if isinstance(value, float) else str(value), style=style)
    console = Console()
    console.print(escape(f"{result.task}{version} · {result.label}"), style="bold", highlight=False)
    console.print(table)
    counts = ", ".join(f"{k} {v}" for k, v in result.counts.items())
    console.print(
        escape(f"{counts} · {result.wall_s:.1f} s · wrote {out} (records {result.records})"), highlight=False
    )


def report(
    runs: list[Path] = typer.Argument(..., help="Result JSONs written by `personafuse eval TASK --out`."),
    out: Path = typer.Option(Path("eval_report"), "--out", help="Folder for report.md, report.html and the PNGs."),
    base: str | None = typer.Option(None, "--base", help="Label of the base run (default: mode base)."),
    json_out: bool = typer.Option(False, "--json", help="Print the written paths as JSON."),
) -> None:
    """Put runs side by side: a table per task with deltas vs the base run, as markdown + HTML + PNG plots."""
    from personafuse.evaluate.report import write_report

    written = write_report(runs, out, base)
    if json_out:
        print(json.dumps({k: str(v) for k, v in written.items()}))
        return
    for kind, path in written.items():
        print(f"{kind}: {path}")


def _quiet_lm_eval() -> None:
    """No per-task progress bars or notices from lm-eval and datasets (MMLU is 57 tasks: 114 bars otherwise)."""
    import functools

    import datasets
    import lm_eval.api.task
    from tqdm import tqdm

    datasets.disable_progress_bars()
    lm_eval.api.task.tqdm = functools.partial(tqdm, disable=True)  # its request-building bar has no switch
    logging.getLogger("lm_eval").setLevel(logging.ERROR)


def lm_eval_command(
    tasks: str = typer.Option(
        ...,
        "--tasks",
        help="Comma-separated: gsm8k, mmlu, mmlu_stem | mmlu_other | "
        "mmlu_social_sciences | mmlu_humanities, mmlu_<subject> (e.g. mmlu_anatomy).",
    ),
    model: str = typer.Option(
        ...,
        "--model",
        help="A PersonaFuse checkpoint folder, or an HF model folder / id / alias (e.g. smollm2-135m-instruct).",
    ),
    mode: str | None = typer.Option(
        None,
        "--mode",
        help="Checkpoint mode: base | routed | uniform | pole:<P> | "
        "prompt (default routed; other models run base; prompt needs "
        "--apply-chat-template).",
    ),
    adapter: str | None = typer.Option(None, "--adapter", help="PEFT LoRA folder applied on an HF model."),
    data: str = typer.Option(
        ...,
        "--data",
        help="Data root holding gsm8k/ (test.jsonl, train.jsonl) and mmlu/ (test/, dev/ CSVs), e.g. shared/data.",
    ),
    limit: str | None = typer.Option(
        None,
        "--limit",
        help="lm-eval's limit: the first N documents of each task (each MMLU subject); omit for the full sets.",
    ),
    num_fewshot: int | None = typer.Option(
        None, "--num-fewshot", help="Shots per question (default: the task's, GSM8K 5, MMLU 0)."
    ),
    seed: int = typer.Option(0, "--seed", help="lm-eval's random, numpy, torch and few-shot seed."),
    apply_chat_template: bool = typer.Option(
        False,
        "--apply-chat-template/--plain",
        help="Render prompts with "
        "the model's chat template, few-shot examples as turns (default: "
        "lm-eval's plain prompts).",
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Result JSON (default eval_runs/lm-eval-<tasks>-<model>-<mode>.json)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
    batch_size: int = typer.Option(8, "--batch-size", help="Sequences per forward pass."),
    device: str | None = typer.Option(None, "--device", help="Torch device (default: cuda if available)."),
) -> None:
    """lm-eval-harness's GSM8K (exact match) and MMLU (multiple choice) on a local model in any mode, offline."""
    from personafuse.cli.common import quiet_libraries
    from personafuse.errors import UserError
    from personafuse.evaluate.lm_eval_run import (
        PROMPT_NEEDS_CHAT,
        lm_eval_version,
        metric_rows,
        run_lm_eval,
        save_result,
    )
    from personafuse.evaluate.lm_eval_tasks import parse_tasks
    from personafuse.evaluate.models import load_eval_model

    quiet_libraries()
    lm_eval_version()  # missing lm-eval: one line before the slow load
    _quiet_lm_eval()
    names = parse_tasks(tasks)
    count = parse_limit(limit)
    if model.startswith("openai:"):
        raise UserError(f"--model {model} is an endpoint; run lm-eval's local-chat-completions model against it "
                        "(docs/evaluation.md), this command runs local models")  # fmt: skip
    if mode == "prompt" and not apply_chat_template:
        raise UserError(PROMPT_NEEDS_CHAT)
    loader = lambda: load_eval_model(model, mode, adapter, device, batch_size)  # noqa: E731  (after the data check)
    result = run_lm_eval(loader, names, data, limit=count, num_fewshot=num_fewshot, seed=seed,
                         apply_chat_template=apply_chat_template)  # fmt: skip
    path = save_result(result, out or default_out(f"lm-eval-{'+'.join(names)}", model, mode))
    if json_out:
        print(json.dumps(result, ensure_ascii=False, indent=2, default=str))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table()
    for column in ("task", "metric", "filter", "value", "stderr", "n"):
        table.add_column(column, justify="right" if column in ("value", "stderr", "n") else "left")
    for task, metric, filt, value, stderr, n in metric_rows(result):
        table.add_row(escape(task), metric, filt, f"{value:.4f}", "" if stderr is None else f"{stderr:.4f}",
                      "" if n is None else str(n))  # fmt: skip
    console = Console()
    fmt = "chat template" if apply_chat_template else "plain prompts"
    label = f"{result['model'].get('name')} [{result['model'].get('mode')}]"
    console.print(escape(f"lm-eval {result['lm_eval_version']} · {label} · {fmt}"), style="bold", highlight=False)
    console.print(table)
    console.print(escape(f"{result['wall_s']:.1f} s · wrote {path}"), highlight=False)


def register(app: typer.Typer) -> None:
    """Add the `eval` command group: one subcommand per registered task, plus `report`."""
    import personafuse.evaluate  # noqa: F401  (registers the built-in tasks)

    for name, task_class in sorted(TASKS.items()):
        doc = (inspect.getdoc(task_class) or name).splitlines()[0]
        eval_app.command(name, help=doc)(_task_command(task_class))
    eval_app.command("report")(report)
    eval_app.command("lm-eval")(lm_eval_command)
    app.add_typer(eval_app, name="eval")
