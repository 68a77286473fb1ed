"""Training metrics: one JSON line per logged step, and a PNG of the loss curves.

Shared by every stage so all runs look alike: ``<output_dir>/<stage>/metrics.jsonl`` and ``losses.png``.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from personafuse.data.jsonl import append_jsonl


class MetricsLogger:
    """Append-only JSONL metrics (safe against crashes: each line is one fsynced write)."""

    def __init__(self, path: str | Path, stage: str) -> None:
        self.path = Path(path)
        self.stage = stage
        self.started = time.perf_counter()

    def log(self, step: int, **metrics: Any) -> dict[str, Any]:
        """Record ``metrics`` at ``step``; floats are rounded for readability; returns the row."""
        row: dict[str, Any] = {
            "stage": self.stage,
            "step": step,
            "elapsed_s": round(time.perf_counter() - self.started, 3),
        }
        for key, value in metrics.items():
            if hasattr(value, "item"):
                value = value.item()
            row[key] = round(value, 6) if isinstance(value, float) and math.isfinite(value) else value
        append_jsonl(self.path, row)
        return row


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All rows of a metrics file (a torn last line from a crash is skipped)."""
    from personafuse.data.jsonl import iter_jsonl

    return [item.value for item in iter_jsonl(path, skip_bad=True, errors=[])]


def plot_losses(metrics_path: str | Path, png_path: str | Path, keys: list[str] | None = None) -> Path:
    """Plot every numeric key containing "loss" (or ``keys``) against the step; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    if keys is None:
        keys = sorted({k for r in rows for k, v in r.items() if "loss" in k and isinstance(v, (int, float))})
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in keys:
        points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        if points:
            ax.plot(*zip(*points), label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"{rows[0]['stage'] if rows else ''} losses")
    if keys:
        ax.legend()
    fig.tight_layout()
    png_path = Path(png_path)
    tmp = png_path.with_name(f".{png_path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png_path)
    return png_path


def write_json_atomic(path: str | Path, value: Any) -> None:
    """Write JSON through a temp file and rename (run summaries, eval results)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def quiet_trainer_logs(trainer: Any) -> None:
    """Keep a Trainer's progress bar (stderr) but not its log dicts on stdout (``--json`` owns stdout)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class QuietProgress(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            return None

    trainer.remove_callback(PrinterCallback)
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(QuietProgress())
