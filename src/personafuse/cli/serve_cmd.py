"""`personafuse serve`: the OpenAI-compatible server (FastAPI + uvicorn) with per-request persona routing."""

from __future__ import annotations

import typer

from personafuse.cli.common import DEVICE_OPTION, MODEL_OPTION, console, quiet_libraries


def serve(
    model: str = MODEL_OPTION,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; any non-loopback host needs --api-key."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    api_key: str | None = typer.Option(
        None,
        "--api-key",
        envvar="PERSONAFUSE_API_KEY",
        show_envvar=True,
        help="Bearer key required on /v1 routes (checked in constant time).",
    ),  # fmt: skip
    model_name: str | None = typer.Option(None, "--model-name", help="Model id clients send (default: from --model)."),
    max_batch: int = typer.Option(8, "--max-batch", help="Rows per forward batch at most."),
    queue_size: int = typer.Option(64, "--queue-size", help="Queued requests at most; beyond, 503 + Retry-After."),
    timeout: float = typer.Option(60.0, "--timeout", help="Per-request deadline in seconds (then 504)."),
    batch_wait_ms: float = typer.Option(5.0, "--batch-wait-ms", help="Wait for more arrivals before a batch."),
    max_tokens_limit: int = typer.Option(4096, "--max-tokens-limit", help="Largest max_tokens a request may ask."),
    default_max_tokens: int = typer.Option(256, "--default-max-tokens", help="max_tokens when a request omits it."),
    max_body_bytes: int = typer.Option(1_000_000, "--max-body-bytes", help="Larger request bodies get 413."),
    max_messages: int = typer.Option(256, "--max-messages", help="Messages per chat request at most."),
    graceful_timeout: float = typer.Option(30.0, "--graceful-timeout", help="Seconds in-flight requests get on exit."),
    log_level: str = typer.Option("info", "--log-level", help="critical, error, warning, info or debug."),
    device: str | None = DEVICE_OPTION,
) -> None:
    """Serve a PersonaFuse model over OpenAI's API (/v1/chat/completions, /v1/completions, /v1/models, /v1/route)."""
    import logging

    from personafuse.serve.settings import ServeSettings

    settings = ServeSettings(
        model=model, model_name=model_name, host=host, port=port, api_key=api_key, device=device,
        max_batch=max_batch, queue_size=queue_size, batch_wait_ms=batch_wait_ms, timeout_s=timeout,
        max_body_bytes=max_body_bytes, max_messages=max_messages, max_tokens_limit=max_tokens_limit,
        default_max_tokens=default_max_tokens, graceful_timeout_s=graceful_timeout, log_level=log_level,
    )  # fmt: skip
    quiet_libraries()
    import uvicorn

    from personafuse.loading import load_model
    from personafuse.serve import HFEngine, create_app

    logging.getLogger("personafuse.serve").setLevel(log_level.upper())
    console.print(f"[dim]loading {model} ...[/]")
    pf = load_model(model, device=device)
    engine = HFEngine(pf, settings.served_name, max_batch=settings.max_batch, queue_size=settings.queue_size,
                      batch_wait_ms=settings.batch_wait_ms)  # fmt: skip
    app = create_app(engine, settings)
    auth = "API key required" if settings.api_key else "no API key"
    console.print(f"serving [bold]{settings.served_name}[/] on http://{host}:{port}/v1 ({auth}); Ctrl-C stops")
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=int(graceful_timeout))


def register(app: typer.Typer) -> None:
    """Add the command to ``app``."""
    app.command("serve")(serve)
