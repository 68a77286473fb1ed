"""Trait and pole vocabulary, and the `Activation`, `Gates` and `Routing` value types.

Everything else in the package speaks in these names, so they live in one small module with no torch import
cost beyond what the callers already pay.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

TRAITS: tuple[str, ...] = ("O", "C", "E", "A", "N")
"""Big Five traits in their fixed order: openness, conscientiousness, extraversion, agreeableness, neuroticism."""

TRAIT_NAMES: dict[str, str] = {
    "O": "openness",
    "C": "conscientiousness",
    "E": "extraversion",
    "A": "agreeableness",
    "N": "neuroticism",
}

POLES: tuple[str, ...] = ("O+", "O-", "C+", "C-", "E+", "E-", "A+", "A-", "N+", "N-")
"""The ten experts, one per trait pole, in the fixed order used by every tensor of gates."""

ACTIVATION_THRESHOLD = 1.0 / 3.0
"""|activation| below this means the trait is not activated by the situation."""


class PersonaError(ValueError):
    """A persona, activation or gate value that the user gave is invalid; the message says how to fix it."""


def pole_index(pole: str) -> int:
    """Return the expert index of ``pole`` (``"A+"`` -> 6).

    Raises:
        PersonaError: if ``pole`` is not one of :data:`POLES`.
    """
    try:
        return POLES.index(pole)
    except ValueError:
        raise PersonaError(f"unknown pole {pole!r}; use one of {', '.join(POLES)}") from None


def activated_poles(activation: Mapping[str, float], threshold: float = ACTIVATION_THRESHOLD) -> list[str]:
    """Poles whose trait is activated, by sign: ``{"A": 0.8, "N": -0.5, "O": 0.1}`` -> ``["A+", "N-"]``."""
    out = []
    for trait in TRAITS:
        value = float(activation.get(trait, 0.0))
        if abs(value) >= threshold:
            out.append(f"{trait}{'+' if value > 0 else '-'}")
    return out


def trait_class(value: float, threshold: float = ACTIVATION_THRESHOLD) -> int:
    """3-class label of one activation: 0 for <= -threshold, 1 for in between, 2 for >= threshold."""
    if value <= -threshold:
        return 0
    if value >= threshold:
        return 2
    return 1


def _check_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PersonaError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if math.isnan(number) or math.isinf(number):
        raise PersonaError(f"{name} must be finite, got {value!r}")
    return number


@dataclass(frozen=True)
class Activation:
    """Signed activation per trait in [-1, 1]; sign = pole, magnitude = how strongly the situation calls for it."""

    values: tuple[float, float, float, float, float]

    def __post_init__(self) -> None:
        if len(self.values) != len(TRAITS):
            raise PersonaError(f"an activation has {len(TRAITS)} values (O C E A N), got {len(self.values)}")
        for trait, value in zip(TRAITS, self.values):
            number = _check_number(f"activation {trait}", value)
            if not -1.0 <= number <= 1.0:
                raise PersonaError(f"activation {trait}={number} is outside [-1, 1]; clip it to that range")

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, float]) -> Activation:
        """Build from ``{"O": .., "C": .., ...}``; missing traits are 0, unknown keys raise."""
        unknown = sorted(set(mapping) - set(TRAITS))
        if unknown:
            raise PersonaError(f"unknown trait(s) {unknown}; use {', '.join(TRAITS)}")
        return cls(tuple(float(_check_number(f"activation {t}", mapping.get(t, 0.0))) for t in TRAITS))  # type: ignore[arg-type]

    def as_dict(self) -> dict[str, float]:
        """``{"O": .., "C": .., "E": .., "A": .., "N": ..}``."""
        return dict(zip(TRAITS, self.values))

    def poles(self) -> list[str]:
        """Activated poles (|a| >= 1/3), see :func:`activated_poles`."""
        return activated_poles(self.as_dict())


@dataclass(frozen=True)
class Gates:
    """Non-negative weights over the ten experts, in :data:`POLES` order, summing to at most 1 (+ rounding)."""

    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.values) != len(POLES):
            raise PersonaError(f"gates need {len(POLES)} values ({' '.join(POLES)}), got {len(self.values)}")
        for pole, value in zip(POLES, self.values):
            number = _check_number(f"gate {pole}", value)
            if number < 0:
                raise PersonaError(f"gate {pole}={number} is negative; gates must be >= 0")
        total = sum(self.values)
        if total > 1.0 + 1e-4:
            raise PersonaError(f"gates sum to {total:.4f} > 1; normalise them or lower the intensity")

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, float], normalize: bool = False) -> Gates:
        """Build from ``{"A+": 0.7, "N-": 0.3}``; missing poles are 0.

        Args:
            mapping: pole -> weight.
            normalize: divide by the sum when it exceeds 1 instead of raising.

        Raises:
            PersonaError: unknown pole, negative/NaN value, or a sum above 1 without ``normalize``.
        """
        unknown = sorted(set(mapping) - set(POLES))
        if unknown:
            raise PersonaError(f"unknown pole(s) {unknown}; use {', '.join(POLES)}")
        values = [_check_number(f"gate {p}", mapping.get(p, 0.0)) for p in POLES]
        for pole, value in zip(POLES, values):
            if value < 0:
                raise PersonaError(f"gate {pole}={value} is negative; gates must be >= 0")
        total = sum(values)
        if normalize and total > 1.0:
            values = [v / total for v in values]
        return cls(tuple(values))

    @classmethod
    def from_sequence(cls, values: Sequence[float]) -> Gates:
        """Build from a length-10 sequence in :data:`POLES` order."""
        return cls(tuple(float(v) for v in values))

    def as_dict(self) -> dict[str, float]:
        """``{"O+": .., ..., "N-": ..}``."""
        return dict(zip(POLES, self.values))

    @property
    def intensity(self) -> float:
        """Sum of the gates: 1 for a full persona, 0 for the base model."""
        return float(sum(self.values))


@dataclass(frozen=True)
class Routing:
    """What the router decided for one context: the activation it predicted and the gates it chose."""

    activation: Activation
    gates: Gates
    text: str = field(default="", compare=False)

    def as_dict(self) -> dict[str, dict[str, float]]:
        """JSON-ready ``{"activations": {...}, "gates": {...}}``."""
        return {
            "activations": {k: round(v, 6) for k, v in self.activation.as_dict().items()},
            "gates": {k: round(v, 6) for k, v in self.gates.as_dict().items()},
        }


def parse_persona_spec(spec: str) -> Gates:
    """Parse the CLI form ``"A+=0.7,N-=0.3"`` into :class:`Gates`.

    Raises:
        PersonaError: on a malformed item, unknown pole or bad number.
    """
    if not spec.strip():
        raise PersonaError("empty --persona; write it as POLE=WEIGHT pairs, e.g. 'A+=0.7,N-=0.3'")
    mapping: dict[str, float] = {}
    for item in spec.split(","):
        pole, sep, weight = item.strip().partition("=")
        if not sep:
            raise PersonaError(f"--persona item {item.strip()!r} lacks '='; write it as POLE=WEIGHT, e.g. 'A+=0.7'")
        try:
            mapping[pole.strip()] = float(weight)
        except ValueError:
            raise PersonaError(f"--persona weight {weight.strip()!r} for {pole.strip()} is not a number") from None
    return Gates.from_mapping(mapping)
