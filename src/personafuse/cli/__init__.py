"""The `personafuse` command line (typer + rich). Thin: each command parses arguments and calls the library.

One module per command group; each module defines ``register(app)``. Errors that the user can fix are raised
as :class:`personafuse.errors.UserError` (or its subclasses) and printed as one red line with exit code 2.
"""

from __future__ import annotations

import importlib

import typer

__all__ = ["app", "main"]

app = typer.Typer(
    name="personafuse",
    help="Situation-adaptive Big Five personality for chat LLMs: route, chat, synthesize, train, eval, serve, bench.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_COMMAND_MODULES = ("route", "chat", "info", "data", "synthesize", "train", "eval", "serve", "bench", "export")
for _name in _COMMAND_MODULES:
    try:
        _module = importlib.import_module(f"personafuse.cli.{_name}_cmd")
    except ModuleNotFoundError as exc:  # a command group not written yet
        if exc.name != f"personafuse.cli.{_name}_cmd":
            raise
        continue
    _module.register(app)


def main() -> None:
    """Entry point of the `personafuse` script: one-line errors, exit code 2, no traceback for user errors."""
    from personafuse.cli.errors import run_app

    run_app(app)
