"""Proposing settings from a fitted surrogate: score many cheap candidates, keep the K best
that are predicted to stay within the accuracy budget."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from autoprune.ops.pareto import feasible
from autoprune.surrogate._history import History
from autoprune.surrogate._model import Surrogate

TARGET_METRICS = {"size": "log_compression_ratio", "latency": "latency_ms"}


@dataclass
class Proposal:
    params: dict[str, Any]
    predicted: dict[str, dict[str, float]]  # target -> {"mean", "spread"}
    kind: str = "forward"  # "forward": searched over the surrogate; "inverse": the inverse MLP's thresholds
    feasible: bool = True  # predicted to stay within the budget (mean + kappa * spread)

    def to_dict(self) -> dict[str, Any]:
        p = self.predicted
        return {
            "kind": self.kind,
            "feasible": self.feasible,
            "params": self.params,
            "predicted_acc_drop": p["acc_drop"]["mean"],
            "predicted_acc_drop_spread": p["acc_drop"]["spread"],
            "predicted_compression_ratio": float(np.exp(p["log_compression_ratio"]["mean"])),
            "predicted_latency_ms": p["latency_ms"]["mean"],
            "predicted": p,
        }


@dataclass(frozen=True)
class ProposeConfig:
    max_acc_drop: float = 1.0  # budget in points of validation accuracy
    target: str = "size"  # "size": largest compression ratio; "latency": lowest batch-1 latency
    k: int = 5
    candidates: int = 4000  # random candidates, as many again around the best trials
    kappa: float = 1.0  # feasible when predicted drop + kappa * spread + CV error <= budget
    min_distance: float = 0.1  # proposals differ by at least this (unit box, per dimension RMS)
    seed: int = 0
    extra: Sequence[np.ndarray] = field(default_factory=tuple)  # more candidate rows (the inverse MLP's)

    def __post_init__(self) -> None:
        if self.target not in TARGET_METRICS:
            raise ValueError(f"target={self.target!r} should be one of {sorted(TARGET_METRICS)}")
        if self.k < 1:
            raise ValueError(f"k={self.k} should be at least 1")


def propose(surrogate: Surrogate, history: History, config: ProposeConfig) -> list[Proposal]:
    """The ``k`` best distinct candidates under the surrogate, feasible ones first."""
    enc = surrogate.encoder
    rng = np.random.default_rng(config.seed)
    blocks = [(enc.sample(rng, config.candidates), "forward")]
    if len(history):
        blocks.append(
            (
                enc.perturb(rng, best_rows(history, config.max_acc_drop, config.target), config.candidates),
                "forward",
            )
        )
    blocks += [(np.atleast_2d(r), "inverse") for r in config.extra]
    kinds = [kind for rows, kind in blocks for _ in range(len(rows))]
    rows = np.array([enc.canonical(r) for rows, _ in blocks for r in rows])
    pred = surrogate.predict(rows)
    drop_mean, drop_spread = pred["acc_drop"]
    # Searching thousands of candidates finds the model's optimistic errors, so the margin adds
    # the cross-validated error of the drop (over held-out trials up to twice the budget: the
    # collapsed trials far above it say little about the boundary) to the ensemble's spread.
    cv = surrogate.cv_.get("acc_drop")
    margin = cv.mae_below(2 * config.max_acc_drop) if cv is not None else 0.0
    upper = drop_mean + config.kappa * drop_spread + margin
    feasible = upper <= config.max_acc_drop
    metric_mean = pred[TARGET_METRICS[config.target]][0]
    gain = metric_mean if config.target == "size" else -metric_mean
    # Feasible first, best predicted target first; with none feasible, the safest first.
    order = np.lexsort((-gain, upper)) if not feasible.any() else np.lexsort((-gain, ~feasible))
    chosen: list[int] = []
    for i in order:
        if all(_distance(rows[i], rows[j]) >= config.min_distance for j in chosen):
            chosen.append(int(i))
        if len(chosen) == config.k:
            break
    return [
        Proposal(
            params=enc.decode(rows[i]),
            predicted={t: {"mean": float(m[i]), "spread": float(s[i])} for t, (m, s) in pred.items()},
            kind=kinds[i],
            feasible=bool(feasible[i]),
        )
        for i in chosen
    ]


def best_rows(history: History, max_acc_drop: float, target: str = "size", n: int = 5) -> np.ndarray:
    """The encoded rows of the best trials within the budget (the most accurate, if none is)."""
    drop = history.target("acc_drop")
    metric = history.target(TARGET_METRICS[target])
    gain = metric if target == "size" else -metric
    ok = feasible(drop, max_acc_drop)
    order = np.argsort(-gain[ok]) if ok.any() else np.argsort(drop)
    rows = history.x[ok] if ok.any() else history.x
    return rows[order[:n]]


def _distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)))
