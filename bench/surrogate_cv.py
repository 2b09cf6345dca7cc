"""How well the surrogate learns the accuracy drop: cross-validated R^2 and MAE on the first n
trials of stored studies, the shared-layer surrogate against the one it replaced (an MLP
ensemble over a trial's raw parameters, kept here as the baseline), on the same histories.

    python bench/surrogate_cv.py --storage sqlite:///bench/results/samplers-fashion-lenet5-constrained.db \\
        --studies samplers-tpe-s0,samplers-random-s0 --at 10,20,30 --out bench/results/surrogate_cv_fashion.json

Also: how far the computed compression ratio (the size model) is from each trial's measured one.
With --alt-weight-decay W, the shared-layer surrogate with that weight decay too (an A/B of the
default on the same histories and folds).
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
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.compose import TransformedTargetRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import mean_absolute_error, r2_score
from sklearn.model_selection import KFold
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from autoprune.search.storage import parse_storage
from autoprune.surrogate import LayerwiseEnsemble, Surrogate, cross_validate, history_from_trials
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
                mlp = MLPRegressor(hidden_layer_sizes=(64,), alpha=0.1, max_iter=200,
                                   random_state=self.random_state * 1000 + i)  # fmt: skip
                member = TransformedTargetRegressor(make_pipeline(StandardScaler(), mlp), transformer=StandardScaler())
                rows = rng.integers(len(x), size=len(x))
                self.members_.append(member.fit(x[rows], y[rows]))
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.mean([m.predict(x) for m in self.members_], axis=0)


def old_cv(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    predicted = np.zeros_like(y)
    for train, test in KFold(min(5, len(y)), shuffle=True, random_state=0).split(x):
        predicted[test] = clone(ParamsEnsemble()).fit(x[train], y[train]).predict(x[test])
    return float(r2_score(y, predicted)), float(mean_absolute_error(y, predicted))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--storage", required=True)
    ap.add_argument("--studies", required=True, help="comma-separated study names")
    ap.add_argument("--at", default="10,20,30", help="history sizes (first n finished trials)")
    ap.add_argument("--out", type=Path, required=True, help="JSON results")
    ap.add_argument("--alt-weight-decay", type=float, help="also the shared-layer surrogate with this weight decay")
    args = ap.parse_args()
    info = parse_storage(args.storage)
    sizes = [int(n) for n in args.at.split(",")]
    rows = []
    for name in args.studies.split(","):
        view = open_view(name, info)  # read only: nothing is written into the study
        model = view.model
        trials = search_trials(view.study)
        for n in sizes:
            history = history_from_trials(trials[:n], model, view.budget)
            x = np.array([model.encoder.encode(p) for p in history.params])
            started = time.perf_counter()
            new = Surrogate(seed=0).fit(history).cv_["acc_drop"]
            new_s = time.perf_counter() - started
            started = time.perf_counter()
            old_r2, old_mae = old_cv(x, history.drop)
            old_s = time.perf_counter() - started
            err = np.abs(history.data.ratio / history.ratio - 1)
            alt = {}
            if args.alt_weight_decay is not None:
                make = lambda: LayerwiseEnsemble(n_members=5, random_state=0, weight_decay=args.alt_weight_decay)
                cv = cross_validate(make, history.data, history.drop, seed=0)
                alt = {"alt_r2": round(cv.r2, 3), "alt_mae": round(cv.mae, 3)}
            rows.append({
                "study": name, "n": n, "trials_used": len(history),
                "new_r2": round(new.r2, 3), "new_mae": round(new.mae, 3), "new_s": round(new_s, 1),
                "old_r2": round(old_r2, 3), "old_mae": round(old_mae, 3), "old_s": round(old_s, 1),
                "size_error_median": round(float(np.median(err)), 4), "size_error_max": round(float(err.max()), 4),
            } | alt)  # fmt: skip
            r = rows[-1]
            print(f"{name} n={n}: shared-layer R^2 {r['new_r2']:.2f} MAE {r['new_mae']:.2f} | "
                  f"params MLP R^2 {r['old_r2']:.2f} MAE {r['old_mae']:.2f} | size error median "
                  f"{100 * r['size_error_median']:.1f}% max {100 * r['size_error_max']:.1f}%"
                  + (f" | weight decay {args.alt_weight_decay}: R^2 {r['alt_r2']:.2f} MAE {r['alt_mae']:.2f}" if alt else ""),
                  flush=True)  # fmt: skip
    summary = {}
    for n in sizes:
        at = [r for r in rows if r["n"] == n]
        keys = ("new_r2", "old_r2", "new_mae", "old_mae") + (("alt_r2", "alt_mae") if args.alt_weight_decay is not None else ())
        summary[n] = {k: round(float(np.median([r[k] for r in at])), 3) for k in keys}
    result = {
        "command": "python bench/surrogate_cv.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, torch {torch.__version__}",
        "rows": rows, "median_over_studies": summary,
    }  # fmt: skip
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for n, s in summary.items():
        print(f"n={n}: median R^2 shared-layer {s['new_r2']:.2f} vs params MLP {s['old_r2']:.2f}; "
              f"MAE {s['new_mae']:.2f} vs {s['old_mae']:.2f}"
              + (f"; weight decay {args.alt_weight_decay}: R^2 {s['alt_r2']:.2f} MAE {s['alt_mae']:.2f}" if "alt_r2" in s else ""))  # fmt: skip


if __name__ == "__main__":
    main()
