"""Put eval runs side by side: a markdown and an HTML page with one table per task, deltas vs the base run,
and PNG plots (headline metric per task; trait radar for personality runs).

    personafuse eval report runs/*.json --out runs/report

The base of each task is the run whose model mode is ``base`` (else the first run given, or ``--base LABEL``).
Runs of one task that were computed on different items (other data hashes, limit or seed) are flagged, since
their numbers are not comparable.
"""

from __future__ import annotations

import html
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personafuse.errors import UserError
from personafuse.evaluate.task import TaskResult
from personafuse.traits import TRAITS


@dataclass
class TaskTable:
    """One task's runs as rows and metrics as columns."""

    task: str
    version: str
    columns: list[str]
    labels: list[str]
    values: list[dict[str, float]]
    base: int
    """Row index of the base run."""
    wall_s: list[float]
    comparable: bool
    """False when the runs used different items (data hashes, limit or seed)."""

    def delta(self, row: int, column: str) -> float | None:
        """Value minus the base run's value (``None`` for the base row or a missing value)."""
        if row == self.base:
            return None
        mine, base = self.values[row].get(column), self.values[self.base].get(column)
        return None if mine is None or base is None else mine - base


def _items_signature(result: TaskResult) -> tuple[Any, ...]:
    config = result.config
    return (tuple(sorted(f["sha256"] for f in result.data_files)), config.get("limit"), config.get("seed"))


def build_tables(results: Sequence[TaskResult], base_label: str | None = None) -> list[TaskTable]:
    """Group results by task (in first-seen order) and build a table per task.

    Raises:
        UserError: ``base_label`` matches no run of some task that has several runs.
    """
    groups: dict[str, list[TaskResult]] = defaultdict(list)
    for result in results:
        groups[result.task].append(result)
    tables = []
    for task, runs in groups.items():
        labels = _unique([r.label for r in runs])
        columns: list[str] = []
        for run in runs:
            for name in [run.headline, *run.metrics]:
                if name in run.metrics and name not in columns:
                    columns.append(name)
        if base_label is not None and len(runs) > 1:
            if base_label not in labels:
                raise UserError(f"--base {base_label!r} is not a run of task {task}; its runs: {', '.join(labels)}")
            base = labels.index(base_label)
        else:
            base = next((i for i, r in enumerate(runs) if r.model.get("mode") == "base"), 0)
        versions = sorted({r.task_version for r in runs})
        tables.append(TaskTable(task, "/".join(versions), columns, labels, [dict(r.metrics) for r in runs], base,
                                [r.wall_s for r in runs], len({_items_signature(r) for r in runs}) == 1))  # fmt: skip
    return tables


def _unique(labels: list[str]) -> list[str]:
    seen: dict[str, int] = defaultdict(int)
    out = []
    for label in labels:
        seen[label] += 1
        out.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return out


def fmt(value: float | None) -> str:
    """Numbers with three decimals below 10, two above; ``-`` for missing."""
    if value is None:
        return "-"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.2f}"


def fmt_delta(value: float | None) -> str:
    """Signed delta, empty for none."""
    return "" if value is None else f"{'+' if value >= 0 else '−'}{fmt(abs(value))}"


def _title(table: TaskTable) -> str:
    return f"{table.task} ({table.version})" if table.version not in ("", "1") else table.task


def render_markdown(tables: Sequence[TaskTable], images: Sequence[str] = ()) -> str:
    """The report as markdown: a heading and a table per task, deltas in parentheses."""
    lines = ["# personafuse evaluation report", ""]
    for table in tables:
        lines += [f"## {_title(table)}", ""]
        if not table.comparable:
            lines += ["> **Not comparable:** these runs used different items (data, limit or seed).", ""]
        lines.append("| run | " + " | ".join(table.columns) + " | wall s |")
        lines.append("|---|" + "---:|" * (len(table.columns) + 1))
        for row, label in enumerate(table.labels):
            cells = []
            for column in table.columns:
                delta = fmt_delta(table.delta(row, column))
                cells.append(fmt(table.values[row].get(column)) + (f" ({delta})" if delta else ""))
            base = " (base)" if row == table.base and len(table.labels) > 1 else ""
            lines.append(f"| {label}{base} | " + " | ".join(cells) + f" | {table.wall_s[row]:.1f} |")
        lines.append("")
    lines += [f"![{Path(i).stem}]({i})" for i in images]
    return "\n".join(lines).rstrip() + "\n"


