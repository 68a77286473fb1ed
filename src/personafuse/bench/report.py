"""Benchmark output: JSON, a markdown table and a PNG bar chart, written atomically to one folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from personafuse.train.metrics import write_json_atomic


def markdown_table(result: dict[str, Any]) -> str:
    """The summary rows as a markdown table (value, bound, target, met)."""
    env = result["environment"]
    lines = [
        f"Model `{result['model']['name']}` ({result['model']['layers']} layers, hidden {result['model']['hidden_size']}, "
        f"{result['model']['adapted_linears']} adapted linears, 10 experts r={result['config']['rank']}); "
        f"device {env['device']} ({env['device_name']}), {env['threads']} threads; torch {env['versions']['torch']}.",
        "",
        "| measure | batch | value | bound | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["summary"]:
        bound = f"{row['bound']:.3f}" if "bound" in row else ""
        target = f"{row['target']:g}" if "target" in row else ""
        met = {True: "yes", False: "**no**"}.get(row.get("met"), "")
        lines.append(f"| {row['measure']} | {row['batch']} | {row['value']:.3f} | {bound} | {target} | {met} |")
    ttft, switching = result.get("ttft"), result.get("switching")
    if ttft:
        lines += ["", "Time to first token (batch 1): " + ", ".join(
            f"{k} {v * 1000:.1f} ms" for k, v in ttft.items() if k.endswith("_s")) + "."]  # fmt: skip
    if switching:
        lines += ["Persona switch: " + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in switching.items()) + "."]
    memory = result.get("memory")
    if memory:
        lines += [f"Memory: experts {memory['expert_param_bytes'] / 2**20:.1f} MiB = "
                  f"{100 * memory['expert_share_of_params']:.1f}% of the base parameters; "
                  f"process RSS {memory['rss_bytes'] / 2**20:.0f} MiB."]  # fmt: skip
    if "xlora_error" in result:
        lines += ["", f"X-LoRA: {result['xlora_error']}"]
    return "\n".join(lines) + "\n"


def bar_chart(result: dict[str, Any], path: Path) -> None:
    """Decode throughput ratio per mode and batch, with the bound as a marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    decode = result["decode"]
    batches = list(decode)
    modes = list(dict.fromkeys(m for b in batches for m in decode[b] if m != "base"))
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(len(batches), 1)
    for i, batch in enumerate(batches):
        values = [decode[batch][m]["ratio_vs_base"] if m in decode[batch] else 0.0 for m in modes]
        xs = [j + i * width for j in range(len(modes))]
        ax.bar(xs, values, width=width, label=f"batch {batch}")
    for j, mode in enumerate(modes):
        bound = result["bounds"].get(mode, {}).get("bound") if mode != "merged" else 1.0
        if bound:
            ax.plot([j - width / 2, j + width * len(batches) - width / 2], [bound, bound], "k--", linewidth=1)
    ax.axhline(1.0, color="grey", linewidth=0.5)
    ax.set_xticks([j + width * (len(batches) - 1) / 2 for j in range(len(modes))], modes)
    ax.set_ylabel("decode tokens/s vs base")
    ax.set_title(f"PersonaFuse decode throughput ({result['model']['name']}, {result['environment']['device']})")
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def write_report(result: dict[str, Any], folder: str | Path, stem: str = "bench") -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` into ``folder``; return their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / f"{stem}.json", "markdown": folder / f"{stem}.md", "png": folder / f"{stem}.png"}
    write_json_atomic(paths["json"], result)
    tmp = paths["markdown"].with_name(f".{paths['markdown'].name}.tmp")
    tmp.write_text(markdown_table(result))
    os.replace(tmp, paths["markdown"])
    if result.get("decode"):
        bar_chart(result, paths["png"])
    return paths
