"""Proposing settings: draw many candidates in the study's space, compute each one's size,
predict its drop, and keep the K best that are promised within the accuracy budget.

A candidate is promised within the budget when its predicted drop, plus ``kappa`` times the
ensemble's spread, plus the surrogate's cross-validated error near the budget (the margin),
stays within it: searching thousands of candidates finds the model's optimistic errors, so
the margin is what its errors on held-out trials were.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from autoprune.surrogate._history import History, ModelSpace
from autoprune.surrogate._model import Surrogate

TARGETS = ("size", "latency")


@dataclass
class Proposal:
    params: dict[str, Any]
    drop: float  # predicted accuracy drop, points
    spread: float  # the ensemble's standard deviation of it
    margin: float  # the cross-validated error added for safety
    kappa: float
    ratio: float  # compression ratio, computed (not predicted)
    latency_ms: float | None  # predicted batch-1 latency, where the surrogate learnt it
    budget: float
    proposer: str  # "random": drawn at random; "local": near a good trial or candidate

    @property
    def upper(self) -> float:
        return self.drop + self.kappa * self.spread + self.margin

    @property
    def feasible(self) -> bool:
        return self.upper <= self.budget

    def to_dict(self) -> dict[str, Any]:
        return {
            "params": self.params,
            "predicted_acc_drop": self.drop,
            "spread": self.spread,
            "cv_margin": self.margin,
            "upper": self.upper,
            "feasible": self.feasible,
            "compression_ratio": self.ratio,
            "predicted_latency_ms": self.latency_ms,
            "proposer": self.proposer,
        }


@dataclass(frozen=True)
class ProposeConfig:
    max_acc_drop: float = 1.0  # budget in points of validation accuracy
    target: str = "size"  # "size": largest compression ratio; "latency": lowest predicted batch-1 latency
    k: int = 5
    candidates: int = 2000  # drawn at random, then half as many again near the best of them
    kappa: float = 1.0  # feasible when predicted drop + kappa * spread + CV margin <= budget
    min_distance: float = 0.1  # proposals differ by at least this (unit box, per dimension RMS)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"target={self.target!r} should be one of {', '.join(TARGETS)}")
        if self.k < 1:
            raise ValueError(f"k={self.k} should be at least 1")


def cv_margin(surrogate: Surrogate, budget: float) -> float:
    """The surrogate's cross-validated error of the drop over held-out trials up to twice the
    budget (the collapsed trials far above it say little about the boundary); 0 unvalidated."""
    cv = surrogate.cv_.get("acc_drop")
    return cv.mae_below(2 * budget) if cv is not None else 0.0


def anchors(history: History | None, study: str, budget: float, n: int = 5) -> list[dict[str, Any]]:
    """The parameters of the study's own best trials within the budget (the most accurate when
    none is), for a local search around them."""
    if history is None:
        return []
    rows = [i for i in history.of(study) if history.params[i]]
    if not rows:
        return []
    ok = [i for i in rows if history.drop[i] <= budget]
    ranked = (
        sorted(ok, key=lambda i: -history.ratio[i]) if ok else sorted(rows, key=lambda i: history.drop[i])
    )
    return [history.params[i] for i in ranked[:n]]


def score(
    model: ModelSpace, surrogate: Surrogate, rows: np.ndarray
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """Predictions and computed compression ratios for encoded candidate ``rows``."""
    enc = model.encoder
    data = model.view.encode([model.config(enc.decode(r)) for r in rows])
    return surrogate.predict(data), data.ratio


def propose(
    surrogate: Surrogate, model: ModelSpace, config: ProposeConfig, *, near: Sequence[dict[str, Any]] = ()
) -> list[Proposal]:
    """The ``k`` best distinct candidates under the surrogate, promised ones first; ``near``:
    parameters to search around too (the study's best trials)."""
    enc = model.encoder
    rng = np.random.default_rng(config.seed)
    first = [enc.sample(rng, config.candidates)]
    if near:
        first.append(enc.perturb(rng, np.array([enc.encode(p) for p in near]), config.candidates // 2))
    rows = np.vstack(first)
    kinds = ["random"] * config.candidates + ["local"] * (len(rows) - config.candidates)
    pred, ratio = score(model, surrogate, rows)
    order = _ranked(pred, ratio, surrogate, config)
    # a second, local round around the best of the first
    local = enc.perturb(rng, rows[order[:20]], config.candidates // 2, scale=0.05)
    more, more_ratio = score(model, surrogate, local)
    rows = np.vstack([rows, local])
    kinds += ["local"] * len(local)
    pred = {
        t: (np.concatenate([m, more[t][0]]), np.concatenate([s, more[t][1]])) for t, (m, s) in pred.items()
    }
    ratio = np.concatenate([ratio, more_ratio])
    chosen: list[int] = []
    for i in _ranked(pred, ratio, surrogate, config):
        if all(_distance(rows[i], rows[j]) >= config.min_distance for j in chosen):
            chosen.append(int(i))
        if len(chosen) == config.k:
            break
    margin = cv_margin(surrogate, config.max_acc_drop)
    latency = pred.get("latency_ms")
    return [
        Proposal(
            params=enc.decode(rows[i]),
            drop=float(pred["acc_drop"][0][i]),
            spread=float(pred["acc_drop"][1][i]),
            margin=margin,
            kappa=config.kappa,
            ratio=float(ratio[i]),
            latency_ms=float(latency[0][i]) if latency is not None else None,
            budget=config.max_acc_drop,
            proposer=kinds[i],
        )
        for i in chosen
    ]


def _ranked(
    pred: dict[str, tuple[np.ndarray, np.ndarray]],
    ratio: np.ndarray,
    surrogate: Surrogate,
    config: ProposeConfig,
) -> np.ndarray:
    """Candidate indices, best first: promised ones by the target (largest ratio, or lowest
    predicted latency), then, when none is promised, the safest."""
    mean, spread = pred["acc_drop"]
    upper = mean + config.kappa * spread + cv_margin(surrogate, config.max_acc_drop)
    feasible = upper <= config.max_acc_drop
    latency = config.target == "latency" and "latency_ms" in pred
    gain = -pred["latency_ms"][0] if latency else np.log(ratio)
    if not feasible.any():
        return np.lexsort((-gain, upper))
    return np.lexsort((-gain, ~feasible))


def _distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)))
