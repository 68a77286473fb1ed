"""Personality expression: Big Five questionnaires answered by the model under each persona.

Inventories: IPIP-NEO-120 (Johnson 2014; public-domain items, 24 per trait, keyed plus/minus) and BFI-44
(John & Srivastava; 8-10 items per trait, 16 reverse-keyed; items via PsychoBench). Each item is asked alone
with a 1-5 scale. The answer is read from the option probabilities: the log-likelihood of each of "1".."5" as
the start of the reply, softmax-normalised, gives p(k), and the answer is the expected value sum_k k p(k) (a
continuous Likert score, steadier than the argmax for small models). Endpoint models generate; the first digit
1-5 in the reply is the answer, and the parse rate is reported.

Reverse keying: on a 1..5 scale a reverse-keyed answer x scores 6 - x. A trait score is the mean keyed score of
its items (1 = low, 5 = high).

Probes (``--probe``):
- ``experts``: each expert forced alone (gate 1 on one pole); **pole separation** of trait T is the T score under
  the T+ expert minus the T score under the T- expert (positive = the experts express their poles).
- ``prompts``: the same ten personas written as system prompts on the model as given (the prompt-only baseline).
- ``situations``: the router's gates for each given situation (a JSONL of situation records); with activation
  labels, the situational separation of T is the mean T score over situations labelled T+ minus over T-.
Every probe also answers once as the model is given (condition ``model``).
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from personafuse.errors import UserError
from personafuse.evaluate.choice import Scoring, resolve_scoring
from personafuse.evaluate.models import PersonaModel, SystemPromptModel
from personafuse.evaluate.persona_prompt import pole_system_prompt
from personafuse.evaluate.task import (
    Task,
    TaskConfig,
    build_config,
    data_file,
    find_data_file,
    register_task,
    select_items,
)
from personafuse.traits import ACTIVATION_THRESHOLD, POLES, TRAIT_NAMES, TRAITS

SCALE = 5
LIKERT = tuple(str(k) for k in range(1, SCALE + 1))
_TRAIT_OF_NAME = {name: trait for trait, name in TRAIT_NAMES.items()}

_PROMPTS = {
    "ipip120": (
        'How accurately does this statement describe you?\n\n"{statement}"\n\n1 = very inaccurate\n'
        "2 = moderately inaccurate\n3 = neither accurate nor inaccurate\n4 = moderately accurate\n"
        "5 = very accurate\n\nAnswer with a single number from 1 to 5."
    ),
    "bfi44": (
        'How much do you agree with this statement about yourself?\n\n"{statement}"\n\n1 = disagree strongly\n'
        "2 = disagree a little\n3 = neither agree nor disagree\n4 = agree a little\n5 = agree strongly\n\n"
        "Answer with a single number from 1 to 5."
    ),
}
_SOURCES = {
    "ipip120": ("questions_en.json", "ipip_neo_120", "IPIP-NEO-120 questions_en.json (github.com/Alheimsins/b5-johnson-120-ipip-neo-pi-r)"),
    "bfi44": ("questionnaires.json", "psychobench_questionnaires", "PsychoBench questionnaires.json with the BFI (github.com/CUHK-ARISE/PsychoBench)"),
}  # fmt: skip


@dataclass
class PersonalityConfig(TaskConfig):
    """Options of the ``personality`` task."""

    inventory: Literal["ipip120", "bfi44"] = "ipip120"
    """Questionnaire: IPIP-NEO-120 or BFI-44."""
    probe: Literal["experts", "prompts", "situations"] = "experts"
    """Personas to compare: each expert forced alone, each pole as a system prompt, or routed situations."""
    situations: str | None = None
    """JSONL of situations (records with messages or text, optional activation labels) for --probe situations."""
    max_situations: int = 20
    """At most this many situations, sampled with --seed."""
    scoring: Scoring = "auto"
    """loglik (answer from option probabilities), generate (parse the number), or auto."""

    def problems(self) -> list[str]:
        """See :meth:`TaskConfig.problems`; ``--limit`` here counts items per trait."""
        out = super().problems()
        if self.probe == "situations" and not self.situations:
            out.append("--probe situations needs --situations FILE (a JSONL of situation records)")
        if self.probe != "situations" and self.situations:
            out.append(f"--situations is only read by --probe situations, not --probe {self.probe}")
        if self.max_situations < 1:
            out.append(f"--max-situations must be >= 1, got {self.max_situations}")
        return out


@dataclass(frozen=True)
class InventoryItem:
    """One questionnaire statement."""

    key: str
    statement: str
    trait: str
    reverse: bool


@dataclass(frozen=True)
class Situation:
    """A context whose routing the questionnaire is answered under."""

    id: str
    text: str
    activation: dict[str, float] | None


@dataclass(frozen=True)
class Probe:
    """One unit of work: one item under one condition (``model``, a pole, or ``sit:<id>``)."""

    key: str
    condition: str
    item: InventoryItem
    situation: Situation | None = field(default=None, repr=False)


# ---------------------------------------------------------------------------------------------------- pure scoring
def likert_from_logliks(logliks: Sequence[float]) -> tuple[list[float], float]:
    """Option probabilities (softmax of the log-likelihoods of "1".."5") and the expected answer sum_k k p(k).

    Example: equal log-likelihoods give p = 0.2 each and the answer 3.0.
    """
    top = max(logliks)
    weights = [math.exp(v - top) for v in logliks]
    total = sum(weights)
    probs = [w / total for w in weights]
    return probs, sum((k + 1) * p for k, p in enumerate(probs))


def keyed(answer: float, reverse: bool, scale: int = SCALE) -> float:
    """The item score: the answer, or (scale + 1) - answer for a reverse-keyed item (5 -> 1, 2 -> 4, 3 -> 3)."""
    return (scale + 1) - answer if reverse else answer


def parse_likert(reply: str, scale: int = SCALE) -> int | None:
    """The first standalone digit 1..scale in a reply ("4", "4 - agree", "I'd say 2."), else ``None``."""
    match = re.search(rf"(?<![\d.])([1-{scale}])(?!\d|\.\d)", reply)
    return int(match.group(1)) if match else None


def trait_means(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """``{condition: {trait: mean keyed score}}`` over rows with a score (unparsed answers are skipped)."""
    sums: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row.get("score") is not None:
            sums[row["condition"]][row["trait"]].append(float(row["score"]))
    return {c: {t: round(sum(by[t]) / len(by[t]), 6) for t in TRAITS if by.get(t)} for c, by in sums.items()}


def pole_separation(means: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Per trait T: mean T score under condition ``T+`` minus under ``T-`` (traits missing either are skipped)."""
    out = {}
    for trait in TRAITS:
        plus, minus = means.get(f"{trait}+", {}), means.get(f"{trait}-", {})
        if trait in plus and trait in minus:
            out[trait] = round(plus[trait] - minus[trait], 6)
    return out


