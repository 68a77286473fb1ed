"""`personafuse synthesize`: run the synthesis pipeline against any OpenAI-compatible endpoint."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional
from urllib.parse import urlparse

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from personafuse.data.synthesis import SynthesisSummary

__all__ = ["register"]

_HOSTS_NEEDING_KEY = ("api.openai.com",)


def register(app: typer.Typer) -> None:
    """Add the ``synthesize`` command to ``app``."""
    app.command("synthesize", no_args_is_help=True)(synthesize)


def synthesize(
    base_url: Annotated[
        str,
        typer.Option(
            "--base-url",
            envvar="OPENAI_BASE_URL",
            help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (vLLM, llama.cpp, Ollama: "
            "http://127.0.0.1:11434/v1, personafuse serve) or https://api.openai.com/v1.",
        ),
    ],
    model: Annotated[str, typer.Option("--model", help="Model name the endpoint serves (see its /v1/models).")],
    out: Annotated[Path, typer.Option("--out", help="Output folder; reuse it to resume an interrupted run.")],
    api_key_env: Annotated[
        str, typer.Option("--api-key-env", help="Environment variable holding the API key (local servers need none).")
    ] = "OPENAI_API_KEY",
    domains: Annotated[
        Optional[list[str]],  # noqa: UP045 - typer needs Optional on Python 3.10
        typer.Option(
            "--domains",
            help="Comma-separated domains (default: the 12 built-in ones); a new one as 'name:description'.",
        ),
    ] = None,
    per_domain: Annotated[int, typer.Option("--per-domain", help="Situations per domain.")] = 10,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Situations asked for per stage-1 request.")] = 5,
    concurrency: Annotated[int, typer.Option("--concurrency", help="Requests in flight at once.")] = 8,
    max_retries: Annotated[
        int, typer.Option("--max-retries", help="Retries per request on 429, 5xx, timeouts, connection errors.")
    ] = 4,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds before a request times out.")] = 120.0,
    max_repairs: Annotated[
        int, typer.Option("--max-repairs", help="Times an invalid JSON reply is sent back with its error.")
    ] = 2,
    temperature: Annotated[float, typer.Option("--temperature", help="Sampling temperature.")] = 0.9,
    seed: Annotated[int, typer.Option("--seed", help="Base of the per-request sampling seeds.")] = 0,
    max_tokens: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--max-tokens", help="Completion-token cap per request (default: the server's)."),
    ] = None,
    json_mode: Annotated[
        bool, typer.Option("--json-mode", help='Send response_format={"type": "json_object"}.')
    ] = False,
    dedup_threshold: Annotated[
        float, typer.Option("--dedup-threshold", help="Shingle Jaccard similarity that counts as a near-duplicate.")
    ] = 0.5,
    id_prefix: Annotated[str, typer.Option("--id-prefix", help="Record ids are <prefix>-<domain>-<nnnn>.")] = "syn",
    retry_rejected: Annotated[
        bool, typer.Option("--retry-rejected", help="Ask again for items an earlier run rejected.")
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Synthesise situation records (situations, annotation, ten pole replies, ideal/rejected) with an LLM."""
    from personafuse.data.schema import DOMAINS
    from personafuse.data.synthesis import SynthesisConfig, SynthesisPipeline
    from personafuse.data.synthesis.config import API_KEY_PLACEHOLDER
    from personafuse.errors import ConfigError

    key = os.environ.get(api_key_env, "")
    if not key:
        host = urlparse(base_url).hostname or ""
        if host in _HOSTS_NEEDING_KEY:
            raise ConfigError(
                f"{host} needs an API key: set ${api_key_env} (or name another variable with --api-key-env)"
            )
        key = API_KEY_PLACEHOLDER
    config = SynthesisConfig(
        base_url=base_url,
        model=model,
        out_dir=out,
        api_key=key,
        domains=tuple(domains) if domains else DOMAINS,
        per_domain=per_domain,
        batch_size=batch_size,
        concurrency=concurrency,
        max_retries=max_retries,
        timeout=timeout,
        max_repairs=max_repairs,
        temperature=temperature,
        seed=seed,
        max_tokens=max_tokens,
        json_mode=json_mode,
        dedup_threshold=dedup_threshold,
        id_prefix=id_prefix,
        retry_rejected=retry_rejected,
    )
    err = Console(stderr=True)
    # The bar only on a terminal: in logs and pipes it would add lines around the one-line errors.
    pipeline = SynthesisPipeline(config, show_progress=err.is_terminal, console=err)
    try:
        summary = asyncio.run(pipeline.run())
    except KeyboardInterrupt:
        records = len(pipeline.stores["records"])
        err.print(
            f"interrupted: {records} records and every finished stage item are kept in {out}; "
            "rerun the same command to resume",
            soft_wrap=True,
        )
        # SystemExit, not typer.Exit: the runner calls the app with standalone_mode=False, where click turns
        # Exit into a return value and the process would end with status 0.
        raise SystemExit(130) from None
    if json_output:
        typer.echo(json.dumps(summary.to_dict(), indent=2))
        return
    _print_summary(summary)


def _print_summary(summary: SynthesisSummary) -> None:
    from personafuse.data.synthesis import STAGE_NAMES

    console = Console()
    table = Table(title=f"synthesis into {summary.out_dir}", show_edge=False)
    table.add_column("stage")
    table.add_column("written", justify="right")
    table.add_column("already done", justify="right")
    table.add_column("rejected", justify="right")
    table.add_column("failed", justify="right")
    for stage in STAGE_NAMES:
        rejected = sum(n for k, n in summary.rejected.items() if k.startswith(f"{stage}: "))
        failed = sum(n for k, n in summary.failed.items() if k.startswith(f"{stage}: "))
        table.add_row(
            stage,
            str(summary.accepted.get(stage, 0)),
            str(summary.already_done.get(stage, 0)),
            str(rejected),
            str(failed),
        )
    console.print(table)
    console.print(
        f"{summary.records} records in records.jsonl · {summary.requests} requests ({summary.retries} retries, "
        f"{summary.repairs} repairs) · {summary.prompt_tokens} prompt + {summary.completion_tokens} completion "
        f"tokens · {summary.seconds:.1f} s"
    )
    for reason, count in summary.rejected.items():
        console.print(f"  rejected {count:>4} × {reason}")
    for reason, count in summary.failed.items():
        console.print(f"  failed   {count:>4} × {reason} (asked again on the next run)")
    for domain, status in summary.incomplete_domains.items():
        console.print(f"  [yellow]incomplete[/] {domain}: {status}")
