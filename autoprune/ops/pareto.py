"""The budget rule, written once: which results are within the accuracy budget, the best of
them, the non-dominated ones, and the area they dominate. Plain arrays in, plain answers out;
the search's tables, ``export --trial best``, the surrogate and its sampler all call these."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def feasible(drops: Sequence[float] | np.ndarray, budget: float) -> np.ndarray:
    """Which accuracy drops (points) are within the budget; a missing (NaN) drop is not."""
    d = np.asarray(drops, dtype=np.float64)
    return np.isfinite(d) & (d <= budget)


def best_within(
    ratios: Sequence[float] | np.ndarray, drops: Sequence[float] | np.ndarray, budget: float
) -> int | None:
    """Index of the highest compression ratio among those within the budget (the first such,
    on a tie), or None when none is."""
    ok = feasible(drops, budget)
    if not ok.any():
        return None
    r = np.where(ok, np.asarray(ratios, dtype=np.float64), -np.inf)
    return int(np.argmax(r))


def non_dominated(points: Sequence[Sequence[float]] | np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """Mask of the points no other point dominates (at least as good in every coordinate and
    not equal); ``maximize`` says the direction of each coordinate."""
    p = np.asarray(points, dtype=np.float64).reshape(len(points), len(maximize))
    p = np.where(np.asarray(maximize), p, -p)  # every coordinate to maximise
    better_eq = (p[None, :, :] >= p[:, None, :]).all(axis=2)  # [i, j]: j at least as good as i
    equal = (p[None, :, :] == p[:, None, :]).all(axis=2)
    return ~(better_eq & ~equal).any(axis=1)


def fronts(
    points: Sequence[Sequence[float]] | np.ndarray, maximize: Sequence[bool], count: int
) -> np.ndarray:
    """Mask of the points on the first ``count`` non-dominated fronts."""
    p = np.asarray(points, dtype=np.float64).reshape(len(points), len(maximize))
    remaining = np.ones(len(p), dtype=bool)
    for _ in range(count):
        idx = np.flatnonzero(remaining)
        if idx.size == 0:
            break
        remaining[idx[non_dominated(p[idx], maximize)]] = False
    return ~remaining


def hypervolume(points: Sequence[tuple[float, float]], budget: float) -> float:
    """Area dominated in (accuracy drop, log10 compression ratio) within the budget, reference
    point (drop = budget, ratio = 1): a result with drop d and ratio r alone scores
    (budget - d) * log10(r). Larger is better."""
    pts = sorted((d, math.log10(r)) for d, r in points if d <= budget and r > 1)
    area, best = 0.0, 0.0
    for i, (d, lr) in enumerate(pts):  # sweep from the lowest drop up
        best = max(best, lr)
        nxt = pts[i + 1][0] if i + 1 < len(pts) else budget
        area += (nxt - d) * best
    return area
