"""A study's trials as a learning problem: each trial's settings replayed as a compression
config on its own base network (:class:`ModelSpace`), its layers encoded, its measured drop
(judged by the study's rule) as the target. Histories of several studies, on other networks
and data, join into one."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from autoprune.compress import CompressConfig
from autoprune.errors import AutoPruneError
from autoprune.search.objective import trial_recipe
from autoprune.search.record import Budget, Source
from autoprune.search.space import SpaceLayers, baseline_config, config_from_params, distributions
from autoprune.search.spec import SpaceSection
from autoprune.surrogate._layers import Encoded, LayerView

Recipes = Mapping[str, tuple[CompressConfig, set[str]]]  # a study's baseline recipes by name


class SurrogateError(AutoPruneError):
    """The surrogate cannot do what was asked (too few trials, a study it cannot read)."""


@dataclass(frozen=True)
class Encoder:
    """Maps a trial's parameters to numbers in [0, 1] and back: how candidates are drawn.

    Ranges are scaled to [0, 1] (log ranges in log space), a choice becomes one column per
    option (one-hot). Candidates drawn in this unit box decode to valid parameters.
    """

    dists: Mapping[str, BaseDistribution]

    @property
    def columns(self) -> list[str]:
        cols: list[str] = []
        for name, d in self.dists.items():
            cols += [f"{name}={c}" for c in d.choices] if isinstance(d, CategoricalDistribution) else [name]
        return cols

    def encode(self, params: Mapping[str, Any]) -> np.ndarray:
        row: list[float] = []
        for name, d in self.dists.items():
            v = params[name]
            if isinstance(d, CategoricalDistribution):
                row += [float(v == c) for c in d.choices]
            else:
                row.append(_to_unit(float(v), d))
        return np.asarray(row, dtype=np.float64)

    def decode(self, row: np.ndarray) -> dict[str, Any]:
        params: dict[str, Any] = {}
        i = 0
        for name, d in self.dists.items():
            if isinstance(d, CategoricalDistribution):
                n = len(d.choices)
                params[name] = d.choices[int(np.argmax(row[i : i + n]))]
                i += n
            else:
                params[name] = _from_unit(float(row[i]), d)
                i += 1
        return params

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` uniform random candidates, encoded."""
        parts = []
        for d in self.dists.values():
            if isinstance(d, CategoricalDistribution):
                parts.append(np.eye(len(d.choices))[rng.integers(len(d.choices), size=n)])
            else:
                parts.append(rng.random((n, 1)))
        return np.hstack(parts) if parts else np.zeros((n, 0))

    def perturb(self, rng: np.random.Generator, rows: np.ndarray, n: int, scale: float = 0.08) -> np.ndarray:
        """``n`` candidates near ``rows`` (a local search around the best points)."""
        picked = rows[rng.integers(len(rows), size=n)].copy()
        i = 0
        for d in self.dists.values():
            if isinstance(d, CategoricalDistribution):
                k = len(d.choices)
                swap = rng.random(n) < 0.2
                picked[swap, i : i + k] = np.eye(k)[rng.integers(k, size=int(swap.sum()))]
                i += k
            else:
                picked[:, i] = np.clip(picked[:, i] + rng.normal(0.0, scale, n), 0.0, 1.0)
                i += 1
        return picked


def _to_unit(v: float, d: BaseDistribution) -> float:
    assert isinstance(d, (FloatDistribution, IntDistribution))
    low, high = float(d.low), float(d.high)
    if d.log:
        v, low, high = math.log(v), math.log(low), math.log(high)
    return (v - low) / (high - low) if high > low else 0.0


def _from_unit(u: float, d: BaseDistribution) -> float | int:
    assert isinstance(d, (FloatDistribution, IntDistribution))
    u = min(max(u, 0.0), 1.0)
    low, high = float(d.low), float(d.high)
    v = math.exp(math.log(low) + u * (math.log(high) - math.log(low))) if d.log else low + u * (high - low)
    if isinstance(d, IntDistribution):
        return int(min(max(round(v), d.low), d.high))
    return min(max(v, d.low), d.high)


