"""The surrogate: scaling plus ``MLPRegressor``, a small ensemble of differently seeded networks
(each on its own bootstrap sample), so that every prediction comes with a spread."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.compose import TransformedTargetRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import mean_absolute_error, r2_score
from sklearn.model_selection import KFold
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from autoprune.surrogate._history import TARGETS, Encoder, History, SurrogateError

MIN_TRIALS = 8  # below this a cross-validated fit says nothing
FORMAT = "autoprune-surrogate/1"


class MLPEnsemble(RegressorMixin, BaseEstimator):
    """``n_members`` scaled MLP regressors, each seeded differently and fitted on a bootstrap
    sample of the rows; the prediction is their mean, the spread their standard deviation."""

    def __init__(
        self,
        n_members: int = 5,
        hidden_layer_sizes: tuple[int, ...] = (64,),
        alpha: float = 0.1,
        max_iter: int = 200,
        bootstrap: bool = True,
        random_state: int = 0,
    ):
        self.n_members = n_members
        self.hidden_layer_sizes = hidden_layer_sizes
        self.alpha = alpha
        self.max_iter = max_iter
        self.bootstrap = bootstrap
        self.random_state = random_state

    def _member(self, seed: int) -> Any:
        mlp = MLPRegressor(
            hidden_layer_sizes=self.hidden_layer_sizes, alpha=self.alpha, solver="lbfgs",
            max_iter=self.max_iter, random_state=seed,
        )  # fmt: skip
        return TransformedTargetRegressor(
            regressor=make_pipeline(StandardScaler(), mlp), transformer=StandardScaler()
        )

    def fit(self, x: np.ndarray, y: np.ndarray) -> MLPEnsemble:
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        rng = np.random.default_rng(self.random_state)
        self.members_ = []
        # Tiny matrices: one BLAS thread is over twice as fast as several (and leaves torch alone).
        with threadpool_limits(1), warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter is the budget, by design
            for i in range(self.n_members):
                rows = rng.integers(len(x), size=len(x)) if self.bootstrap else np.arange(len(x))
                self.members_.append(self._member(self.random_state * 1000 + i).fit(x[rows], y[rows]))
        return self

    def predict_dist(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and spread (standard deviation over the members) for every row."""
        with threadpool_limits(1):
            p = np.stack([m.predict(np.asarray(x, dtype=np.float64)) for m in self.members_])
        return p.mean(axis=0), p.std(axis=0)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.predict_dist(x)[0]


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


def cross_validate(
    estimator: MLPEnsemble, x: np.ndarray, y: np.ndarray, *, folds: int = 5, seed: int = 0
) -> CVScore:
    """R^2 and MAE of out-of-fold predictions: each trial predicted by a model that never saw it."""
    folds = min(folds, len(x))
    predicted = np.zeros_like(y)
    for train, test in KFold(folds, shuffle=True, random_state=seed).split(x):
        predicted[test] = clone(estimator).fit(x[train], y[train]).predict(x[test])
    return CVScore(
        float(r2_score(y, predicted)), float(mean_absolute_error(y, predicted)), folds, y, predicted
    )


class Surrogate:
    """One ensemble per target over the encoded parameters, with its cross-validated error."""

    def __init__(self, encoder: Encoder, *, n_members: int = 5, seed: int = 0):
        self.encoder = encoder
        self.n_members = n_members
        self.seed = seed
        self.models_: dict[str, MLPEnsemble] = {}
        self.cv_: dict[str, CVScore] = {}
        self.fit_s_ = 0.0
        self.rows_ = 0

    def fit(self, history: History, *, cv: bool = True) -> Surrogate:
        if len(history) < MIN_TRIALS:
            raise SurrogateError(
                f"the surrogate needs at least {MIN_TRIALS} completed trials in the space, the study has "
                f"{len(history)}{_left_out(history.left_out)}; run more trials first (autoprune search --trials N)"
            )
        if history.encoder.columns != self.encoder.columns:
            raise SurrogateError("the history's parameters differ from the surrogate's space")
        started = time.perf_counter()
        for i, target in enumerate(TARGETS):
            model = MLPEnsemble(n_members=self.n_members, random_state=self.seed + i)
            if cv:
                self.cv_[target] = cross_validate(model, history.x, history.y[:, i], seed=self.seed)
            self.models_[target] = model.fit(history.x, history.y[:, i])
        self.fit_s_ = time.perf_counter() - started
        self.rows_ = len(history)
        return self

    def predict(self, x: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per target: (mean, spread) for every encoded row."""
        if not self.models_:
            raise SurrogateError("the surrogate is not fitted")
        return {t: m.predict_dist(x) for t, m in self.models_.items()}

    def report(self) -> dict[str, Any]:
        return {
            "trials_used": self.rows_,
            "members": self.n_members,
            "fit_s": round(self.fit_s_, 2),
            "cv": {
                t: {"r2": round(s.r2, 4), "mae": round(s.mae, 4), "folds": s.folds}
                for t, s in self.cv_.items()
            },
        }

    def save(self, path: str | Path) -> None:
        joblib.dump({"format": FORMAT, "surrogate": self}, path)

    @staticmethod
    def load(path: str | Path, encoder: Encoder | None = None) -> Surrogate:
        """A saved surrogate (a pickle: load only files you made); checked against ``encoder``."""
        try:
            data = joblib.load(path)
        except FileNotFoundError:
            raise SurrogateError(f"no surrogate file at {path}") from None
        except Exception as e:  # joblib raises many kinds on a file that is not one of ours
            raise SurrogateError(f"{path} is not a saved surrogate ({type(e).__name__})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise SurrogateError(f"{path} is not a saved surrogate (expected {FORMAT})")
        surrogate = data["surrogate"]
        if encoder is not None and surrogate.encoder.columns != encoder.columns:
            raise SurrogateError(f"{path} was fitted on another search space than this study's")
        return surrogate


def _left_out(left_out: dict[str, int]) -> str:
    if not left_out:
        return ""
    return " (left out: " + ", ".join(f"{n} {reason}" for reason, n in sorted(left_out.items())) + ")"
