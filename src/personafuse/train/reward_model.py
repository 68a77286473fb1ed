"""A small reward model trained on real human preferences: CounselChat answers ranked by upvotes.

    features(q, a) = [e_a, cos(e_q, e_a)] (+ log(1 + words(a)) / 6)    # e_* = frozen MiniLM embeddings
    score(q, a)    = w . features + b                                             # Bradley–Terry, ridge on w

The pairs come from :mod:`personafuse.train.counsel_pairs` (split by question group). The encoder is frozen and
the head linear, so training is seconds once the ~1.3k distinct texts are embedded. The ridge strength is chosen
by grouped cross-validation on the train+val questions; the model is then fitted on train+val, and the test
questions give the reported accuracy (next to "the longer answer wins" and chance).

A trained model is a folder: ``config.json`` (settings, encoder name, metrics, package version) and
``model.safetensors`` (the head). See docs/reward-model.md for the numbers and how they were measured.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from personafuse.data.split import split_bucket
from personafuse.train.counsel_pairs import CounselPair, grouped_bootstrap_ci, length_baseline_accuracy
from personafuse.train.preference_losses import bradley_terry_loss, pairwise_accuracy

logger = logging.getLogger(__name__)

__all__ = [
    "RewardHead",
    "RewardModel",
    "RewardModelConfig",
    "RewardModelResult",
    "answer_length_feature",
    "reward_features",
    "train_reward_model",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "personafuse-reward-model"


@dataclass
class RewardModelConfig:
    """How the reward model is built and trained."""

    encoder: str = "minilm-l6"
    """Frozen sentence encoder (alias, folder or hub id)."""
    hidden: int = 0
    """Hidden width of an MLP head (0: a linear head, the default; the data are too few for more)."""
    use_length: bool = False
    """Also give the head the answer's log word count. Off by default: upvotes follow length, and a reward that
    pays for length is gamed by RL (longer replies); the content-only model is the one RL should optimise."""
    epochs: int = 100
    """Full-batch Adam steps over the training pairs."""
    lr: float = 1e-2
    """Adam learning rate."""
    l2: float = 0.1
    """Ridge penalty on the head's embedding weights (not on the length weight or the bias); used as is when
    ``cv_folds`` is 0, else the best of ``l2_grid``."""
    l2_grid: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0])
    """Ridge strengths compared by grouped cross-validation on the train+val questions."""
    val_percent: int = 15
    """Share of question groups in the val split (fitted on with train once the ridge strength is chosen)."""
    test_percent: int = 15
    """Share of question groups held out for the reported accuracy."""
    cv_folds: int = 5
    """Grouped cross-validation folds over the train+val questions that choose ``l2`` (0: use ``l2``)."""
    seed: int = 0
    """Seed of the head's initialisation."""

    def __post_init__(self) -> None:
        from personafuse.errors import ConfigError

        problems = []
        if not isinstance(self.epochs, int) or self.epochs < 1:
            problems.append(f"reward_model.epochs must be a positive integer, got {self.epochs!r}")
        if not self.l2 >= 0 or not all(value >= 0 for value in self.l2_grid) or not self.l2_grid:
            problems.append(f"reward_model.l2={self.l2!r} and l2_grid={self.l2_grid!r} must be >= 0 (grid non-empty)")
        if not isinstance(self.hidden, int) or self.hidden < 0:
            problems.append(f"reward_model.hidden must be >= 0 (0 = linear head), got {self.hidden!r}")
        if not self.lr > 0:
            problems.append(f"reward_model.lr must be > 0, got {self.lr!r}")
        if not (0 < self.val_percent and 0 < self.test_percent and self.val_percent + self.test_percent < 100):
            problems.append(
                f"reward_model.val_percent={self.val_percent} and test_percent={self.test_percent} must be > 0 "
                "and sum to less than 100"
            )
        if self.cv_folds == 1 or self.cv_folds < 0:
            problems.append(f"reward_model.cv_folds must be 0 (off) or >= 2, got {self.cv_folds!r}")
        if problems:
            raise ConfigError("; ".join(problems))


# ---------------------------------------------------------------------------------------------------- maths
def answer_length_feature(texts: Sequence[str]) -> torch.Tensor:
    """``log(1 + words) / 6`` per text ([n]); ~1 for a 400-word answer, so it sits on the embeddings' scale."""
    return torch.tensor([math.log1p(len(t.split())) / 6.0 for t in texts], dtype=torch.float32)


