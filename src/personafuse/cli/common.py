"""Pieces shared by CLI commands: options, JSON output, routing bars."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from personafuse.traits import POLES, TRAITS, Routing

console = Console(highlight=False)

MODEL_OPTION = typer.Option(
    "smollm2-135m-instruct",
    "--model",
    "-m",
    help="A personafuse checkpoint folder, or a base LLM (alias smollm2-135m-instruct, HF folder or id).",
)
DEVICE_OPTION = typer.Option(None, "--device", help="torch device (default: cuda when available, else cpu).")
JSON_OPTION = typer.Option(False, "--json", help="Print machine-readable JSON instead of tables.")


def quiet_libraries() -> None:
    """Keep transformers / sentence-transformers progress bars and warnings out of CLI output."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in ("transformers", "sentence_transformers", "huggingface_hub", "peft", "bitsandbytes"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    import warnings

    warnings.filterwarnings("ignore")


def print_json(value: Any) -> None:
    """One compact JSON document per line on stdout."""
    sys.stdout.write(json.dumps(value, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _bar(value: float, width: int = 20, signed: bool = False) -> str:
    if signed:
        half = width // 2
        cells = round(abs(value) * half)
        left = " " * (half - cells) + "█" * cells if value < 0 else " " * half
        right = "█" * cells + " " * (half - cells) if value > 0 else " " * half
        return f"[red]{left}[/]│[green]{right}[/]"
    cells = round(value * width)
    return "[cyan]" + "█" * cells + "[/]" + "·" * (width - cells)


def routing_table(routing: Routing, title: str = "routing") -> Table:
    """Activation bars (signed, per trait) beside gate bars (per expert)."""
    table = Table(title=title, show_header=True, header_style="bold", box=None)
    table.add_column("trait")
    table.add_column("activation", justify="left")
    table.add_column("", justify="right")
    table.add_column("expert")
    table.add_column("gate", justify="left")
    table.add_column("", justify="right")
    activation = routing.activation.as_dict()
    gates = routing.gates.as_dict()
    for row in range(len(POLES)):
        trait = TRAITS[row] if row < len(TRAITS) else ""
        cells = [trait, _bar(activation[trait], signed=True), f"{activation[trait]:+.2f}"] if trait else ["", "", ""]
        pole = POLES[row]
        table.add_row(*cells, pole, _bar(gates[pole]), f"{gates[pole]:.2f}")
    return table
