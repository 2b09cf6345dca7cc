"""A ranked search's first trials, spread over the MAC reductions its one share reaches.

A ranked space has one parameter, the share of all filters removed, but MACs do not follow it
evenly: on ResNet-20 (widths aligned to 8) shares 0-0.44 take 1.0-1.7x fewer MACs and
0.45-0.6 take 2.4-4.4x, so a sampler's random start draws most of its trials where little is
cut (issue 27: 12 trials, none between 1.7x and 4.3x). ``space.ranked_start`` queues the first
trials at the shares whose MAC reductions step evenly in log instead."""

from __future__ import annotations

import copy
import dataclasses
import math

import optuna
import torch
from torch import nn

from autoprune.compress.structured import FilterPruneConfig, prune_filters_
from autoprune.measure import count_macs
from autoprune.search.record import Source

BISECTIONS = 8  # halvings of the share's range per step: 1/256 of it


def ladder_shares(
    model: nn.Module,
    config: FilterPruneConfig,
    example: torch.Tensor,
    share_range: tuple[float, float],
    steps: int,
) -> list[tuple[float, float]]:
    """(share, MAC reduction) pairs: for each of ``steps`` reductions evenly spaced in log up to
    the largest share's, the smallest share in ``share_range`` that reaches it (bisected on the
    MACs of a pruned copy: shapes only, no refit); shares that reach the same MACs are one."""
    shape = tuple(example.shape[1:])
    base = count_macs(model, shape)
    reductions: dict[float, float] = {}

    def reduction(share: float) -> float:
        if share not in reductions:
            pruned = copy.deepcopy(model).eval()
            prune_filters_(pruned, dataclasses.replace(config, default=share, reconstruct=0), example)
            reductions[share] = base / max(count_macs(pruned, shape), 1)
        return reductions[share]

    low, high = share_range
    top = reduction(high)
    found: dict[float, float] = {}  # reduction -> the smallest share reaching it
    for k in range(1, steps + 1):
        target = math.exp(math.log(top) * k / steps)
        lo, hi = low, high
        for _ in range(BISECTIONS):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if reduction(mid) < target else (lo, mid)
        found[reduction(hi)] = min(hi, found.get(reduction(hi), hi))
    return sorted((share, r) for r, share in found.items() if r > 1.0)


def enqueue_ladder(study: optuna.Study, shares: list[tuple[float, float]]) -> int:
    """The shares as waiting trials (``source=ladder``, with the MAC reduction each was chosen
    for); the other parameters are the sampler's. Returns how many were queued."""
    waiting = (optuna.trial.TrialState.WAITING,)
    before = len(study.get_trials(deepcopy=False, states=waiting))
    for share, r in shares:
        study.enqueue_trial(
            {"ranked_ratio": share},
            user_attrs={"source": Source.LADDER.value, "ladder_macs_ratio": r},
            skip_if_exists=True,
        )
    return len(study.get_trials(deepcopy=False, states=waiting)) - before
