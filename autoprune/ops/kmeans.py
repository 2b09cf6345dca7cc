"""Exact Lloyd k-means in one dimension, fast because the data are sorted once.

In 1-D every cluster of a Lloyd iteration is a contiguous run of the sorted values, cut at
the midpoints between neighbouring centroids. With prefix sums of the sorted values (and of
their squares) one iteration costs O(k log n): ``searchsorted`` for the cuts, then each
cluster's mean and inertia in O(1). This is the same fixed point that a general Lloyd
implementation such as scikit-learn's reaches from the same initial centroids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

INITS = ("linear", "density", "forgy")


@dataclass(frozen=True)
class KMeansResult:
    centroids: np.ndarray  # (k,) float64, sorted ascending
    labels: np.ndarray  # (n,) int64 cluster of each input value, in the input's order
    inertia: float  # sum of squared distances to the assigned centroid
    iterations: int


def init_centroids(values: np.ndarray, k: int, method: str, *, seed: int = 0) -> np.ndarray:
    """Deep Compression's three initialisations of ``k`` shared weights.

    linear: evenly spaced in [min, max]; density: evenly spaced on the CDF (quantiles);
    forgy: ``k`` distinct values picked at random.
    """
    if method not in INITS:
        raise ValueError(f"init={method!r} should be one of {', '.join(INITS)}")
    if k < 1:
        raise ValueError(f"k={k} should be >= 1")
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("cannot initialise centroids of an empty array")
    if method == "linear":
        return np.linspace(values.min(), values.max(), k)
    if method == "density":
        return np.quantile(values, (np.arange(k) + 0.5) / k)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(values, size=min(k, values.size), replace=False))


def kmeans_1d(
    values: np.ndarray,
    k: int,
    *,
    init: str | np.ndarray = "linear",
    seed: int = 0,
    max_iter: int = 100_000,
) -> KMeansResult:
    """Cluster ``values`` into at most ``k`` clusters; runs Lloyd to convergence.

    Empty clusters are dropped, so fewer than ``k`` centroids can come back.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("cannot cluster an empty array")
    order = np.argsort(x, kind="stable")
    xs = x[order]
    s1 = np.concatenate(([0.0], np.cumsum(xs)))
    s2 = np.concatenate(([0.0], np.cumsum(xs * xs)))
    c = np.sort(
        np.asarray(
            init if isinstance(init, np.ndarray) else init_centroids(xs, k, init, seed=seed), dtype=np.float64
        )
    )

    bounds = np.empty(0, dtype=np.int64)
    for iteration in range(1, max_iter + 1):  # noqa: B007 (the count is returned)
        # cut the sorted values at the midpoints; values on a midpoint go to the lower centroid
        cuts = np.searchsorted(xs, (c[:-1] + c[1:]) / 2.0, side="right")
        new_bounds = np.concatenate(([0], cuts, [xs.size]))
        counts = np.diff(new_bounds)
        keep = counts > 0
        if np.array_equal(new_bounds, bounds):
            break
        bounds = new_bounds
        sums = s1[bounds[1:]] - s1[bounds[:-1]]
        c = np.where(keep, sums / np.maximum(counts, 1), c)
        if not keep.all():  # drop empty clusters
            c = c[keep]
            bounds = np.concatenate(([0], bounds[1:][keep]))
    starts, ends = bounds[:-1], bounds[1:]
    counts = ends - starts
    sums = s1[ends] - s1[starts]
    inertia = float(np.sum((s2[ends] - s2[starts]) - sums * sums / np.maximum(counts, 1)))
    sorted_labels = np.repeat(np.arange(len(counts)), counts)
    labels = np.empty(x.size, dtype=np.int64)
    labels[order] = sorted_labels
    return KMeansResult(centroids=c, labels=labels, inertia=max(inertia, 0.0), iterations=iteration)
