"""The PNG of `personafuse data stats`: one activation histogram per trait and a bar chart of pole shares.

Drawn on a bare ``matplotlib.figure.Figure`` with the Agg canvas, so it works headless and never touches
pyplot's global state (no ``matplotlib.use``), and written atomically (temp file in the same folder, renamed).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from personafuse.data.stats import CorpusStats
from personafuse.traits import POLES, TRAIT_NAMES, TRAITS

__all__ = ["BALANCE_SHARE", "plot_stats"]

BALANCE_SHARE = 0.08
"""Share below which a pole counts as under-represented (the seed corpus asks >= 8% for every pole but N+)."""


def plot_stats(stats: CorpusStats, path: str | Path, title: str = "activation distribution") -> Path:
    """Draw the activation histograms (one panel per trait) and the activated-pole shares into a PNG.

    Args:
        stats: from :func:`personafuse.data.stats.compute_stats`.
        path: the PNG to write; its folder is created.
        title: figure title.

    Returns:
        ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=(15, 8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3)
    edges = stats.histogram_edges
    width = edges[1] - edges[0]
    for ax, trait in zip(axes.flat, TRAITS):
        counts = stats.histograms[trait]
        colours = ["#c0392b" if hi <= -1 / 3 + 1e-9 else "#27ae60" if lo >= 1 / 3 - 1e-9 else "#95a5a6"
                   for lo, hi in zip(edges[:-1], edges[1:])]  # fmt: skip
        ax.bar(edges[:-1], counts, width=width, align="edge", color=colours, edgecolor="white")
        for x in (-1 / 3, 1 / 3):
            ax.axvline(x, color="black", linestyle=":", linewidth=1)
        ax.set_title(f"{trait} ({TRAIT_NAMES[trait]})")
        ax.set_xlim(-1, 1)
        ax.set_xlabel("activation")
        ax.set_ylabel("situations")
    ax = axes.flat[len(TRAITS)]
    shares = [stats.pole_share[p] for p in POLES]
    ax.bar(POLES, shares, color=["#27ae60" if p.endswith("+") else "#c0392b" for p in POLES])
    ax.axhline(BALANCE_SHARE, color="black", linestyle=":", linewidth=1, label=f"{BALANCE_SHARE:.0%}")
    ax.set_title("activated-pole share (|a| ≥ 1/3)")
    ax.set_ylabel("share of situations")
    ax.legend(loc="upper right")
    fig.suptitle(f"{title} — {stats.records} situations")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            fig.savefig(handle, format="png", dpi=100)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
