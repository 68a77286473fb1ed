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


def run_app(app: typer.Typer) -> None:
    """Run ``app``; known user errors become one line with exit code 2."""
    try:
        app(standalone_mode=False)
    except USER_ERRORS as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        _err.print("interrupted")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except SystemExit:
        raise
    except Exception as exc:  # click usage errors come through here in non-standalone mode
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(2)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(130)
        raise
