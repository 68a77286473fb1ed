"""`personafuse train`: run the training stages from a YAML config plus ``section.key=value`` overrides.

    personafuse train --config configs/smollm2-cpu.yaml
    personafuse train --config smollm2-cpu --stage experts experts.lr=1e-4 data.max_length=256
    accelerate launch --num_processes 2 -m personafuse.cli train --config configs/llama3.1-8b.yaml

Everything the run needs (config values, data files, model names, an earlier run's settings) is checked before
any model loads; a problem is one line naming the key and the expected value, with exit code 2.
"""

from __future__ import annotations

from pathlib import Path

import typer

from personafuse.cli.common import JSON_OPTION, console, print_json, quiet_libraries


def parse_overrides(args: list[str]) -> list[str]:
    """Extra command-line words -> ``key=value`` overrides.

    Accepts ``experts.lr=1e-4``, ``--experts.lr=1e-4`` and ``--experts.lr 1e-4``.

    Raises:
        ConfigError: a word that is not an override (the message shows the accepted forms).
    """
    from personafuse.errors import ConfigError

    out: list[str] = []
    index = 0
    while index < len(args):
        word = args[index]
        key = word[2:] if word.startswith("--") else word
        if "=" in key:
            out.append(key)
        elif word.startswith("--") and key and index + 1 < len(args) and not args[index + 1].startswith("--"):
            out.append(f"{key}={args[index + 1]}")
            index += 1
        else:
            raise ConfigError(
                f"unexpected argument {word!r}; overrides look like experts.lr=1e-4 or --experts.lr 1e-4 "
                "(see `personafuse train --help`)"
            )
        index += 1
    return out


def train(
    ctx: typer.Context,
    config: str = typer.Option(
        "smollm2-cpu", "--config", "-c", help="YAML file, or a name in configs/ (smollm2-cpu, tiny, ...)."
    ),
    stage: str = typer.Option(
        "all",
        "--stage",
        "-s",
        help="experts, router, preference, all (the config's stages), or sft_baseline (the plain-SFT LoRA that "
        "the evaluation compares with).",
    ),
    output_dir: Path | None = typer.Option(None, "--output-dir", "-o", help="Overrides output_dir."),
    fresh: bool = typer.Option(
        False,
        "--fresh",
        help="Discard an earlier stage-1 (or sft_baseline) run in the output folder instead of resuming it.",
    ),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bars."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Train the persona experts (SFT), the router (contrastive) and/or preference tuning. Extra words are config
    overrides: section.key=value (e.g. experts.lr=1e-4 model.experts.rank=16)."""
    from rich.console import Console

    from personafuse.train.config import load_train_config
    from personafuse.train.pipeline import resolve_config_path, stages_to_run, validate_run

    overrides = parse_overrides(list(ctx.args))
    if output_dir is not None:
        overrides.append(f"output_dir={output_dir}")
    path = resolve_config_path(config)
    cfg = load_train_config(path, overrides)
    stages = stages_to_run(stage, cfg)
    validate_run(cfg, stages, fresh=fresh)  # every problem, before any model loads

    quiet_libraries()
    from personafuse.train.pipeline import is_main_process, run_pipeline

    main = is_main_process()
    status = Console(stderr=True, highlight=False)
    started: dict[str, float] = {}

    def on_stage(name: str, event: str) -> None:
        import time

        if not main:
            return
        if event == "start":
            started[name] = time.perf_counter()
            status.print(f"[bold]stage {name}[/] …")
        else:
            status.print(f"[bold]stage {name}[/] done in {time.perf_counter() - started[name]:.1f}s")

    summary = run_pipeline(cfg, stages, fresh=fresh, progress=not no_progress and main, on_stage=on_stage)
    if not main:
        import os

        typer.echo(
            f"rank {os.environ.get('RANK')}/{os.environ.get('WORLD_SIZE')} finished {', '.join(stages)}", err=True
        )
        return
    if as_json:
        from personafuse.train.pipeline import _jsonable

        print_json(_jsonable(summary.as_dict()))
        return
    console.print(_summary_table(summary))


HEADLINE_SUFFIXES = ("loss", "mean.macro_f1", "mean.accuracy", "reward", "accuracy_heldout")
"""Nested metrics shown in the table (all of them are in summary.json)."""


def headline_metrics(metrics: dict, limit: int = 10) -> list[tuple[str, object]]:
    """Top-level numbers, then nested numbers whose dotted path ends like a headline (a loss, a mean score)."""
    top = [(k, v) for k, v in metrics.items() if not isinstance(v, dict)]
    nested: list[tuple[str, object]] = []

    def walk(prefix: str, node: dict) -> None:
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, dict):
                walk(path, value)
            elif isinstance(value, (int, float)) and not isinstance(value, bool) and path.endswith(HEADLINE_SUFFIXES):
                nested.append((path.removeprefix("metrics."), value))

    for key, value in metrics.items():
        if isinstance(value, dict) and key != "data":
            walk(key, value)
    return (top + nested)[:limit]


def _summary_table(summary):
    from rich.table import Table

    table = Table(title=f"training run: {summary.output_dir}", header_style="bold")
    table.add_column("stage")
    table.add_column("status")
    table.add_column("wall", justify="right")
    table.add_column("metrics")
    table.add_column("outputs")
    for line in summary.stages:
        shown = headline_metrics(line.metrics)
        metrics = "\n".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown)
        table.add_row(line.stage, line.status, f"{line.wall_s:.1f}s", metrics, "\n".join(line.paths.values()))
    table.caption = f"checkpoint: {summary.checkpoint}   config: {summary.config}   total {summary.wall_s:.1f}s"
    return table


def register(app: typer.Typer) -> None:
    """Add the command to ``app``."""
    app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(train)
