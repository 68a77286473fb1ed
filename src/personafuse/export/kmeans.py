"""Seeded k-means (k-means++ initialisation, Lloyd iterations, best of several restarts) in plain torch.

Used to cluster the routing space of a corpus (each context's gates [10]) into K persona prototypes. Written
here rather than taken from scikit-learn so that the export has no extra dependency and is bit-for-bit
reproducible from a seed; the problem is tiny (hundreds of points, ten dimensions).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KMeansResult:
    """Centroids [k, d], each point's cluster [n] and the inertia (sum of squared distances to the centroid)."""

    centroids: torch.Tensor
    labels: torch.Tensor
    inertia: float


def nearest(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid (squared Euclidean distance; ties go to the lower index): [n]."""
    return torch.cdist(points, centroids).argmin(dim=1)


def _init_plus_plus(points: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ (Arthur & Vassilvitskii 2007): each next centre drawn with probability ∝ squared distance."""
    n = points.shape[0]
    first = int(torch.randint(n, (1,), generator=generator))
    centres = [points[first]]
    closest = ((points - points[first]) ** 2).sum(dim=1)  # [n]
    for _ in range(1, k):
        if float(closest.sum()) == 0.0:  # fewer distinct points than k: caught by the caller
            break
        pick = int(torch.multinomial(closest / closest.sum(), 1, generator=generator))
        centres.append(points[pick])
        closest = torch.minimum(closest, ((points - points[pick]) ** 2).sum(dim=1))
    return torch.stack(centres)  # [k, d]


def _lloyd(points: torch.Tensor, centroids: torch.Tensor, iterations: int) -> KMeansResult:
    labels = nearest(points, centroids)
    for _ in range(iterations):
        updated = centroids.clone()
        for cluster in range(centroids.shape[0]):
            members = points[labels == cluster]
            if members.shape[0]:
                updated[cluster] = members.mean(dim=0)
            else:  # an emptied cluster takes the point farthest from its own centroid
                far = ((points - centroids[labels]) ** 2).sum(dim=1).argmax()
                updated[cluster] = points[far]
        centroids = updated
        new_labels = nearest(points, centroids)
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
    inertia = float(((points - centroids[labels]) ** 2).sum())
    return KMeansResult(centroids, labels, inertia)


def kmeans(points: torch.Tensor, k: int, seed: int = 0, iterations: int = 100, restarts: int = 4) -> KMeansResult:
    """Cluster ``points`` [n, d] into ``k`` groups; deterministic for a given seed.

    The returned clusters are ordered by size (largest first, ties by centroid values), and each point's label
    is its nearest centroid, so ``labels == nearest(points, centroids)`` holds at the end.

    Args:
        points: [n, d] float tensor.
        k: number of clusters, 1 <= k <= number of distinct points.
        seed: seed of the k-means++ draws.
        iterations: Lloyd iterations per restart (stops early when no label changes).
        restarts: independent initialisations; the lowest inertia wins.

    Raises:
        ValueError: ``k`` outside 1..(number of distinct points), or ``points`` not 2-d.
    """
    if points.dim() != 2 or points.shape[0] == 0:
        raise ValueError(f"points must have shape [n, d] with n >= 1, got {tuple(points.shape)}")
    distinct = torch.unique(points, dim=0).shape[0]
    if not isinstance(k, int) or not 1 <= k <= distinct:
        raise ValueError(f"k must be an integer in 1..{distinct} (the number of distinct points), got {k!r}")
    data = points.to(torch.float64)
    generator = torch.Generator().manual_seed(seed)
    best: KMeansResult | None = None
    for _ in range(max(1, restarts)):
        result = _lloyd(data, _init_plus_plus(data, k, generator), iterations)
        if best is None or result.inertia < best.inertia - 1e-12:
            best = result
    assert best is not None
    sizes = torch.bincount(best.labels, minlength=k)
    order = sorted(range(k), key=lambda c: (-int(sizes[c]), best.centroids[c].tolist()))
    centroids = best.centroids[order]
    labels = nearest(data, centroids)
    return KMeansResult(centroids.to(points.dtype), labels, best.inertia)
