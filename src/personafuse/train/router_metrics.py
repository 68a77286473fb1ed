"""Scores of a persona router against activation labels: per-trait 3-class accuracy and macro-F1.

Classes per trait (``personafuse.traits.trait_class``): 0 = a ≤ -1/3 (the minus pole), 1 = in between (not
activated), 2 = a ≥ 1/3 (the plus pole). Pure functions over lists of numbers; the stage-2 recipe feeds them
the head's activations (trained, or untrained = zero-shot) and a constant baseline.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from personafuse.traits import POLES, TRAITS, trait_class

__all__ = [
    "CLASSES",
    "accuracy",
    "activated_gate_mass",
    "format_table",
    "macro_f1",
    "majority_classes",
    "score_classes",
]

CLASSES: tuple[int, ...] = (0, 1, 2)
"""0: minus pole, 1: not activated, 2: plus pole."""


def accuracy(predicted: Sequence[int], gold: Sequence[int]) -> float:
    """Share of equal labels. ``accuracy([0, 1, 2, 2], [0, 1, 1, 2]) = 3/4``.

    Raises:
        ValueError: the sequences differ in length or are empty.
    """
    _check_pair(predicted, gold)
    return sum(p == g for p, g in zip(predicted, gold)) / len(gold)


def macro_f1(predicted: Sequence[int], gold: Sequence[int]) -> float:
    """Unweighted mean of the per-class F1 over the classes that occur in ``gold`` or ``predicted``.

    F1_c = 2·TP_c / (2·TP_c + FP_c + FN_c). A class that occurs in neither list is left out (scikit-learn's
    default ``labels``): a trait whose val split has no plus-pole context is scored over the other classes,
    and a predictor is not rewarded for never predicting a class nobody has.

    Hand derivation: predicted (0, 1, 1, 2), gold (0, 1, 2, 2). Class 0: TP 1, FP 0, FN 0 -> 1. Class 1:
    TP 1, FP 1, FN 0 -> 2/3. Class 2: TP 1, FP 0, FN 1 -> 2/3. Mean = (1 + 2/3 + 2/3) / 3 = 7/9.

    Raises:
        ValueError: the sequences differ in length or are empty.
    """
    _check_pair(predicted, gold)
    scores = []
    for cls in sorted(set(predicted) | set(gold)):
        tp = sum(p == cls and g == cls for p, g in zip(predicted, gold))
        fp = sum(p == cls and g != cls for p, g in zip(predicted, gold))
        fn = sum(p != cls and g == cls for p, g in zip(predicted, gold))
        scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores)


def majority_classes(activations: Sequence[Sequence[float]]) -> list[int]:
    """The most frequent class of each trait over ``activations`` ([n][5]); ties go to the lower class.

    Example: O values (-0.5, 0.0, 0.1) -> classes (0, 1, 1) -> majority 1.
    """
    if not activations:
        raise ValueError("majority_classes needs at least one activation")
    out = []
    for t in range(len(TRAITS)):
        counts = Counter(trait_class(row[t]) for row in activations)
        out.append(max(CLASSES, key=lambda c: (counts[c], -c)))
    return out


def score_classes(
    predicted: Sequence[Sequence[float]] | Sequence[Sequence[int]],
    gold: Sequence[Sequence[float]],
    *,
    predicted_are_classes: bool = False,
) -> dict[str, dict[str, float]]:
    """Per-trait accuracy and macro-F1, plus their mean over the five traits.

    Args:
        predicted: [n][5] activations (or classes when ``predicted_are_classes``).
        gold: [n][5] activation labels.
        predicted_are_classes: ``predicted`` already holds classes 0/1/2.

    Returns:
        ``{"O": {"accuracy", "macro_f1"}, ..., "N": {...}, "mean": {...}}``.
    """
    if len(predicted) != len(gold):
        raise ValueError(f"predicted has {len(predicted)} rows, gold {len(gold)}")
    out: dict[str, dict[str, float]] = {}
    for t, trait in enumerate(TRAITS):
        gold_t = [trait_class(row[t]) for row in gold]
        pred_t = [int(row[t]) if predicted_are_classes else trait_class(row[t]) for row in predicted]
        out[trait] = {"accuracy": accuracy(pred_t, gold_t), "macro_f1": macro_f1(pred_t, gold_t)}
    out["mean"] = {key: sum(out[t][key] for t in TRAITS) / len(TRAITS) for key in ("accuracy", "macro_f1")}
    return out


def activated_gate_mass(gates: Sequence[Sequence[float]], gold: Sequence[Sequence[float]]) -> float:
    """Mean share of the gates that falls on the labels' activated poles (contexts without one are skipped).

    Example: gates with 0.6 on A+ and 0.4 spread elsewhere, gold activating only A+ -> 0.6.
    """
    from personafuse.traits import activated_poles

    shares = []
    for row, labels in zip(gates, gold):
        poles = activated_poles(dict(zip(TRAITS, labels)))
        if poles:
            total = sum(row)
            shares.append(sum(row[POLES.index(p)] for p in poles) / total if total > 0 else 0.0)
    return sum(shares) / len(shares) if shares else 0.0


def format_table(results: dict[str, dict[str, dict[str, float]]], key: str = "macro_f1") -> str:
    """A markdown table: one row per scorer (e.g. trained / zero_shot / constant), one column per trait + mean."""
    header = "| " + " | ".join(["router", *TRAITS, "mean"]) + " |"
    rule = "|" + "---|" * (len(TRAITS) + 2)
    rows = [
        "| " + " | ".join([name, *(f"{scores[t][key]:.3f}" for t in (*TRAITS, "mean"))]) + " |"
        for name, scores in results.items()
    ]
    return "\n".join([header, rule, *rows])


def _check_pair(predicted: Sequence[int], gold: Sequence[int]) -> None:
    if len(predicted) != len(gold):
        raise ValueError(f"predicted has {len(predicted)} labels, gold {len(gold)}")
    if not gold:
        raise ValueError("no labels to score")