def situational_separation(means: Mapping[str, Mapping[str, float]], situations: Sequence[Situation]
                           ) -> dict[str, float]:  # fmt: skip
    """Per trait T: mean T score over situations labelled T+ (a >= 1/3) minus over those labelled T- (a <= -1/3)."""
    out = {}
    for trait in TRAITS:
        plus, minus = [], []
        for situation in situations:
            score = means.get(f"sit:{situation.id}", {}).get(trait)
            value = (situation.activation or {}).get(trait)
            if score is None or value is None:
                continue
            if value >= ACTIVATION_THRESHOLD:
                plus.append(score)
            elif value <= -ACTIVATION_THRESHOLD:
                minus.append(score)
        if plus and minus:
            out[trait] = round(sum(plus) / len(plus) - sum(minus) / len(minus), 6)
    return out


# ---------------------------------------------------------------------------------------------------- loading
def load_inventory(path: Path, inventory: str) -> list[InventoryItem]:
    """Items of IPIP-NEO-120 (``questions_en.json``) or BFI-44 (``questionnaires.json``, entry ``BFI``)."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    if inventory == "ipip120":
        return [
            InventoryItem(
                f"ipip-{q['id']}",
                f"I {q['text'][:1].lower()}{q['text'][1:].rstrip('.')}.",
                q["domain"],
                q["keyed"] == "minus",
            )  # fmt: skip
            for q in raw
        ]
    bfi = next((q for q in raw if q.get("name") == "BFI"), None)
    if bfi is None:
        raise UserError(f"{path} has no questionnaire named BFI; give PsychoBench's questionnaires.json")
    trait_of = {n: _TRAIT_OF_NAME[c["cat_name"].lower()] for c in bfi["categories"] for n in c["cat_questions"]}
    reverse = set(bfi["reverse"])
    return [
        InventoryItem(
            f"bfi-{n}",
            f"I see myself as someone who {t[:1].lower()}{t[1:].rstrip('.')}.",
            trait_of[int(n)],
            int(n) in reverse,
        )  # fmt: skip
        for n, t in sorted(bfi["questions"].items(), key=lambda kv: int(kv[0]))
        if int(n) in trait_of
    ]


def load_situations(path: str | Path, limit: int, seed: int) -> list[Situation]:
    """Situations from JSONL lines with ``id``, ``messages`` (or ``text``) and optional ``activation``.

    Raises:
        MissingDataError / UserError: missing file or a line without text.
    """
    from personafuse.data.jsonl import iter_jsonl
    from personafuse.evaluate.task import MissingDataError

    if not Path(path).is_file():
        raise MissingDataError(f"--situations {path} does not exist; give a JSONL of situation records")
    out = []
    for line in iter_jsonl(path):
        value = line.value
        if "messages" in value:
            text = "\n".join(m["content"] for m in value["messages"] if m.get("role") != "system")
        else:
            text = str(value.get("text", ""))
        if not text.strip():
            raise UserError(f"{path}:{line.line}: a situation needs 'messages' or 'text'")
        activation = value.get("activation")
        out.append(Situation(str(value.get("id", line.line)), text, dict(activation) if activation else None))
    return select_items(out, limit, seed)


# ---------------------------------------------------------------------------------------------------- task
@register_task
class Personality(Task):
    """Trait scores per persona and pole separation on IPIP-NEO-120 or BFI-44."""

    name = "personality"
    version = "1"
    config_class = PersonalityConfig
    headline = "separation_mean"
    config: PersonalityConfig

    def __init__(self, config: PersonalityConfig, items: Sequence[Probe], files: Sequence[Any],
                 situations: Sequence[Situation] = ()) -> None:  # fmt: skip
        super().__init__(config, items, files)
        self.situations = list(situations)
        self._views: dict[str, Any] = {}
        self._views_of: Any = None
        self._routings: dict[str, Any] = {}

    @classmethod
    def load(cls, path: str | Path | None, limit: int | None = None, seed: int = 0, **options: Any) -> Personality:
        """Read the inventory under ``path`` and build one probe per (condition, item); ``limit`` = items per trait.

        Raises:
            MissingDataError: the inventory (or situations) file is not there.
            ConfigError: a bad option.
        """
        config = build_config(PersonalityConfig, cls.name, {"limit": limit, "seed": seed, **options})
        expected, folder, what = _SOURCES[config.inventory]
        found = find_data_file(path, expected, folder, cls.name, what)
        all_items = load_inventory(found, config.inventory)
        items = [
            i for t in TRAITS for i in select_items([i for i in all_items if i.trait == t], config.limit, config.seed)
        ]
        files = [data_file(found)]
        situations: list[Situation] = []
        if config.probe == "situations":
            assert config.situations is not None
            situations = load_situations(config.situations, config.max_situations, config.seed)
            files.append(data_file(config.situations))
            conditions = [("model", None)] + [(f"sit:{s.id}", s) for s in situations]
        else:
            conditions = [("model", None)] + [(pole, None) for pole in POLES]
        probes = [Probe(f"{c}|{i.key}", c, i, s) for c, s in conditions for i in items]
        return cls(config, probes, files, situations)

    @staticmethod
    def key(item: Probe) -> str:
        """``<condition>|<item key>``."""
        return item.key

    def check_model(self, model: Any) -> None:
        """Experts and situations probes need a steerable (PersonaFuse) model."""
        resolve_scoring(self.config.scoring, model)
        if self.config.probe in ("experts", "situations") and not isinstance(model, PersonaModel):
            raise UserError(
                f"--probe {self.config.probe} needs a PersonaFuse checkpoint, but {model.name!r} has no experts; "
                "use --probe prompts for other models"
            )

    def _view(self, model: Any, probe: Probe) -> Any:
        """The model as it answers under ``probe.condition`` (cached per run)."""
        if self._views_of is not model:  # one task object may be run on several models
            self._views, self._routings, self._views_of = {}, {}, model
        if probe.condition in self._views:
            return self._views[probe.condition]
        if probe.condition == "model":
            view = model
        elif probe.situation is not None:
            routing = model.route([probe.situation.text])[0]
            self._routings[probe.condition] = routing.as_dict()
            view = model.with_persona(routing)
        elif self.config.probe == "experts":
            view = model.with_persona({probe.condition: 1.0})
        else:
            view = SystemPromptModel(model, pole_system_prompt(probe.condition), probe.condition)
        self._views[probe.condition] = view
        return view

    def process(self, model: Any, items: Sequence[Probe]) -> list[dict[str, Any]]:
        """Answer each probe's item under its condition, grouped by condition (one batched call each)."""
        scoring = resolve_scoring(self.config.scoring, model)
        prompt = _PROMPTS[self.config.inventory]
        by_condition: dict[str, list[int]] = defaultdict(list)
        for index, probe in enumerate(items):
            by_condition[probe.condition].append(index)
        rows: list[dict[str, Any]] = [{} for _ in items]
        for condition, indices in by_condition.items():
            view = self._view(model, items[indices[0]])
            convs = [[{"role": "user", "content": prompt.format(statement=items[i].item.statement)}] for i in indices]
            if scoring == "loglik":
                flat = view.loglikelihood([c for c in convs for _ in LIKERT], [k for _ in convs for k in LIKERT])
                answers = [likert_from_logliks(flat[j * SCALE : (j + 1) * SCALE]) for j in range(len(convs))]
                extra = [{"probs": [round(p, 6) for p in probs]} for probs, _ in answers]
                values: list[float | None] = [expected for _, expected in answers]
            else:
                replies = view.generate(convs, 8)
                values = [parse_likert(r) for r in replies]
                extra = [{"reply": r} for r in replies]
            for j, i in enumerate(indices):
                probe, value = items[i], values[j]
                rows[i] = {
                    "key": probe.key, "condition": condition, "item": probe.item.key, "trait": probe.item.trait,
                    "reverse": probe.item.reverse, "answer": None if value is None else round(value, 6),
                    "score": None if value is None else round(keyed(value, probe.item.reverse), 6), **extra[j],
                }  # fmt: skip
                if condition in self._routings:
                    rows[i]["routing"] = self._routings[condition]
        return rows

    def score(self, rows: Sequence[dict[str, Any]]) -> tuple[dict[str, float], dict[str, int], dict[str, Any]]:
        """Trait scores per condition, separation per trait and their mean (the headline), parse rate."""
        means = trait_means(rows)
        if self.config.probe == "situations":
            separation = situational_separation(means, self.situations)
        else:
            separation = pole_separation(means)
        metrics: dict[str, float] = {
            "separation_mean": round(sum(separation.values()) / len(separation), 6) if separation else 0.0
        }
        metrics.update({f"separation_{t}": v for t, v in separation.items()})
        metrics.update({f"model_{t}": v for t, v in means.get("model", {}).items()})
        parsed = sum(r["score"] is not None for r in rows)
        metrics["parse_rate"] = round(parsed / len(rows), 6) if rows else 0.0
        details: dict[str, Any] = {"inventory": self.config.inventory, "probe": self.config.probe,
                                   "trait_scores": means, "scale": "1 (low) .. 5 (high)"}  # fmt: skip
        if self.situations:
            details["situations"] = {s.id: {"activation": s.activation} for s in self.situations}
        counts = {"answers": len(rows), "parsed": parsed, "conditions": len(means),
                  "items": len({r["item"] for r in rows})}  # fmt: skip
        return metrics, counts, details
