"""Confidence intervals for the rates the tasks report."""

from __future__ import annotations

import math


def wilson_interval(successes: float, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a proportion (default 95%).

    With p = successes / n:  centre = (p + z²/2n) / (1 + z²/n),
    half-width = z / (1 + z²/n) * sqrt(p(1-p)/n + z²/4n²).
    Unlike the normal approximation it stays inside [0, 1] and is sensible at p = 0 or 1 and for small n
    (Wilson 1927; Brown, Cai & DasGupta 2001). ``successes`` may be fractional (ties counted as half a win).

    Hand values (z = 1.96): 5/10 -> (0.2366, 0.7634); 0/10 -> (0, 0.2775); 10/10 -> (0.7225, 1).

    Raises:
        ValueError: n < 1 or successes outside [0, n].
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    p = successes / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)
