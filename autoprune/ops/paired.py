"""How sure an accuracy drop is: the base and the compressed model judged on the same images.

Most images are classified alike by both networks, so the drop's noise comes only from the
images where they disagree. With n images, ``lost`` that only the base gets right and
``gained`` that only the compressed model gets right, the per-image difference d is +1, -1 or
0 and the drop is 100 * mean(d). Its standard error is that of a paired mean (McNemar's
setting), far smaller than two independent accuracies would suggest. One pseudo-disagreement
is added to the variance so that a run with no disagreement still carries a one-image
uncertainty instead of none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairedDrop:
    drop: float  # points: 100 * (lost - gained) / n
    se: float  # points: standard error of the drop
    lost: int  # images only the base classifies correctly
    gained: int  # images only the compressed model classifies correctly
    n: int


def paired_drop(base_correct: np.ndarray, new_correct: np.ndarray) -> PairedDrop:
    b = np.asarray(base_correct, dtype=bool)
    c = np.asarray(new_correct, dtype=bool)
    if b.shape != c.shape or b.ndim != 1 or b.size == 0:
        raise ValueError(f"expected two equal non-empty vectors, got {b.shape} and {c.shape}")
    n = b.size
    lost, gained = int(np.sum(b & ~c)), int(np.sum(~b & c))
    mean = (lost - gained) / n
    variance = max((lost + gained + 1) / n - mean**2, 0.0)  # of d, with one pseudo-disagreement
    return PairedDrop(100.0 * mean, 100.0 * math.sqrt(variance / n), lost, gained, n)
