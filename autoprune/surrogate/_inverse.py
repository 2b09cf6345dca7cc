"""The seed paper's own form: an MLP that maps a target (the allowed accuracy drop) and a
layer's descriptors (size, depth, the statistics of its filters' L1 norms) straight to that
layer's pruning threshold.

It learns from the efficient trials only (the first fronts of accuracy drop versus compression
ratio), one row per (trial, layer): what threshold each layer had in the trials that got the
most compression for their drop.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from autoprune.ops.pareto import best_within, fronts
from autoprune.surrogate._history import History, SurrogateError, per_layer_params
from autoprune.surrogate._model import MLPEnsemble

FRONTS = 2  # how many non-dominated fronts of (drop, compression) count as efficient


class InverseThresholds:
    """Per kind of threshold ("ratio": filter pruning, "quality": magnitude pruning), an
    ensemble from (target drop, layer descriptors) to the layer's threshold."""

    def __init__(self, *, n_members: int = 5, seed: int = 0):
        self.n_members = n_members
        self.seed = seed
        self.models_: dict[str, MLPEnsemble] = {}
        self.params_: dict[str, dict[str, str]] = {}
        self.rows_ = 0

    def fit(self, history: History, descriptors: Mapping[str, np.ndarray]) -> InverseThresholds:
        self.params_ = per_layer_params(history.encoder.dists)
        if not any(self.params_.values()):
            raise SurrogateError("the inverse model needs per-layer thresholds in the space (per_layer)")
        points = np.column_stack([history.target("acc_drop"), history.target("log_compression_ratio")])
        efficient = fronts(points, (False, True), FRONTS)
        self.rows_ = int(efficient.sum())
        columns = history.encoder.columns
        for kind, layers in self.params_.items():
            x, y = [], []
            for row, drop in zip(history.x[efficient], history.target("acc_drop")[efficient]):
                for layer, param in layers.items():
                    x.append(np.concatenate([[drop], descriptors[layer]]))
                    y.append(row[columns.index(param)])  # the threshold, scaled to [0, 1]
            if x:
                self.models_[kind] = MLPEnsemble(n_members=self.n_members, random_state=self.seed).fit(
                    np.array(x), np.array(y)
                )
        return self

    def thresholds(self, max_acc_drop: float, descriptors: Mapping[str, np.ndarray]) -> dict[str, float]:
        """Per-layer thresholds (scaled to [0, 1], by parameter name) for a target drop."""
        out: dict[str, float] = {}
        for kind, model in self.models_.items():
            layers = self.params_[kind]
            x = np.array([np.concatenate([[max_acc_drop], descriptors[layer]]) for layer in layers])
            for param, value in zip(layers.values(), model.predict(x)):
                out[param] = float(np.clip(value, 0.0, 1.0))
        return out

    def rows(
        self, history: History, drops: list[float], descriptors: Mapping[str, np.ndarray]
    ) -> list[np.ndarray]:
        """Candidate rows: the best trial within each drop, its thresholds replaced by the
        inverse model's (the other settings, bits and fine-tuning, stay the trial's)."""
        columns = history.encoder.columns
        drop, ratio = history.target("acc_drop"), history.target("log_compression_ratio")
        out = []
        for target in drops:
            best = best_within(ratio, drop, target)
            base = history.x[best] if best is not None else history.x[np.argmin(drop)]
            row = base.copy()
            for param, value in self.thresholds(target, descriptors).items():
                row[columns.index(param)] = value
            out.append(row)
        return out
