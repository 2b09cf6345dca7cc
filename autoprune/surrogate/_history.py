"""The trial history as a learning problem: features from a trial's parameters, targets from
its recorded metrics, and descriptors of the layers for the per-layer (inverse) view."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from autoprune.compress import weight_layers
from autoprune.errors import AutoPruneError
from autoprune.search.record import Budget, names

# What the surrogate predicts, from these fields of the trial record.
TARGETS = ("acc_drop", "log_compression_ratio", "latency_ms")
RECORDED = names("acc_drop", "compression_ratio", "latency_ms")


class SurrogateError(AutoPruneError):
    """The surrogate cannot do what was asked (too few trials, another study's model)."""


@dataclass(frozen=True)
class Encoder:
    """Maps a trial's parameters to numbers in [0, 1] and back.

    Ranges are scaled to [0, 1] (log ranges in log space), a choice becomes one column per
    option (one-hot). Candidates drawn in this unit box decode to valid parameters.
    """

    dists: Mapping[str, BaseDistribution]

    @property
    def columns(self) -> list[str]:
        cols: list[str] = []
        for name, d in self.dists.items():
            if isinstance(d, CategoricalDistribution):
                cols += [f"{name}={c}" for c in d.choices]
            else:
                cols.append(name)
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

    def canonical(self, row: np.ndarray) -> np.ndarray:
        """The row of the parameters ``row`` decodes to (integers rounded, one-hot exact)."""
        return self.encode(self.decode(row))

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
        """``n`` candidates near ``rows`` (a local search around the best trials)."""
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


def targets_of(attrs: Mapping[str, Any], budget: Budget = Budget(0.0)) -> dict[str, float]:
    """The targets of a trial; ``acc_drop`` as ``budget`` judges it (its rule, not its limit)."""
    ratio, latency = (attrs.get(name) for name in RECORDED[1:])
    return {
        "acc_drop": budget.judged(attrs),
        "log_compression_ratio": math.log(ratio) if ratio and ratio > 0 else None,
        "latency_ms": latency,
    }


@dataclass
class History:
    """Completed trials as arrays: ``x`` (n, columns), ``y`` (n, len(TARGETS))."""

    encoder: Encoder
    x: np.ndarray
    y: np.ndarray
    numbers: list[int]  # trial numbers, in the rows' order
    left_out: dict[str, int] = field(default_factory=dict)  # why trials were not used, with counts

    def __len__(self) -> int:
        return len(self.numbers)

    def target(self, name: str) -> np.ndarray:
        return self.y[:, TARGETS.index(name)]


def history_from_trials(trials: Iterable[FrozenTrial], encoder: Encoder, budget: Budget = Budget(0.0)) -> History:
    """The usable trials; failed, pruned, running, non-finite and off-space trials are counted.
    The drop learnt is the one ``budget`` judges (the upper confidence bound under "upper"
    selection), so the surrogate's "within the budget" is the search's."""
    rows, ys, numbers = [], [], []
    left_out: dict[str, int] = {}

    def skip(reason: str) -> None:
        left_out[reason] = left_out.get(reason, 0) + 1

    for t in sorted(trials, key=lambda t: t.number):
        if t.state != TrialState.COMPLETE:
            skip(t.state.name.lower())
            continue
        if t.user_attrs.get("source") == "final":
            skip("final stage")  # another fine-tuning budget than the search's
            continue
        if any(name not in t.params for name in encoder.dists):
            skip("outside the space")  # a baseline recipe the space cannot express
            continue
        y = targets_of(t.user_attrs, budget)
        values = [y[k] for k in TARGETS]
        if any(v is None or not math.isfinite(v) for v in values):
            skip("non-finite")
            continue
        rows.append(encoder.encode(t.params))
        ys.append(values)
        numbers.append(t.number)
    width = len(encoder.columns)
    return History(
        encoder=encoder,
        x=np.asarray(rows, dtype=np.float64).reshape(-1, width),
        y=np.asarray(ys, dtype=np.float64).reshape(-1, len(TARGETS)),
        numbers=numbers,
        left_out=left_out,
    )


# Per-layer descriptors for the inverse model (the seed's "norm values" as inputs).
DESCRIPTORS = ("log10_params", "depth", "is_conv", "norm_mean", "norm_std", "norm_low_fraction")


def layer_descriptors(model: nn.Module) -> dict[str, np.ndarray]:
    """For every weight layer: size, relative depth, kind and statistics of its filters' L1
    norms (normalised by the layer's largest), as in the seed's Figure 1."""
    layers = weight_layers(model)
    out: dict[str, np.ndarray] = {}
    n = len(layers)
    for i, (name, m) in enumerate(layers.items()):
        w = m.weight.detach()
        norms = w.abs().flatten(1).sum(dim=1)  # (out_channels,)
        norms = norms / norms.max().clamp_min(1e-12)
        out[name] = np.array([
            math.log10(w.numel()),
            i / max(n - 1, 1),
            float(isinstance(m, nn.Conv2d)),
            float(norms.mean()),
            float(norms.std()) if norms.numel() > 1 else 0.0,
            float((norms < 0.5).float().mean()),
        ])  # fmt: skip
    return out


def per_layer_params(dists: Mapping[str, BaseDistribution]) -> dict[str, dict[str, str]]:
    """The per-layer thresholds of the space: ``{"ratio": {layer: param}, "quality": {...}}``."""
    out: dict[str, dict[str, str]] = {"ratio": {}, "quality": {}}
    for name in dists:
        for kind in out:
            if name.startswith(kind + "_"):
                out[kind][name.removeprefix(kind + "_")] = name
    return out
