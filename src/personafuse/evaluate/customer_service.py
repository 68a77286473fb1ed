"""Customer service: replies to customer reviews and support messages, scored like ``counseling`` plus a reference.

    personafuse eval customer_service --model ckpt/ --data data/seed --reward-model DIR
    personafuse eval customer_service --model ckpt/ --data my_reviews.jsonl --counsel-chat ../shared/data/counsel_chat/20200325_counsel_chat.csv

``--data`` is the seed corpus folder (every ``*.jsonl``; records of ``--domain`` in ``--split``, default the
customer_service test split), one JSONL of situation records (docs/data.md), or a JSONL of review lines
``{"review": "...", "id"?, "activation"?: {O..N}, "ideal"?, "rejected"?}``; a review is asked as "help me reply
to this customer review". Records without a ``split`` or ``domain`` field are kept whatever the filters.

Scores per reply (:mod:`personafuse.evaluate.reply_scoring`): the CounselChat reward model (trained on counselling
answers: a weak, out-of-domain signal here), persona consistency with the record's **labelled** activation (the
router's where there is no label), an optional judge rubric (professionalism, empathy, resolution), and, where the
record has an ``ideal`` and a ``rejected`` reply, a cheap reference signal: the cosine of the reply to each in the
sentence encoder's space; ``closer_to_ideal`` is the share of replies closer to the ideal (ties half).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from personafuse.errors import UserError
from personafuse.evaluate.models import Messages
from personafuse.evaluate.reply_scoring import (
    SERVICE_RUBRIC,
    ReplyScorer,
    ReplyTaskConfig,
    mean_metrics,
    rate_metrics,
    resolve_reward_model,
    scorer_files,
    summarise_replies,
)
from personafuse.evaluate.task import MissingDataError, Task, build_config, data_file, register_task, select_items
from personafuse.traits import TRAITS

REVIEW_PROMPT = 'Can you help me reply to this customer review of my business?\n\n"{review}"'
"""How a ``{"review": ...}`` line is asked."""
_DATA_HINT = ('the seed corpus folder (data/seed), a JSONL of situation records, or a JSONL of {"review": ...} '
              "lines")  # fmt: skip


@dataclass
class CustomerServiceConfig(ReplyTaskConfig):
    """Options of the ``customer_service`` task."""

    split: Literal["test", "val", "train", "all"] = "test"
    """Records of this split (records without a split field are always kept)."""
    domain: str = "customer_service"
    """Situation records of this domain ("all": every domain; review lines are always kept)."""
    counsel_chat: str | None = None
    """The CounselChat CSV (20200325_counsel_chat.csv) to train the reward model on when --reward-model is
    omitted (cached under $PERSONAFUSE_HOME/reward_models, so later runs reuse it)."""


@dataclass(frozen=True)
class ServiceItem:
    """One conversation to reply to, with what the data knows about a good reply."""

    key: str
    messages: tuple[dict[str, str], ...]
    source: str
    """``record`` (a situation record) or ``review`` (a review line)."""
    domain: str = ""
    activation: tuple[float, ...] | None = None
    """Labelled activation in trait order O C E A N, if any."""
    ideal: str | None = None
    rejected: str | None = None


# ---------------------------------------------------------------------------------------------------- pure rules
def closer_to_ideal(sim_ideal: float, sim_rejected: float) -> float:
    """1 if the reply is closer (higher cosine) to the ideal reply than to the rejected one, 0 if farther, 0.5 on a
    tie (compared at 6 decimals, so float noise is a tie rather than a coin flip)."""
    a, b = round(sim_ideal, 6), round(sim_rejected, 6)
    return 1.0 if a > b else 0.0 if a < b else 0.5


def score_service(rows: Sequence[dict[str, Any]]) -> tuple[dict[str, float], dict[str, int], dict[str, Any]]:
    """Reply means with 95% t intervals (:func:`~personafuse.evaluate.reply_scoring.summarise_replies`); over rows
    with references, ``closer_to_ideal`` (Wilson interval), the mean cosine to the ideal and to the rejected reply,
    and ``similarity_margin`` = mean(ideal − rejected) with its t interval."""
    metrics, counts = summarise_replies(rows, list(SERVICE_RUBRIC.criteria))
    refs = [r for r in rows if r.get("closer_to_ideal") is not None]
    metrics |= rate_metrics("closer_to_ideal", [r["closer_to_ideal"] for r in refs])
    metrics |= mean_metrics("similarity_margin", [r["similarity_ideal"] - r["similarity_rejected"] for r in refs])
    for side in ("ideal", "rejected"):
        metrics |= {k: v for k, v in mean_metrics(f"similarity_{side}", [r[f"similarity_{side}"] for r in refs]).items()
                    if k == f"similarity_{side}"}  # fmt: skip
    counts |= {"with_reference": len(refs), "labelled": sum(r["activation_source"] == "label" for r in rows)}
    details = {"ci": "95% Student-t for means, Wilson for closer_to_ideal (ties half)",
               "rubric": dict(SERVICE_RUBRIC.criteria),
               "similarity": "cosine of unit-norm sentence-encoder embeddings (the persona router's encoder)"}  # fmt: skip
    return metrics, counts, details


# ---------------------------------------------------------------------------------------------------- loading
def _activation(value: Any, where: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or any(not isinstance(value.get(t), (int, float)) for t in TRAITS):
        raise UserError(f"{where}: activation must map every trait {', '.join(TRAITS)} to a number, got {value!r}")
    return tuple(float(value[t]) for t in TRAITS)


def _messages(value: Any, where: str) -> tuple[dict[str, str], ...]:
    ok = (
        isinstance(value, list)
        and value
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
        )
    )
    if not ok or value[-1]["role"] != "user":
        raise UserError(f"{where}: messages must be a non-empty list of {{role, content}} ending with a user turn")
    return tuple({"role": m["role"], "content": m["content"]} for m in value)


def _references(row: dict[str, Any]) -> tuple[str | None, str | None]:
    ideal, rejected = row.get("ideal"), row.get("rejected")
    if isinstance(ideal, str) and isinstance(rejected, str) and ideal.strip() and rejected.strip():
        return ideal, rejected
    return None, None


def read_service_file(path: Path, domain: str, split: str) -> list[ServiceItem]:
    """The items of one JSONL file (situation records and/or review lines) that pass the domain and split filters.

    Raises:
        UserError: an unreadable line, or a line that is neither a record nor a review (named ``file:line``).
    """
    from personafuse.data.jsonl import JsonlError, iter_jsonl

    items = []
    try:
        for line in iter_jsonl(path):
            row, where = line.value, f"{path}:{line.line}"
            if split != "all" and row.get("split") not in (None, split):
                continue
            ideal, rejected = _references(row)
            activation = _activation(row.get("activation"), where)
            if isinstance(row.get("review"), str) and row["review"].strip():
                key = str(row.get("id") or f"{path.stem}-{line.line}")
                messages = ({"role": "user", "content": REVIEW_PROMPT.format(review=row["review"].strip())},)
                items.append(ServiceItem(key, messages, "review", "", activation, ideal, rejected))
            elif "messages" in row:
                if domain != "all" and row.get("domain") not in (None, domain):
                    continue
                key = str(row.get("id") or f"{path.stem}-{line.line}")
                items.append(ServiceItem(key, _messages(row["messages"], where), "record", str(row.get("domain") or ""),
                                         activation, ideal, rejected))  # fmt: skip
            else:
                raise UserError(f'{where}: neither a situation record ("messages") nor a review line ("review")')
    except JsonlError as exc:
        raise UserError(f"{exc}; fix that line of --data") from None
    return items


@register_task
class CustomerService(Task):
    """Replies to customer reviews: reward model, persona consistency vs labels, reference similarity, judge."""

    name = "customer_service"
    config_class = CustomerServiceConfig
    headline = "closer_to_ideal"
    config: CustomerServiceConfig

    def __init__(self, config: CustomerServiceConfig, items: Sequence[ServiceItem], files: Sequence[Any],
                 reward_model: Path | None = None) -> None:  # fmt: skip
        super().__init__(config, items, files)
        self.reward_model = reward_model
        self.scorer: ReplyScorer | None = None
        """The loaded scorers; built on first use, or set it to reuse loaded models or judge with any EvalModel."""

    @classmethod
    def load(cls, path: str | Path | None, limit: int | None = None, seed: int = 0,
             **options: Any) -> CustomerService:  # fmt: skip
        """Read the records / reviews, filter them, resolve (or train) the reward model.

        Raises:
            MissingDataError: no --data, nothing to evaluate in it, or no usable reward model.
            UserError: a bad line, or a key used twice.
        """
        config = build_config(CustomerServiceConfig, cls.name, {"limit": limit, "seed": seed, **options})
        if path is None:
            raise MissingDataError(f"task {cls.name} needs --data PATH: {_DATA_HINT}")
        root = Path(path).expanduser()
        if not root.exists():
            raise MissingDataError(f"--data {path} does not exist; task {cls.name} needs {_DATA_HINT}")
        sources = sorted(root.glob("*.jsonl")) if root.is_dir() else [root]
        if not sources:
            raise MissingDataError(f"--data {path} holds no *.jsonl file; task {cls.name} needs {_DATA_HINT}")
        items, used = [], []
        for source in sources:
            found = read_service_file(source, config.domain, config.split)
            items += found
            used += [source] if found else []
        if not items:
            raise MissingDataError(
                f"--data {path} has no item of domain {config.domain!r} in split {config.split!r}; try --split all "
                "or --domain all, or give review lines"
            )
        keys = [i.key for i in items]
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        if repeated:
            raise UserError(f"--data {path}: the id(s) {repeated[:5]} occur more than once; ids must be unique")
        counsel = config.counsel_chat
        if counsel is not None and not Path(counsel).expanduser().is_file():
            raise MissingDataError(f"--counsel-chat {counsel} does not exist; give 20200325_counsel_chat.csv")
        folder = resolve_reward_model(config.reward_model, counsel, config.train_reward_model, cls.name)
        files = [data_file(s) for s in used] + scorer_files(folder, config.persona_router)
        return cls(config, select_items(items, config.limit, config.seed), files, folder)

    @staticmethod
    def key(item: ServiceItem) -> str:
        """The record's id, or ``<file stem>-<line>``."""
        return item.key

    def _scorer(self) -> ReplyScorer:
        if self.scorer is None:
            assert self.reward_model is not None, "load() resolves the reward model"
            self.scorer = ReplyScorer.build(self.config, self.reward_model, SERVICE_RUBRIC)
        return self.scorer

    def process(self, model: Any, items: Sequence[ServiceItem]) -> list[dict[str, Any]]:
        """Reply to each conversation, score the reply, and compare it with the references."""
        from personafuse.train.rewards import prompt_text

        scorer = self._scorer()
        convs: list[Messages] = [[dict(m) for m in i.messages] for i in items]
        replies = model.generate(convs, self.config.max_new_tokens)
        scored = scorer.score(convs, replies, [i.activation for i in items])
        with_refs = [n for n, i in enumerate(items) if i.ideal is not None]
        sims: dict[int, tuple[float, float]] = {}
        if with_refs:
            k = len(with_refs)
            vectors = scorer.embed(
                [replies[n] for n in with_refs]
                + [items[n].ideal or "" for n in with_refs]
                + [items[n].rejected or "" for n in with_refs]
            )  # [3k, d], unit norm
            reply_v, ideal_v, rejected_v = vectors[:k], vectors[k : 2 * k], vectors[2 * k :]  # each [k, d]
            to_ideal, to_rejected = (reply_v * ideal_v).sum(-1), (reply_v * rejected_v).sum(-1)  # [k]
            sims = {n: (float(a), float(b)) for n, a, b in zip(with_refs, to_ideal, to_rejected)}
        rows = []
        for n, (item, reply, row) in enumerate(zip(items, replies, scored)):
            out = {"key": item.key, "source": item.source, "domain": item.domain, "prompt": prompt_text(convs[n]),
                   "reply": reply, **row, "activation_source": "label" if item.activation is not None else "routed"}  # fmt: skip
            if n in sims:
                ideal, rejected = round(sims[n][0], 6), round(sims[n][1], 6)
                out |= {"similarity_ideal": ideal, "similarity_rejected": rejected,
                        "closer_to_ideal": closer_to_ideal(ideal, rejected)}  # fmt: skip
            rows.append(out)
        return rows

    def score(self, rows: Sequence[dict[str, Any]]) -> tuple[dict[str, float], dict[str, int], dict[str, Any]]:
        """See :func:`score_service`."""
        metrics, counts, details = score_service(rows)
        return metrics, counts, details | {"reward_model": str(self.reward_model),
                                           "reward_model_note": "trained on CounselChat answers (out of domain)"}  # fmt: skip
