"""`personafuse route`: activation and gates for texts, without loading the LLM."""

from __future__ import annotations

from pathlib import Path

import typer

from personafuse.cli.common import DEVICE_OPTION, JSON_OPTION, console, print_json, quiet_libraries, routing_table


def route(
    text: str | None = typer.Argument(None, help="The context to route (omit with --input)."),
    input_file: Path | None = typer.Option(None, "--input", "-i", help='JSONL file: one {"text", "id"?} per line.'),
    model: str | None = typer.Option(None, "--model", "-m", help="Checkpoint folder (default: shipped router)."),
    skip_bad_lines: bool = typer.Option(False, "--skip-bad-lines", help="Report unreadable lines and continue."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Texts embedded per batch."),
    device: str | None = DEVICE_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Predict the signed trait activation and the expert gates of each context."""
    from personafuse.cli.errors import fail

    if (text is None) == (input_file is None):
        fail("give either TEXT or --input FILE.jsonl (not both, not neither)")
    items: list[tuple[object, str]] = []
    if input_file is not None:
        from personafuse.data.jsonl import JsonlError, iter_jsonl

        errors: list[JsonlError] = []
        lines = iter_jsonl(input_file, skip_bad=skip_bad_lines, errors=errors)
        while True:
            try:
                item = next(lines)
            except StopIteration:
                break
            except JsonlError as exc:
                fail(f"{exc}; fix that line or pass --skip-bad-lines to continue past it")
            value = item.value.get("text")
            if not isinstance(value, str) or not value.strip():
                message = f'{input_file}:{item.line}: needs a non-empty "text" field'
                if not skip_bad_lines:
                    fail(message + " (or pass --skip-bad-lines)")
                typer.echo(f"skipped {message}", err=True)
                continue
            items.append((item.value.get("id", item.line), value))
        for error in errors:
            typer.echo(f"skipped {error}", err=True)
    else:
        if not text or not text.strip():
            fail("TEXT is empty; give the conversation text to route")
        items.append((None, text))
    quiet_libraries()
    from personafuse.loading import load_router

    router = load_router(model, device=device)
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        for (item_id, _), routing in zip(chunk, router.route([t for _, t in chunk])):
            if as_json:
                print_json({"id": item_id, **routing.as_dict()} if input_file is not None else routing.as_dict())
            else:
                console.print(routing_table(routing, title=str(item_id) if item_id is not None else "routing"))


def register(app: typer.Typer) -> None:
    """Add the command to ``app``."""
    app.command("route")(route)