_CSS = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;"
        "margin-bottom:2em}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child,"
        "th:first-child{text-align:left}.up{color:#0a7d22}.down{color:#b3261e}.warn{color:#b3261e}")  # fmt: skip


def render_html(tables: Sequence[TaskTable], images: Sequence[str] = ()) -> str:
    """The report as one self-contained HTML page (images referenced by relative path)."""
    out = ["<!doctype html><meta charset='utf-8'><title>personafuse evaluation</title>", f"<style>{_CSS}</style>",
           "<h1>personafuse evaluation report</h1>"]  # fmt: skip
    for table in tables:
        out.append(f"<h2>{html.escape(_title(table))}</h2>")
        if not table.comparable:
            out.append("<p class='warn'>Not comparable: these runs used different items (data, limit or seed).</p>")
        head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
        out.append(f"<table><tr><th>run</th>{head}<th>wall s</th></tr>")
        for row, label in enumerate(table.labels):
            cells = []
            for column in table.columns:
                delta = table.delta(row, column)
                tag = (
                    ""
                    if delta is None
                    else f" <span class='{'up' if delta >= 0 else 'down'}'>({fmt_delta(delta)})</span>"
                )
                cells.append(f"<td>{fmt(table.values[row].get(column))}{tag}</td>")
            base = " <em>(base)</em>" if row == table.base and len(table.labels) > 1 else ""
            out.append(f"<tr><td>{html.escape(label)}{base}</td>{''.join(cells)}<td>{table.wall_s[row]:.1f}</td></tr>")
        out.append("</table>")
    out += [f"<p><img src='{html.escape(i)}' alt='{html.escape(Path(i).stem)}'></p>" for i in images]
    return "\n".join(out) + "\n"


def plot_headlines(tables: Sequence[TaskTable], results: Sequence[TaskResult], path: Path) -> Path:
    """One bar chart per task of its headline metric, one bar per run; written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    headline = {r.task: r.headline for r in results}
    fig, axes = plt.subplots(1, len(tables), figsize=(max(4.0, 3.2 * len(tables)), 3.6), squeeze=False)
    for ax, table in zip(axes[0], tables):
        metric = headline[table.task]
        values = [v.get(metric, float("nan")) for v in table.values]
        colors = ["#888888" if i == table.base else f"C{i % 10}" for i in range(len(values))]
        ax.bar(range(len(values)), values, color=colors)
        ax.set_xticks(range(len(values)), table.labels, rotation=30, ha="right", fontsize=7)
        ax.set_title(f"{_title(table)}\n{metric}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_traits(results: Sequence[TaskResult], path: Path) -> Path | None:
    """Radar of the Big Five scores (condition ``model``) of each personality run; ``None`` without any."""
    runs = [r for r in results if r.task == "personality" and r.details.get("trait_scores", {}).get("model")]
    if not runs:
        return None
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    angles = [2 * math.pi * i / len(TRAITS) for i in range(len(TRAITS))]
    fig = plt.figure(figsize=(4.8, 4.8))
    ax = fig.add_subplot(projection="polar")
    for label, run in zip(_unique([r.label for r in runs]), runs):
        scores = run.details["trait_scores"]["model"]
        values = [scores.get(t, float("nan")) for t in TRAITS]
        ax.plot(angles + angles[:1], values + values[:1], label=label)
    ax.set_xticks(angles, list(TRAITS))
    ax.set_ylim(1, 5)
    ax.legend(fontsize=7, loc="lower right", bbox_to_anchor=(1.25, -0.1))
    ax.set_title("trait scores (1-5)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(paths: Sequence[str | Path], out_dir: str | Path, base_label: str | None = None) -> dict[str, Path]:
    """Load result JSONs and write ``report.md``, ``report.html``, ``headlines.png`` (+ ``traits.png``).

    Raises:
        UserError: no paths, or a file that is not an eval result.
    """
    if not paths:
        raise UserError("give at least one result JSON (written by `personafuse eval TASK --out FILE`)")
    results = [TaskResult.load(p) for p in paths]
    tables = build_tables(results, base_label)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {"headlines": plot_headlines(tables, results, out / "headlines.png")}
    traits = plot_traits(results, out / "traits.png")
    if traits is not None:
        written["traits"] = traits
    images = [p.name for p in written.values()]
    (out / "report.md").write_text(render_markdown(tables, images), encoding="utf-8")
    (out / "report.html").write_text(render_html(tables, images), encoding="utf-8")
    return {"markdown": out / "report.md", "html": out / "report.html", **written}
