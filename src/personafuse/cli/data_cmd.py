"""`personafuse data`: corpus tools -- validate, split, stats, contamination.

Exit codes: 0 clean, 1 when the check finds problems (listed on stdout), 2 for bad input (one line on stderr).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from personafuse.cli.common import DEVICE_OPTION, JSON_OPTION, console, print_json

__all__ = ["register"]

data_app = typer.Typer(
    name="data",
    help="Corpus tools: validate, split, stats, contamination against the evaluation sets.",
    no_args_is_help=True,
)

PATH_ARGUMENT = typer.Argument(..., help="A corpus JSONL file, or a folder searched for *.jsonl.", show_default=False)


def register(app: typer.Typer) -> None:
    """Add the ``data`` command group to ``app``."""
    app.add_typer(data_app, name="data")


_LINE = {"markup": False, "soft_wrap": True}
"""console.print options for a plain line that is never wrapped, so paths and file:line stay greppable."""


def _write_json_atomic(path: Path, value: object) -> None:
    """Write ``value`` as indented JSON through a temp file in the same folder, then rename over ``path``."""
    import json
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(value, handle, ensure_ascii=False, indent=1)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


# --------------------------------------------------------------------------------------------- validate


@data_app.command("validate")
def validate(path: Path = PATH_ARGUMENT, as_json: bool = JSON_OPTION) -> None:
    """Check schema, completeness, duplicates, split leakage and split assignment; every problem gives file:line."""
    from personafuse.data.validate import corpus_files, validate_corpus

    files = corpus_files(path)
    report = validate_corpus(path)
    if as_json:
        print_json({"ok": report.ok, "files": len(files), "records": len(report.records), "problems": report.problems})
    else:
        for problem in report.problems:
            console.print(problem, **_LINE)
        summary = f"{len(report.records)} valid records in {len(files)} file(s)"
        if report.ok:
            console.print(f"[green]ok[/]: {summary}, no problems", soft_wrap=True)
        else:
            console.print(f"[red]{len(report.problems)} problem(s)[/]; {summary}", soft_wrap=True)
    if not report.ok:
        raise SystemExit(1)  # not typer.Exit: the runner calls the app with standalone_mode=False


# ------------------------------------------------------------------------------------------------ split


@data_app.command("split")
def split(
    path: Path = PATH_ARGUMENT,
    check: bool = typer.Option(False, "--check", help="Only report records whose split is wrong; exit 1 if any."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Set each record's split from the hash of its id (80/10/10), rewriting each changed file atomically."""
    from dataclasses import asdict

    from personafuse.data.resplit import resplit_file
    from personafuse.data.validate import corpus_files

    files = corpus_files(path)
    # Read every file before writing any, so a bad line anywhere leaves the whole corpus untouched.
    planned = {file: resplit_file(file, write=False) for file in files}
    if not check:
        for file, changes in planned.items():
            if changes:
                resplit_file(file, write=True)
    changes = [c for file_changes in planned.values() for c in file_changes]
    if as_json:
        print_json(
            {"check": check, "files": len(files), "changed": len(changes), "changes": [asdict(c) for c in changes]}
        )
    else:
        for change in changes:
            verb = "should be" if check else "->"
            console.print(f"{change.path}:{change.line} {change.id}: {change.old!r} {verb} {change.new!r}", **_LINE)
        done = "would change" if check else "changed"
        console.print(
            f"{len(changes)} record(s) {done} in {sum(bool(c) for c in planned.values())} of {len(files)} file(s)",
            soft_wrap=True,
        )
    if check and changes:
        raise SystemExit(1)


# ------------------------------------------------------------------------------------------------ stats


def _stats_tables(stats) -> list[Table]:
    from personafuse.data.stats_plot import BALANCE_SHARE
    from personafuse.traits import POLES, TRAITS

    splits = list(stats.per_split)
    counts = Table(title="situations per domain and split", header_style="bold")
    counts.add_column("domain")
    counts.add_column("total", justify="right")
    for name in splits:
        counts.add_column(name, justify="right")
    for domain, total in stats.per_domain.items():
        counts.add_row(domain, str(total), *(str(stats.per_domain_split[domain][s]) for s in splits))
    counts.add_row("[bold]all[/]", f"[bold]{stats.records}[/]", *(f"[bold]{stats.per_split[s]}[/]" for s in splits))

    def share(value: float, pole: str, flag: bool) -> str:
        text = f"{value:.0%}"
        return f"[red]{text}[/]" if flag and value < BALANCE_SHARE and pole != "N+" else text

    poles = Table(title="activated-pole share (|a| ≥ 1/3, by sign); red: under 8% overall", header_style="bold")
    poles.add_column("domain")
    for pole in POLES:
        poles.add_column(pole, justify="right")
    for domain, shares in stats.pole_share_per_domain.items():
        poles.add_row(domain, *(share(shares[p], p, False) for p in POLES))
    poles.add_row("[bold]all[/]", *(share(stats.pole_share[p], p, True) for p in POLES))

    edges = stats.histogram_edges
    hist = Table(title="activation histogram (situations per bin)", header_style="bold")
    hist.add_column("activation")
    for trait in TRAITS:
        hist.add_column(trait, justify="right")
    for i in range(len(edges) - 1):
        closing = "]" if i == len(edges) - 2 else ")"
        hist.add_row(f"[{edges[i]:+.2f}, {edges[i + 1]:+.2f}{closing}", *(str(stats.histograms[t][i]) for t in TRAITS))

    activated = Table(title="situations by number of activated traits", header_style="bold")
    for n in stats.activated_traits:
        activated.add_column(str(n), justify="right")
    activated.add_row(*(str(v) for v in stats.activated_traits.values()))

    lengths = Table(title="mean reply length (words)", header_style="bold")
    for name in stats.reply_words:
        lengths.add_column(name, justify="right")
    lengths.add_row(*(f"{v:.1f}" for v in stats.reply_words.values()))
    return [counts, poles, hist, activated, lengths]


