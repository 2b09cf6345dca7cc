"""Choose one option per knob to minimise a summed cost under a summed damage budget (the
multiple-choice knapsack), exactly, as a mixed-integer program.

The shape of HAWQ-V3's and AIMET's allocators: every knob (a layer, or a group of coupled
layers that must move together) has a few discrete options; each option has a cost (bytes, or
MACs, left in the network) and a predicted damage (accuracy points lost); damages add up. The
program picks x[k, o] in {0, 1}, one option per knob, minimising sum(cost * x) subject to
sum(damage * x) <= budget. scipy's HiGHS solves networks of a few hundred knobs in well under a
second.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp


def allocate(costs: Sequence[np.ndarray], damages: Sequence[np.ndarray], budget: float) -> list[int] | None:
    """The index of the chosen option of every knob, or None when no choice fits the budget.

    ``costs[k][o]`` and ``damages[k][o]``: option ``o`` of knob ``k``. Among choices of equal
    cost the program may return any; ties are broken toward the lower damage by a tiny
    penalty on it (1e-9 of the cost's scale)."""
    if len(costs) != len(damages) or any(len(c) != len(d) or len(c) == 0 for c, d in zip(costs, damages)):
        raise ValueError("every knob needs as many costs as damages, and at least one option")
    if not costs:
        return []
    cost = np.concatenate([np.asarray(c, dtype=float) for c in costs])
    damage = np.concatenate([np.asarray(d, dtype=float) for d in damages])
    if not (np.isfinite(cost).all() and np.isfinite(damage).all()):
        raise ValueError("costs and damages must be finite")
    sizes = [len(c) for c in costs]
    starts = np.cumsum([0, *sizes[:-1]])
    one_each = np.zeros((len(sizes), len(cost)))
    for k, (start, size) in enumerate(zip(starts, sizes)):
        one_each[k, start : start + size] = 1
    scale = max(float(np.abs(cost).max()), 1e-12)
    result = milp(
        c=cost / scale + 1e-9 * damage,
        constraints=[
            LinearConstraint(one_each, 1, 1),
            LinearConstraint(damage[None, :], -np.inf, budget + 1e-9),
        ],
        integrality=np.ones(len(cost)),
        bounds=Bounds(0, 1),
    )
    if result.x is None:  # infeasible: even the least damaging choice exceeds the budget
        return None
    chosen = np.round(result.x).astype(bool)
    return [int(np.flatnonzero(chosen[start : start + size])[0]) for start, size in zip(starts, sizes)]
