"""How well the surrogate learns the accuracy drop, on the first n trials of stored studies
(5-fold cross-validation): R^2, MAE, Kendall tau (does it rank trials right?) and top-5 hit
(of the 5 it predicts to lose least, how many truly are among the 5 that lose least), for

- ``shared-layer+prior``: the default, the shared-layer network learning the residual of the
  additive sensitivity prior (issue 25);
- ``shared-layer``: the same network on the drop itself (the default before issue 25);
- ``gp+prior`` / ``gp``: a Gaussian process (Matern 5/2, one length scale per parameter) on the
  trial's parameters, on the prior's residual or on the drop;
- ``params-mlp``: the surrogate before issue 12 (an MLP ensemble on the raw parameters);
- ``prior alone``: the additive prior itself, no trial learnt from.

    python bench/surrogate_cv.py --storage sqlite:////tmp/zero_shot.db \\
        --studies zero-shot-search-s0,zero-shot-search-s1 --at 10,20,30 \\
        --out bench/results/surrogate_cv_residual.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.compose import TransformedTargetRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel
from sklearn.metrics import mean_absolute_error, r2_score
from sklearn.model_selection import KFold
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from autoprune.search.storage import parse_storage
from autoprune.surrogate import CVScore, Surrogate, history_from_trials, prior_drop
from autoprune.workflow import open_view, search_trials


class ParamsEnsemble(RegressorMixin, BaseEstimator):
    """The previous surrogate (autoprune before issue 12): five scaled MLPs (64 hidden, alpha
    0.1, 200 iterations) on bootstrap samples of the trials' parameters, encoded in [0, 1]."""

    def __init__(self, n_members: int = 5, random_state: int = 0):
        self.n_members = n_members
        self.random_state = random_state

    def fit(self, x: np.ndarray, y: np.ndarray) -> ParamsEnsemble:
        rng = np.random.default_rng(self.random_state)
        self.members_ = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            for i in range(self.n_members):
                mlp = MLPRegressor(
                    hidden_layer_sizes=(64,),
                    alpha=0.1,
                    max_iter=200,
                    random_state=self.random_state * 1000 + i,
                )
                member = TransformedTargetRegressor(
                    make_pipeline(StandardScaler(), mlp), transformer=StandardScaler()
                )
                rows = rng.integers(len(x), size=len(x))
                self.members_.append(member.fit(x[rows], y[rows]))
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.mean([m.predict(x) for m in self.members_], axis=0)


def kfold_cv(make, x: np.ndarray, y: np.ndarray, offset: np.ndarray | None = None) -> CVScore:
    """Out-of-fold predictions of an estimator on raw parameter rows (``offset``: a prior it
    learns the residual of, added back)."""
    offset = np.zeros_like(y) if offset is None else offset
    predicted = np.zeros_like(y)
    for train, test in KFold(min(5, len(y)), shuffle=True, random_state=0).split(x):
        predicted[test] = make().fit(x[train], y[train] - offset[train]).predict(x[test]) + offset[test]
    return CVScore(
        float(r2_score(y, predicted)), float(mean_absolute_error(y, predicted)), min(5, len(y)), y, predicted
    )


class ScaledGP(RegressorMixin, BaseEstimator):
    """A GP with one length scale per parameter (ARD), on parameters encoded in [0, 1]."""

    def fit(self, x: np.ndarray, y: np.ndarray) -> ScaledGP:
        kernel = ConstantKernel(1.0) * Matern(length_scale=np.ones(x.shape[1]), nu=2.5) + WhiteKernel(0.1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.gp_ = GaussianProcessRegressor(
                kernel, normalize_y=True, n_restarts_optimizer=2, random_state=0
            ).fit(x, y)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.gp_.predict(x)


def row(surrogate: str, study: str, n: int, cv: CVScore, seconds: float) -> dict:
    return {
        "surrogate": surrogate,
        "study": study,
        "n": n,
        "r2": round(cv.r2, 3),
        "mae": round(cv.mae, 3),
        "kendall_tau": round(cv.kendall_tau, 3),
        "top5_hit": round(cv.top_hit(5), 3),
        "fit_s": round(seconds, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--storage", required=True)
    ap.add_argument("--studies", required=True, help="comma-separated study names")
    ap.add_argument("--at", default="10,20,30", help="history sizes (first n finished trials)")
    ap.add_argument("--out", type=Path, required=True, help="JSON results")
    args = ap.parse_args()
    info = parse_storage(args.storage)
    sizes = [int(n) for n in args.at.split(",")]
    rows = []
    for name in args.studies.split(","):
        view = open_view(name, info, read_only=True)  # nothing is written into the study
        model = view.model
        trials = search_trials(view.study)
        for n in sizes:
            if len(trials) < n:
                continue
            history = history_from_trials(trials[:n], model, view.budget)
            x = np.array([model.encoder.encode(p) for p in history.params])
            prior = prior_drop(history.data.x, history.data.mask)
            y = history.drop
            for label, fit in (
                ("shared-layer+prior", lambda: Surrogate(seed=0).fit(history).cv_["acc_drop"]),
                ("shared-layer", lambda: Surrogate(seed=0, residual=False).fit(history).cv_["acc_drop"]),
                ("gp+prior", lambda: kfold_cv(ScaledGP, x, y, prior)),
                ("gp", lambda: kfold_cv(ScaledGP, x, y)),
                ("params-mlp", lambda: kfold_cv(ParamsEnsemble, x, y)),
            ):
                started = time.perf_counter()
                cv = fit()
                rows.append(row(label, name, n, cv, time.perf_counter() - started))
            prior_only = CVScore(float(r2_score(y, prior)), float(mean_absolute_error(y, prior)), 0, y, prior)
            rows.append(row("prior alone", name, n, prior_only, 0.0))
            err = np.abs(history.data.ratio / history.ratio - 1)
            print(
                f"{name} n={n} (size error median {100 * np.median(err):.1f}%): "
                + "; ".join(
                    f"{r['surrogate']} R^2 {r['r2']:.2f} tau {r['kendall_tau']:.2f} top5 {r['top5_hit']:.0%}"
                    for r in rows
                    if r["study"] == name and r["n"] == n
                ),
                flush=True,
            )
    summary = {}
    for n in sizes:
        for label in dict.fromkeys(r["surrogate"] for r in rows):
            at = [r for r in rows if r["n"] == n and r["surrogate"] == label]
            if at:
                summary[f"{label} @ {n}"] = {
                    k: round(float(np.median([r[k] for r in at])), 3)
                    for k in ("r2", "mae", "kendall_tau", "top5_hit")
                } | {"studies": len(at)}
    result = {
        "command": "python bench/surrogate_cv.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, torch {torch.__version__}",
        "rows": rows,
        "median_over_studies": summary,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for key, s in summary.items():
        print(
            f"{key}: median R^2 {s['r2']:.2f}, MAE {s['mae']:.2f}, Kendall tau {s['kendall_tau']:.2f}, "
            f"top-5 hit {s['top5_hit']:.0%} over {s['studies']} studies"
        )


if __name__ == "__main__":
    main()