@data_app.command("stats")
def stats(
    path: Path = PATH_ARGUMENT,
    out: Path = typer.Option(Path("corpus-stats"), "--out", help="Folder for activation.png and stats.json."),
    bins: int = typer.Option(12, "--bins", help="Bins of the activation histograms over [-1, 1] (12: edges at ±1/3)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Counts per domain and split, activated-pole shares, activation histograms, reply lengths, and a PNG."""
    from personafuse.data.stats import compute_stats
    from personafuse.data.stats_plot import plot_stats
    from personafuse.data.validate import validate_corpus
    from personafuse.errors import UserError

    if bins < 1:
        raise UserError(f"--bins {bins} must be at least 1; e.g. --bins 10")
    report = validate_corpus(path)
    if not report.records:
        raise UserError(f"no valid record under {path}; run `personafuse data validate {path}` to see why")
    if report.problems:
        typer.echo(
            f"warning: {len(report.problems)} problem(s) in {path}; statistics cover the {len(report.records)} valid "
            f"records (see `personafuse data validate {path}`)",
            err=True,
        )
    result = compute_stats(report.records, bins=bins)
    png = plot_stats(result, out / "activation.png", title=f"activation distribution of {path}")
    _write_json_atomic(out / "stats.json", result.as_dict())
    if as_json:
        print_json({**result.as_dict(), "png": str(png), "problems": len(report.problems)})
        return
    for table in _stats_tables(result):
        console.print(table)
    console.print(f"wrote {png} and {out / 'stats.json'}", soft_wrap=True)


# ---------------------------------------------------------------------------------------- contamination


def _eval_folders(against: list[str], against_shared: Path | None) -> dict[str, Path]:
    from personafuse.data.eval_texts import EVAL_SETS, shared_eval_sets
    from personafuse.errors import UserError

    folders: dict[str, Path] = dict(shared_eval_sets(against_shared)) if against_shared is not None else {}
    for spec in against:
        name, sep, folder = spec.partition("=")
        name = name.strip()
        if not sep or not name or not folder.strip():
            raise UserError(f"--against {spec!r} is not NAME=PATH; e.g. --against emobench=../shared/data/emobench")
        if name not in EVAL_SETS:
            raise UserError(f"--against: unknown evaluation set {name!r}; known sets: {', '.join(EVAL_SETS)}")
        folders[name] = Path(folder.strip())
    if not folders:
        raise UserError(
            "nothing to compare against; give --against-shared DIR (a folder like ../shared/data) or "
            f"--against NAME=PATH with NAME one of {', '.join(EVAL_SETS)}"
        )
    return folders


def _pairs_table(title: str, pairs, width: int = 70) -> Table:
    table = Table(title=title, header_style="bold", show_lines=True)
    table.add_column("cos", justify="right")
    table.add_column("corpus")
    table.add_column("evaluation set")
    for pair in pairs:
        table.add_row(
            f"{pair.similarity:.3f}",
            f"[dim]{pair.corpus_where}[/]\n{_short(pair.corpus_text, width)}",
            f"[dim]{pair.eval_set} {pair.eval_where}[/]\n{_short(pair.eval_text, width)}",
        )
    return table


@data_app.command("contamination")
def contamination(
    corpus: Path = PATH_ARGUMENT,
    against: Annotated[
        Optional[list[str]],  # noqa: UP045 - typer needs Optional on Python 3.10
        typer.Option(
            "--against", help="NAME=PATH of an evaluation set folder (repeatable); NAME as in ../shared/data."
        ),
    ] = None,
    against_shared: Optional[Path] = typer.Option(  # noqa: UP045
        None, "--against-shared", help="A folder laid out like ../shared/data: use every known set in it."
    ),
    threshold: float = typer.Option(0.85, "--threshold", help="Report pairs with cosine at or above this, in (0, 1]."),
    encoder: str = typer.Option("minilm-l6", "--encoder", help="Sentence encoder: alias, folder or hub id."),
    replies: bool = typer.Option(False, "--replies", help="Also compare the ten pole replies and the rejected reply."),
    min_words: int = typer.Option(1, "--min-words", help="Leave out texts shorter than this many words."),
    max_words: int = typer.Option(96, "--max-words", help="Cut longer texts into sentence windows of this size."),
    top: int = typer.Option(10, "--top", help="Also list the N corpus texts closest to any evaluation text."),
    batch_size: int = typer.Option(128, "--batch-size", help="Texts per encoder forward pass."),
    chunk_size: int = typer.Option(8192, "--chunk-size", help="Evaluation texts per similarity matmul."),
    cache_dir: Optional[Path] = typer.Option(  # noqa: UP045
        None, "--cache-dir", help="Embedding cache (default: $PERSONAFUSE_HOME/embeddings)."
    ),
    no_cache: bool = typer.Option(False, "--no-cache", help="Embed everything afresh and cache nothing."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the full report as JSON to this file."),  # noqa: UP045
    device: Optional[str] = DEVICE_OPTION,  # noqa: UP045
    as_json: bool = JSON_OPTION,
) -> None:
    """List corpus texts (user messages, ideal replies) that are near-copies of evaluation-set texts; exit 1 if any."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from personafuse.cli.common import quiet_libraries
    from personafuse.data.contamination import corpus_texts, find_contamination
    from personafuse.data.eval_texts import load_eval_set
    from personafuse.data.jsonl import JsonlError
    from personafuse.errors import UserError

    problems = []
    if not 0.0 < threshold <= 1.0:
        problems.append(f"--threshold {threshold} is outside (0, 1]; give a cosine such as 0.85")
    for flag, value, minimum in (("--min-words", min_words, 0), ("--max-words", max_words, 1), ("--top", top, 0),
                                 ("--batch-size", batch_size, 1), ("--chunk-size", chunk_size, 1)):  # fmt: skip
        if value < minimum:
            problems.append(f"{flag} {value} must be at least {minimum}")
    if problems:
        raise UserError("; ".join(problems))
    started = time.perf_counter()
    errors: list[JsonlError] = []
    texts = corpus_texts(corpus, replies=replies, errors=errors)
    for error in errors:
        typer.echo(f"skipped unreadable line {error}", err=True)
    folders = _eval_folders(list(against or []), against_shared)
    eval_sets = {name: load_eval_set(name, folder) for name, folder in folders.items()}

    quiet_libraries()
    import torch

    from personafuse.data.embeddings import TextEmbedder
    from personafuse.models.aliases import personafuse_home
    from personafuse.models.encoder import load_encoder, resolve_encoder_path

    if device is not None and device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available here; use --device cpu or leave --device out")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_encoder(encoder, device=device)
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), transient=True,
    )  # fmt: skip
    tasks: dict[str, int] = {}

    def on_progress(label: str, done: int, total: int) -> None:
        if label not in tasks:
            tasks[label] = progress.add_task(f"embedding {label}", total=total)
        progress.update(tasks[label], completed=done)

    embed = TextEmbedder(
        model,
        identity=f"{encoder}|{resolve_encoder_path(encoder)}",
        batch_size=batch_size,
        cache_dir=None if no_cache else (cache_dir or personafuse_home() / "embeddings"),
        on_progress=on_progress,
    )
    with progress:
        report = find_contamination(
            texts, eval_sets, embed, threshold=threshold, top=top, min_words=min_words, max_words=max_words,
            chunk_size=chunk_size, device=device,
        )  # fmt: skip
    seconds = time.perf_counter() - started
    payload = {**report.as_dict(), "seconds": round(seconds, 2), "cache_hits": embed.cache_hits}
    if out is not None:
        _write_json_atomic(out, payload)
    if as_json:
        print_json(payload)
    else:
        sets = ", ".join(f"{name} {n}" for name, n in report.eval_texts.items())
        console.print(
            f"compared {report.corpus_texts} corpus texts with {sum(report.eval_texts.values())} evaluation texts "
            f"({sets}) in {seconds:.1f} s ({embed.cache_hits} of {len(eval_sets) + 1} text sets from the cache)",
            **_LINE,
        )
        if report.pairs:
            shown = report.pairs[:200]
            console.print(_pairs_table(f"pairs with cosine ≥ {threshold}", shown))
            if report.n_pairs > len(shown):
                console.print(
                    f"… {report.n_pairs - len(shown)} more pair(s); --out FILE or --json lists them", soft_wrap=True
                )
        if report.nearest:
            console.print(_pairs_table(f"the {len(report.nearest)} corpus texts closest to an evaluation text",
                                       report.nearest))  # fmt: skip
        if report.clean:
            console.print(f"[green]clean[/]: no pair reaches cosine {threshold}", soft_wrap=True)
        else:
            console.print(f"[red]{report.n_pairs} pair(s)[/] reach cosine {threshold}", soft_wrap=True)
        if out is not None:
            console.print(f"wrote {out}", soft_wrap=True)
    if not report.clean:
        raise SystemExit(1)
