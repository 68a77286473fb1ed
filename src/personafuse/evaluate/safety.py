"""Safety: do the personas keep the base model's refusals, without refusing harmless requests?

Harmful sets (refusal rate, higher is safer): HarmBench standard behaviours (200; ``--harmbench-contextual`` adds
the 100 contextual ones with their context), AdvBench harmful behaviours (520) and StrongREJECT forbidden prompts
(313). Benign set (over-refusal rate, lower is better): :data:`~personafuse.evaluate.benign_prompts.BENIGN_PROMPTS`
or ``--benign-file``. Each prompt is sent as one user turn, the reply is generated greedily, and
:func:`~personafuse.evaluate.refusal.is_refusal` decides. The A- ("blunt") and N+ ("worried") experts are the ones
to watch: a persona must change tone, never the safety behaviour.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personafuse.evaluate.benign_prompts import BENIGN_PROMPTS
from personafuse.evaluate.refusal import refusal_reason
from personafuse.evaluate.task import (
    MissingDataError,
    Task,
    TaskConfig,
    build_config,
    data_file,
    find_data_file,
    register_task,
    select_items,
)

HARMFUL_SETS: dict[str, str] = {
    "harmbench": "harmbench_behaviors_text_all.csv",
    "advbench": "advbench_behaviors.csv",
    "strongreject": "strongreject_dataset.csv",
}
"""Harmful prompt sets and their file names (HarmBench's data folder layout)."""
ALL_SETS = (*HARMFUL_SETS, "benign")
_WHAT = "HarmBench / AdvBench / StrongREJECT CSVs (HarmBench's data/behavior_datasets)"


@dataclass
class SafetyConfig(TaskConfig):
    """Options of the ``safety`` task."""

    sets: str = "harmbench,advbench,strongreject,benign"
    """Comma-separated prompt sets; --limit applies to each."""
    benign_file: str | None = None
    """Benign prompts (one per line, or JSONL with "prompt") instead of the built-in fifty."""
    harmbench_contextual: bool = False
    """Also ask HarmBench's contextual behaviours (context + request)."""
    max_new_tokens: int = 96
    """Reply length; refusals show in the opening."""

    def problems(self) -> list[str]:
        """See :meth:`TaskConfig.problems`."""
        out = super().problems()
        unknown = [s for s in self.set_list if s not in ALL_SETS]
        if unknown or not self.set_list:
            out.append(
                f"--sets {self.sets!r} has unknown or no sets {unknown}; use a comma list of {', '.join(ALL_SETS)}"
            )
        if self.max_new_tokens < 1:
            out.append(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        return out

    @property
    def set_list(self) -> list[str]:
        """The sets in the order given."""
        return [s.strip() for s in self.sets.split(",") if s.strip()]


@dataclass(frozen=True)
class SafetyItem:
    """One prompt of one set."""

    key: str
    set: str
    prompt: str
    category: str


def _harmbench(path: Path, contextual: bool) -> list[SafetyItem]:
    items = []
    for row in _read(path):
        kind = row["FunctionalCategory"]
        if kind == "standard" or (contextual and kind == "contextual"):
            prompt = f"{row['ContextString']}\n\n---\n\n{row['Behavior']}" if kind == "contextual" else row["Behavior"]
            items.append(SafetyItem(f"harmbench-{row['BehaviorID']}", "harmbench", prompt, row["SemanticCategory"]))
    return items


def _advbench(path: Path) -> list[SafetyItem]:
    return [SafetyItem(f"advbench-{r['BehaviorID']}", "advbench", r["Behavior"], r.get("Category") or "")
            for r in _read(path)]  # fmt: skip


def _strongreject(path: Path) -> list[SafetyItem]:
    return [SafetyItem(f"strongreject-{i}", "strongreject", r["forbidden_prompt"], r["category"])
            for i, r in enumerate(_read(path), start=1)]  # fmt: skip


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def read_benign(path: str | Path) -> list[str]:
    """Prompts from a text file (one per line) or JSONL (``prompt`` field).

    Raises:
        MissingDataError: the file does not exist or holds no prompt.
    """
    import json

    path = Path(path)
    if not path.is_file():
        raise MissingDataError(f"--benign-file {path} does not exist; give one prompt per line or JSONL with 'prompt'")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    prompts = [str(json.loads(line)["prompt"]) if line.startswith("{") else line for line in lines]
    if not prompts:
        raise MissingDataError(f"--benign-file {path} holds no prompt")
    return prompts


@register_task
class Safety(Task):
    """Refusal rate on harmful prompts and over-refusal rate on benign ones."""

    name = "safety"
    config_class = SafetyConfig
    headline = "refusal_harmful"
    config: SafetyConfig

    @classmethod
    def load(cls, path: str | Path | None, limit: int | None = None, seed: int = 0, **options: Any) -> Safety:
        """Read the chosen sets (harmful CSVs under ``path``; benign built in or from ``--benign-file``).

        Raises:
            MissingDataError: a harmful set's CSV is not there.
        """
        config = build_config(SafetyConfig, cls.name, {"limit": limit, "seed": seed, **options})
        items: list[SafetyItem] = []
        files = []
        for name in config.set_list:
            if name == "benign":
                if config.benign_file:
                    prompts = read_benign(config.benign_file)
                    files.append(data_file(config.benign_file))
                else:
                    prompts = list(BENIGN_PROMPTS)
                built = [SafetyItem(f"benign-{i}", "benign", p, "") for i, p in enumerate(prompts, start=1)]
            else:
                found = find_data_file(path, HARMFUL_SETS[name], "safety", cls.name, _WHAT)
                files.append(data_file(found))
                if name == "harmbench":
                    built = _harmbench(found, config.harmbench_contextual)
                elif name == "advbench":
                    built = _advbench(found)
                else:
                    built = _strongreject(found)
            items.extend(select_items(built, config.limit, config.seed))
        return cls(config, items, files)

    @staticmethod
    def key(item: SafetyItem) -> str:
        """``<set>-<id>``."""
        return item.key

    def process(self, model: Any, items: Sequence[SafetyItem]) -> list[dict[str, Any]]:
        """Generate a reply per prompt and classify it."""
        replies = model.generate([[{"role": "user", "content": i.prompt}] for i in items], self.config.max_new_tokens)
        rows = []
        for item, reply in zip(items, replies):
            reason = refusal_reason(reply)
            rows.append({"key": item.key, "set": item.set, "category": item.category, "prompt": item.prompt,
                         "reply": reply, "refused": reason is not None, "refusal_match": reason})  # fmt: skip
        return rows

    def score(self, rows: Sequence[dict[str, Any]]) -> tuple[dict[str, float], dict[str, int], dict[str, Any]]:
        """See :func:`score_safety`."""
        return score_safety(rows)


def score_safety(rows: Sequence[dict[str, Any]]) -> tuple[dict[str, float], dict[str, int], dict[str, Any]]:
    """Refusal rate per set, over harmful sets pooled (``refusal_harmful``), and ``over_refusal`` on benign.

    A harmful set's rate is refused / asked; the pooled rate weights each prompt equally.
    """
    by_set: dict[str, list[bool]] = defaultdict(list)
    by_category: dict[str, list[bool]] = defaultdict(list)
    for row in rows:
        by_set[row["set"]].append(bool(row["refused"]))
        if row["set"] != "benign":
            by_category[f"{row['set']}/{row['category'] or '-'}"].append(bool(row["refused"]))
    metrics: dict[str, float] = {}
    harmful = [v for s, values in by_set.items() if s != "benign" for v in values]
    if harmful:
        metrics["refusal_harmful"] = round(sum(harmful) / len(harmful), 6)
    for name in ALL_SETS:
        if name in by_set and name != "benign":
            metrics[f"refusal_{name}"] = round(sum(by_set[name]) / len(by_set[name]), 6)
    if "benign" in by_set:
        metrics["over_refusal"] = round(sum(by_set["benign"]) / len(by_set["benign"]), 6)
    counts = {name: len(values) for name, values in by_set.items()}
    details = {"refusal_by_category": {k: round(sum(v) / len(v), 6) for k, v in sorted(by_category.items())},
               "classifier": "personafuse.evaluate.refusal (keyword rule on the reply's opening)"}  # fmt: skip
    return metrics, counts, details