def reward_features(questions: torch.Tensor, answers: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """The head's input: ``[e_a, cos(e_q, e_a)]`` (+ the length feature).

    The answer embedding carries its content and style; the cosine to the question its relevance. (An
    ``e_q * e_a`` block was tried and dropped: 384 more weights fitted noise on ~2k pairs.)

    Args:
        questions, answers: [n, d] unit-norm sentence embeddings.
        lengths: [n] answer-length feature, or None when the model does not use length.

    Returns:
        [n, d + 1] or [n, d + 2].
    """
    parts = [answers, (questions * answers).sum(dim=1, keepdim=True)]  # [n, d], [n, 1]
    if lengths is not None:
        parts.append(lengths.view(-1, 1).to(answers.dtype))
    return torch.cat(parts, dim=1)


class RewardHead(nn.Module):
    """MLP (or linear) map from :func:`reward_features` to one score."""

    def __init__(self, in_features: int, hidden: int) -> None:
        super().__init__()
        self.in_features = in_features
        if hidden:
            self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Linear(hidden, 1))
        else:
            self.net = nn.Sequential(nn.Linear(in_features, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[n, in_features] -> [n] scores."""
        return self.net(features).squeeze(-1)


class RewardModel:
    """Frozen sentence encoder + trained :class:`RewardHead`; ``score(questions, answers)`` -> [n]."""

    def __init__(
        self, encoder, head: RewardHead, config: RewardModelConfig, metrics: dict[str, Any] | None = None
    ) -> None:
        self.encoder = encoder
        self.head = head
        self.config = config
        self.metrics = metrics or {}

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm sentence embeddings [n, d] on the CPU."""
        with torch.no_grad():
            out = self.encoder.encode(list(texts), convert_to_tensor=True, normalize_embeddings=True,
                                      show_progress_bar=False, batch_size=32)  # fmt: skip
        return out.float().cpu()

    def features(self, questions: Sequence[str], answers: Sequence[str]) -> torch.Tensor:
        """:func:`reward_features` of the texts: [n, in_features]."""
        lengths = answer_length_feature(answers) if self.config.use_length else None
        return reward_features(self.embed(questions), self.embed(answers), lengths)

    def score(self, questions: Sequence[str], answers: Sequence[str]) -> torch.Tensor:
        """Reward of each (question, answer): [n] float32; higher = more likely upvoted."""
        if len(questions) != len(answers):
            raise ValueError(f"{len(questions)} questions for {len(answers)} answers; give one question per answer")
        if not answers:
            return torch.zeros(0)
        with torch.no_grad():
            return self.head(self.features(questions, answers)).float()

    def save(self, folder: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` atomically (temp folder, then rename)."""
        from personafuse import __version__
        from personafuse.atomic_io import staged_folder

        target = Path(folder)
        with staged_folder(target) as tmp:
            state = {k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}
            save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
            payload = {
                "format": FORMAT,
                "personafuse_version": __version__,
                "in_features": self.head.in_features,
                "config": asdict(self.config),
                "metrics": self.metrics,
            }
            (tmp / CONFIG_NAME).write_text(json.dumps(payload, indent=2) + "\n")
        return target

    @classmethod
    def load(cls, folder: str | Path, encoder=None) -> RewardModel:
        """Load a saved model; ``encoder`` reuses an already loaded sentence encoder of the same name.

        Raises:
            ModelLoadError: not a reward-model folder, or weights that do not fit.
        """
        from personafuse.errors import ModelLoadError
        from personafuse.models import load_encoder

        folder = Path(folder)
        config_path = folder / CONFIG_NAME
        if not config_path.is_file() or not (folder / WEIGHTS_NAME).is_file():
            raise ModelLoadError(
                f"{folder} is not a reward-model folder (needs {CONFIG_NAME} and {WEIGHTS_NAME}); train one with "
                "personafuse.train.reward_model.train_reward_model or set preference.reward_model=null"
            )
        payload = json.loads(config_path.read_text())
        if payload.get("format") != FORMAT:
            raise ModelLoadError(f"{config_path} has format {payload.get('format')!r}, expected {FORMAT!r}")
        config = RewardModelConfig(**payload["config"])
        head = RewardHead(int(payload["in_features"]), config.hidden)
        try:
            head.load_state_dict(load_file(str(folder / WEIGHTS_NAME)))
        except RuntimeError as exc:
            raise ModelLoadError(
                f"{folder / WEIGHTS_NAME} does not fit its config: {str(exc).splitlines()[0]}"
            ) from None
        head.eval()
        return cls(
            encoder if encoder is not None else load_encoder(config.encoder), head, config, payload.get("metrics")
        )


# ---------------------------------------------------------------------------------------------------- training
@dataclass
class RewardModelResult:
    """A trained reward model and its held-out numbers."""

    model: RewardModel
    metrics: dict[str, Any] = field(default_factory=dict)


def _pair_features(
    model: RewardModel, pairs: Sequence[CounselPair], cache: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen features [n, f], rejected features [n, f]); each distinct text is embedded once."""
    todo = sorted({t for p in pairs for t in (p.question, p.chosen, p.rejected)} - set(cache))
    if todo:
        for text, vector in zip(todo, model.embed(todo)):
            cache[text] = vector
    dim = model.head.in_features

    def build(answers: list[str]) -> torch.Tensor:
        if not pairs:
            return torch.zeros(0, dim)
        q = torch.stack([cache[p.question] for p in pairs])  # [n, d]
        a = torch.stack([cache[t] for t in answers])  # [n, d]
        return reward_features(q, a, answer_length_feature(answers) if model.config.use_length else None)

    return build([p.chosen for p in pairs]), build([p.rejected for p in pairs])


def _embedding_penalty(head: RewardHead, use_length: bool) -> torch.Tensor:
    """Sum of squares of the first layer's weights on the embedding features (the length column is free)."""
    weight = head.net[0].weight  # [out, in_features]
    return (weight[:, :-1] if use_length else weight).pow(2).sum()


def _fit(head: RewardHead, config: RewardModelConfig, train: tuple[torch.Tensor, torch.Tensor], l2: float) -> float:
    """Full-batch Bradley–Terry + ridge on the embedding weights for ``config.epochs`` steps; returns the fit loss."""
    torch.manual_seed(config.seed)
    for module in head.modules():
        if isinstance(module, nn.Linear):
            module.reset_parameters()
    optimizer = torch.optim.Adam(head.parameters(), lr=config.lr)
    chosen, rejected = train
    head.train()
    fit = torch.tensor(float("nan"))
    for _ in range(config.epochs):
        fit = bradley_terry_loss(head(chosen), head(rejected))
        loss = fit + l2 * _embedding_penalty(head, config.use_length)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    head.eval()
    return float(fit.detach())


def _accuracy(head: RewardHead, features: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return head(features[0]), head(features[1])


def train_reward_model(
    pairs: dict[str, list[CounselPair]],
    config: RewardModelConfig | None = None,
    encoder=None,
    output_dir: str | Path | None = None,
    embedding_cache: str | Path | None = None,
) -> RewardModelResult:
    """Choose the ridge strength by grouped CV on train+val, fit on train+val, report the test questions.

    Args:
        pairs: ``{"train", "val", "test"}`` lists from :func:`~personafuse.train.counsel_pairs.load_counsel_pairs`
            (or any pairs with the same fields).
        config: settings (defaults: MiniLM, linear head, content only).
        encoder: an already loaded sentence encoder named ``config.encoder`` (else it is loaded).
        output_dir: where to save the model folder (None: not saved).
        embedding_cache: a ``.pt`` file keeping the texts' embeddings between runs (embedding the ~1.3k
            distinct CounselChat texts is most of the cost on a CPU).

    Returns:
        The model and metrics: the CV accuracy of each ridge strength, and on the fitted (train+val) and test
        pairs the model's accuracy, "longer answer wins" and chance; on test also a question-level bootstrap
        95% interval and the question-averaged accuracy.

    Raises:
        UserError: no training pairs.
    """
    from personafuse.errors import UserError
    from personafuse.models import load_encoder

    config = config or RewardModelConfig()
    fit_pairs = list(pairs.get("train", [])) + list(pairs.get("val", []))
    if not fit_pairs:
        raise UserError(
            "the reward model got no training pairs; check data.counsel_chat points at the CounselChat CSV"
        )
    encoder = encoder if encoder is not None else load_encoder(config.encoder)
    dim = int(encoder.get_embedding_dimension() if hasattr(encoder, "get_embedding_dimension")
              else encoder.get_sentence_embedding_dimension())  # fmt: skip
    model = RewardModel(encoder, RewardHead(dim + 1 + int(config.use_length), config.hidden), config)
    cache = _read_cache(embedding_cache, config.encoder)
    known = len(cache)
    test_pairs = list(pairs.get("test", []))
    fit_features = _pair_features(model, fit_pairs, cache)
    test_features = _pair_features(model, test_pairs, cache)
    if embedding_cache is not None and len(cache) > known:
        _write_cache(embedding_cache, config.encoder, cache)

    metrics: dict[str, Any] = {"chance": 0.5, "use_length": config.use_length}
    l2 = config.l2
    if config.cv_folds:
        grid = {value: _cross_validate(model, fit_pairs, config, cache, value) for value in config.l2_grid}
        l2 = max(grid, key=lambda value: (grid[value]["accuracy"], -value))
        metrics["selection"] = {"l2": l2, "folds": config.cv_folds, "cv": {str(k): v for k, v in grid.items()}}
    fit_loss = _fit(model.head, config, fit_features, l2)
    for name, split_pairs, features in (("fit", fit_pairs, fit_features), ("test", test_pairs, test_features)):
        chosen, rejected = _accuracy(model.head, features)
        row: dict[str, Any] = {
            "pairs": len(split_pairs),
            "questions": len({p.group for p in split_pairs}),
            "accuracy": pairwise_accuracy(chosen, rejected),
            "length_baseline": length_baseline_accuracy(split_pairs),
            "loss": float(bradley_terry_loss(chosen, rejected)) if split_pairs else float("nan"),
        }
        if name == "test" and split_pairs:
            correct = (chosen > rejected).float().tolist()
            groups = [p.group for p in split_pairs]
            row["accuracy_ci95"] = list(grouped_bootstrap_ci(correct, groups, seed=config.seed))
            per_question: dict[str, list[float]] = {}
            for value, group in zip(correct, groups):
                per_question.setdefault(group, []).append(value)
            row["question_macro_accuracy"] = sum(sum(v) / len(v) for v in per_question.values()) / len(per_question)
        metrics[name] = row
    metrics["fit"]["train_loss"] = fit_loss
    model.metrics = metrics
    logger.info("reward model: test accuracy %.3f (longer wins %.3f, chance 0.5)", metrics["test"]["accuracy"],
                metrics["test"]["length_baseline"])  # fmt: skip
    if output_dir is not None:
        model.save(output_dir)
    return RewardModelResult(model, metrics)


def _read_cache(path: str | Path | None, encoder: str) -> dict[str, torch.Tensor]:
    if path is None or not Path(path).is_file():
        return {}
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError):  # a corrupt cache is just a miss
        return {}
    if not isinstance(saved, dict) or saved.get("encoder") != encoder:
        return {}
    return dict(zip(saved["texts"], saved["embeddings"]))


def _write_cache(path: str | Path, encoder: str, cache: dict[str, torch.Tensor]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    texts = sorted(cache)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"encoder": encoder, "texts": texts, "embeddings": torch.stack([cache[t] for t in texts])}, tmp)
    os.replace(tmp, path)


def _cross_validate(model: RewardModel, pairs: list[CounselPair], config: RewardModelConfig,
                    cache: dict[str, torch.Tensor], l2: float) -> dict[str, Any]:  # fmt: skip
    """Grouped k-fold over the questions of ``pairs``: accuracy pooled over the held-out folds."""
    fold_of = {g: split_bucket(f"counselchat-cv:{g}") % config.cv_folds for g in {p.group for p in pairs}}
    correct = total = length_correct = 0.0
    per_fold = []
    for fold in range(config.cv_folds):
        held = [p for p in pairs if fold_of[p.group] == fold]
        rest = [p for p in pairs if fold_of[p.group] != fold]
        if not held or not rest:
            continue
        head = RewardHead(model.head.in_features, config.hidden)
        _fit(head, config, _pair_features(model, rest, cache), l2)
        chosen, rejected = _accuracy(head, _pair_features(model, held, cache))
        hits = float((chosen > rejected).float().sum())
        per_fold.append(hits / len(held))
        correct += hits
        total += len(held)
        length_correct += length_baseline_accuracy(held) * len(held)
    return {
        "pairs": int(total),
        "accuracy": correct / total if total else float("nan"),
        "length_baseline": length_correct / total if total else float("nan"),
        "per_fold": per_fold,
    }
