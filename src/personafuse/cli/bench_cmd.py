"""`personafuse bench`: speed and memory of PersonaFuse vs the base model and peers, measured side by side."""

from __future__ import annotations

from pathlib import Path

import typer

from personafuse.cli.common import DEVICE_OPTION, JSON_OPTION, console, print_json, quiet_libraries


def bench(
    model: str = typer.Option(
        "smollm2-135m-instruct",
        "--model",
        "-m",
        help="Base LLM (alias, HF folder/id, or random:CONFIG.json for random weights).",
    ),  # fmt: skip
    encoder: str = typer.Option("minilm-l6", "--encoder", help="Sentence encoder (alias, folder or id) for routing."),
    rank: int = typer.Option(8, "--rank", help="LoRA rank of each expert."),
    batch_sizes: str = typer.Option("1,8", "--batch-sizes", help="Comma-separated decode batch sizes."),
    new_tokens: int = typer.Option(32, "--new-tokens", help="Decoded tokens per measurement."),
    prompt_tokens: int = typer.Option(64, "--prompt-tokens", help="Prompt length in tokens."),
    repeats: int = typer.Option(3, "--repeats", help="Interleaved repetitions (median reported)."),
    modes: str = typer.Option("dense,top3,merged,naive_loop,xlora", "--modes", help="Modes compared with base."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16."),
    train_steps: int = typer.Option(3, "--train-steps", help="Timed training steps per variant."),
    out: Path = typer.Option(Path("benchmarks/results"), "--out", help="Folder for bench.json/.md/.png."),
    device: str | None = DEVICE_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Measure decode throughput (base, dense, top-3, merged, naive loop, PEFT X-LoRA), TTFT parts, persona
    switching, memory and training step time; print every ratio next to its bound and target."""
    from personafuse.bench.config import BenchConfig
    from personafuse.bench.report import markdown_table, write_report
    from personafuse.bench.runner import run_bench
    from personafuse.errors import ConfigError

    try:
        sizes = [int(b) for b in batch_sizes.split(",") if b.strip()]
    except ValueError:
        raise ConfigError(f"--batch-sizes {batch_sizes!r} must be comma-separated integers, e.g. 1,8") from None
    config = BenchConfig(model=model, encoder=encoder, rank=rank, batch_sizes=sizes, new_tokens=new_tokens,
                         prompt_tokens=prompt_tokens, repeats=repeats,
                         modes=[m.strip() for m in modes.split(",") if m.strip()], dtype=dtype, device=device,
                         train_steps=train_steps)  # fmt: skip
    quiet_libraries()
    result = run_bench(config, progress=None if as_json else (lambda m: console.print(f"[dim]· {m}[/]")))
    paths = write_report(result, out)
    if as_json:
        print_json(result)
        return
    console.print(markdown_table(result))
    console.print(f"[dim]written: {', '.join(str(p) for p in paths.values())}[/]")


def register(app: typer.Typer) -> None:
    """Add the command to ``app``."""
    app.command("bench")(bench)
