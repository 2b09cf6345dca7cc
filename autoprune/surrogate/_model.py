"""The surrogate: the accuracy drop (and, where it is searched on, the latency) predicted by
shared-layer ensembles, with their cross-validated error. The size is not predicted: it is
computed for every candidate (:class:`~autoprune.compress.size.SizeModel`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import kendalltau
from sklearn.metrics import mean_absolute_error, r2_score
from sklearn.model_selection import KFold

from autoprune.surrogate._history import History, SurrogateError
from autoprune.surrogate._layers import Encoded
from autoprune.surrogate._layerwise import LayerwiseEnsemble

MIN_TRIALS = 8  # below this a cross-validated fit says nothing
FORMAT = "autoprune-surrogate/3"  # 3: the additive prior's terms among the features, residual learning


@dataclass
class CVScore:
    r2: float
    mae: float
    folds: int
    truth: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))  # the held-out targets
    predicted: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))  # out of fold

    def mae_below(self, limit: float) -> float:
        """MAE over held-out trials whose true value is at most ``limit`` (the region a budget
        decision is made in); the overall MAE when fewer than three are."""
        near = self.truth <= limit
        if near.sum() < 3:
            return self.mae
        return float(np.abs(self.truth[near] - self.predicted[near]).mean())

    @property
    def kendall_tau(self) -> float:
        """Rank agreement of the held-out predictions with the truth (1: the same order): what
        choosing among candidates needs, beside R^2."""
        if len(self.truth) < 2:
            return float("nan")
        return float(kendalltau(self.truth, self.predicted).statistic)

    def top_hit(self, k: int = 5) -> float:
        """Share of the ``k`` trials predicted to lose least that are among the ``k`` that truly
        lost least."""
        k = min(k, len(self.truth))
        if k == 0:
            return float("nan")
        return (
            len(
                set(np.argsort(self.truth, kind="stable")[:k])
                & set(np.argsort(self.predicted, kind="stable")[:k])
            )
            / k
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "r2": round(self.r2, 4),
            "mae": round(self.mae, 4),
            "kendall_tau": round(self.kendall_tau, 4),
            "top5_hit": round(self.top_hit(5), 4),
            "folds": self.folds,
        }


def cross_validate(make: Any, data: Encoded, y: np.ndarray, *, folds: int = 5, seed: int = 0) -> CVScore:
    """R^2 and MAE of out-of-fold predictions: each trial predicted by a model that never saw it."""
    folds = min(folds, len(y))
    predicted = np.zeros_like(y)
    for train, test in KFold(folds, shuffle=True, random_state=seed).split(y):
        predicted[test] = make().fit(data.take(train), y[train]).predict(data.take(test))
    return CVScore(
        float(r2_score(y, predicted)), float(mean_absolute_error(y, predicted)), folds, y, predicted
    )


class Surrogate:
    """A shared-layer ensemble per target: ``acc_drop`` always, ``latency_ms`` on request."""

    def __init__(self, *, n_members: int = 5, seed: int = 0, latency: bool = False, residual: bool = True):
        self.n_members = n_members
        self.residual = residual  # the drop learnt as a correction to the additive sensitivity prior
        self.seed = seed
        self.targets = ("acc_drop", "latency_ms") if latency else ("acc_drop",)
        self.models_: dict[str, LayerwiseEnsemble] = {}
        self.cv_: dict[str, CVScore] = {}
        self.fit_s_ = 0.0
        self.rows_ = 0
        self.studies_: list[str] = []

    def _make(self, i: int) -> LayerwiseEnsemble:
        residual = (
            self.residual and self.targets[i] == "acc_drop"
        )  # the prior is of the drop, not the latency
        return LayerwiseEnsemble(n_members=self.n_members, random_state=self.seed + i, residual=residual)

    def fit(self, history: History, *, cv: bool = True) -> Surrogate:
        if len(history) < MIN_TRIALS:
            raise SurrogateError(
                f"the surrogate needs at least {MIN_TRIALS} completed trials, it has {len(history)}"
                f"{_left_out(history.left_out)}; run more trials first (autoprune search --trials N), "
                "or learn from other studies too (--from STUDY)"
            )
        started = time.perf_counter()
        # tiny networks on tiny batches: one thread is fastest and leaves the others to the search
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for i, target in enumerate(self.targets):
                y = history.drop if target == "acc_drop" else history.latency
                rows = np.flatnonzero(np.isfinite(y))
                if len(rows) < MIN_TRIALS:
                    continue  # no latency measured: that target is not offered
                data, y = history.data.take(rows), y[rows]
                if cv:
                    self.cv_[target] = cross_validate(lambda i=i: self._make(i), data, y, seed=self.seed)
                self.models_[target] = self._make(i).fit(data, y)
        finally:
            torch.set_num_threads(threads)
        self.fit_s_ = time.perf_counter() - started
        self.rows_ = len(history)
        self.studies_ = sorted(set(history.studies))
        return self

    def predict(self, data: Encoded) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per target: (mean, spread) for every encoded row."""
        if not self.models_:
            raise SurrogateError("the surrogate is not fitted")
        return {t: m.predict_dist(data) for t, m in self.models_.items()}

    def report(self) -> dict[str, Any]:
        return {
            "trials_used": self.rows_,
            "studies": self.studies_,
            "members": self.n_members,
            "fit_s": round(self.fit_s_, 2),
            "cv": {t: s.to_dict() for t, s in self.cv_.items()},
        }

    def save(self, path: str | Path) -> None:
        """Tensors and numbers only (torch.save): :meth:`load` reads it with weights_only=True."""
        torch.save(
            {
                "format": FORMAT,
                "seed": self.seed,
                "n_members": self.n_members,
                "rows": self.rows_,
                "studies": self.studies_,
                "targets": list(self.models_),
                "models": {t: m.state() for t, m in self.models_.items()},
                "cv": {
                    t: {
                        "r2": s.r2,
                        "mae": s.mae,
                        "folds": s.folds,
                        "truth": torch.as_tensor(s.truth),
                        "predicted": torch.as_tensor(s.predicted),
                    }
                    for t, s in self.cv_.items()
                },
            },
            path,
        )

    @staticmethod
    def load(path: str | Path) -> Surrogate:
        """A surrogate saved by :meth:`save`; a file that is not one is one clear error."""
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise SurrogateError(f"no surrogate file at {path}") from None
        except Exception as e:  # torch raises many kinds on a file that is not one of ours
            raise SurrogateError(f"{path} is not a saved surrogate ({type(e).__name__})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise SurrogateError(f"{path} is not a saved surrogate (expected {FORMAT})")
        try:
            out = Surrogate(
                n_members=int(data["n_members"]),
                seed=int(data["seed"]),
                latency="latency_ms" in data["targets"],
            )
            out.models_ = {t: LayerwiseEnsemble.from_state(s) for t, s in data["models"].items()}
            out.cv_ = {
                t: CVScore(
                    float(s["r2"]),
                    float(s["mae"]),
                    int(s["folds"]),
                    s["truth"].numpy(),
                    s["predicted"].numpy(),
                )
                for t, s in data["cv"].items()
            }
            out.rows_, out.studies_ = int(data["rows"]), [str(s) for s in data["studies"]]
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
            raise SurrogateError(f"{path} is not a surrogate this autoprune can read ({e})") from None
        return out


def _left_out(left_out: dict[str, int]) -> str:
    if not left_out:
        return ""
    return " (left out: " + ", ".join(f"{n} {reason}" for reason, n in sorted(left_out.items())) + ")"