@dataclass
class ModelSpace:
    """One study's base network (as the surrogate sees it) and the space searched on it."""

    name: str  # the study's
    view: LayerView
    space: SpaceSection
    layers: SpaceLayers

    @property
    def dists(self) -> dict[str, BaseDistribution]:
        return distributions(self.space, self.layers)

    @property
    def encoder(self) -> Encoder:
        return Encoder(self.dists)

    def config(self, params: Mapping[str, Any]) -> CompressConfig:
        return config_from_params(dict(params), self.space, self.layers)

    def trial_config(self, trial: FrozenTrial, recipes: Recipes | None = None) -> CompressConfig | None:
        """What the trial ran: a baseline its recipe (under the search's fine-tuning cap; the
        study's ``recipes``), a search trial its parameters; None for a trial outside the
        space or a baseline whose recipe cannot be read."""
        if "recipe_name" in trial.user_attrs:
            baseline = trial_recipe(trial, recipes or {})
            return baseline_config(baseline[0], self.space) if baseline is not None else None
        if any(name not in trial.params for name in self.dists):
            return None
        return self.config(trial.params)


@dataclass
class History:
    """Completed trials, encoded, with what was measured."""

    data: Encoded
    drop: np.ndarray  # (n,) accuracy drop as the budget judges it
    latency: np.ndarray  # (n,) batch-1 latency in ms (nan where not measured)
    ratio: np.ndarray  # (n,) measured compression ratio
    numbers: list[int]  # trial numbers
    studies: list[str]  # which study each row comes from
    params: list[dict[str, Any]]  # the sampled parameters (empty for a baseline)
    left_out: dict[str, int] = field(default_factory=dict)  # why trials were not used, with counts

    def __len__(self) -> int:
        return len(self.numbers)

    @staticmethod
    def join(parts: list[History]) -> History:
        left: dict[str, int] = {}
        for p in parts:
            for k, v in p.left_out.items():
                left[k] = left.get(k, 0) + v
        return History(
            Encoded.join([p.data for p in parts]),
            np.concatenate([p.drop for p in parts]),
            np.concatenate([p.latency for p in parts]),
            np.concatenate([p.ratio for p in parts]),
            [n for p in parts for n in p.numbers],
            [s for p in parts for s in p.studies],
            [x for p in parts for x in p.params],
            left,
        )

    def of(self, study: str) -> np.ndarray:
        """Row indices of one study's trials."""
        return np.array([i for i, s in enumerate(self.studies) if s == study], dtype=int)


def history_from_trials(
    trials: Iterable[FrozenTrial],
    model: ModelSpace,
    budget: Budget | None = None,
    recipes: Recipes | None = None,
) -> History:
    """The usable trials of one study (``recipes``: its baseline recipes, :func:`stored_recipes`);
    failed, pruned, running, final-stage and unreadable trials are counted by reason. The drop
    learnt is the one ``budget`` judges (the upper confidence bound under "upper" selection), so
    the surrogate's "within the budget" is the search's."""
    budget = budget if budget is not None else Budget(0.0)
    configs, drops, latencies, ratios, numbers, params = [], [], [], [], [], []
    left_out: dict[str, int] = {}

    def skip(reason: str) -> None:
        left_out[reason] = left_out.get(reason, 0) + 1

    for t in sorted(trials, key=lambda t: t.number):
        if t.state != TrialState.COMPLETE:
            skip(t.state.name.lower())
            continue
        if t.user_attrs.get("source") == Source.FINAL:
            skip("final stage")  # another fine-tuning budget than the search's
            continue
        drop = budget.judged(t.user_attrs)
        ratio = t.user_attrs.get("compression_ratio")
        if not _finite(drop) or not _finite(ratio):
            skip("non-finite")
            continue
        config = model.trial_config(t, recipes)
        if config is None:
            skip("outside the space")
            continue
        latency = t.user_attrs.get("latency_ms")
        configs.append(config)
        drops.append(drop)
        latencies.append(latency if _finite(latency) else math.nan)
        ratios.append(ratio)
        numbers.append(t.number)
        params.append({} if "recipe_name" in t.user_attrs else dict(t.params))
    data = model.view.encode(configs) if configs else model.view.encode([])
    return History(
        data,
        np.asarray(drops, dtype=float),
        np.asarray(latencies, dtype=float),
        np.asarray(ratios, dtype=float),
        numbers,
        [model.name] * len(numbers),
        params,
        left_out,
    )


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
