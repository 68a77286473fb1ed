"""Turn user-fixable errors into one red line and exit code 2 (never a traceback from deep inside torch)."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from personafuse.errors import USER_ERRORS

_err = Console(stderr=True, highlight=False)


def fail(message: str) -> None:
    """Print ``error: message`` to stderr and exit with code 2."""
    _err.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise SystemExit(2)


def _click_exception_types() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(usage-error types, abort types) of click and of typer's vendored copy (typer >= 0.29 ships its own)."""
    import importlib

    usage, abort = [], []
    for module_name in ("click.exceptions", "typer._click.exceptions", "typer.exceptions"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if hasattr(module, "ClickException"):
            usage.append(module.ClickException)
        if hasattr(module, "Abort"):
            abort.append(module.Abort)
    return tuple(usage), tuple(abort)


def run_app(app: typer.Typer) -> None:
    """Run ``app``; known user errors become one line with exit code 2."""
    usage_errors, aborts = _click_exception_types()
    try:
        code = app(standalone_mode=False, prog_name="personafuse")
    except USER_ERRORS as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        _err.print("interrupted")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except usage_errors as exc:  # bad options / arguments: one line, with where to find the right usage
        ctx = getattr(exc, "ctx", None)
        command = getattr(ctx, "command_path", "personafuse") if ctx is not None else "personafuse"
        fail(f"{exc.format_message()} (see '{command} --help')")
    except aborts:
        sys.exit(130)
    # In non-standalone mode an `Exit(n)` raised by a command comes back as the return value.
    sys.exit(code if isinstance(code, int) else 0)
