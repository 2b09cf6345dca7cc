"""``--sampler surrogate``: TPE until enough trials exist, then the candidate where the MLP
ensemble expects the largest feasible gain in compression ratio.

The acquisition is constrained expected improvement: the expected improvement of the log
compression ratio over the best feasible trial so far (mean and spread of the ensemble), times
the probability that the accuracy drop stays within the budget. Before any trial is feasible it
maximises that probability alone. With parallel workers, candidates near a point another worker
is running are penalised (local penalisation), so that two workers do not run the same trial.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, TPESampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState
from scipy.stats import norm

from autoprune.ops.pareto import feasible
from autoprune.search.record import Budget
from autoprune.search.samplers import register_sampler
from autoprune.surrogate._history import Encoder, history_from_trials
from autoprune.surrogate._model import Surrogate
from autoprune.surrogate._propose import best_rows

MIN_DROP_SPREAD = 0.1  # points: an ensemble agreeing with itself is not certainty
BUSY_RADIUS = 0.1  # per unit-box dimension: how far a running trial's penalty reaches


class SurrogateSampler(BaseSampler):
    def __init__(
        self,
        *,
        max_acc_drop: float = 1.0,
        drop_z: float = 0.0,  # judge drops as acc_drop + drop_z * acc_drop_se (the study's rule)
        n_startup_trials: int = 10,
        candidates: int = 2000,
        n_members: int = 5,
        seed: int | None = None,
    ):
        self.max_acc_drop = max_acc_drop
        self.budget = Budget(max_acc_drop, drop_z)
        self.n_startup_trials = n_startup_trials
        self.candidates = candidates
        self.n_members = n_members
        self._startup = TPESampler(seed=seed, multivariate=True, constant_liar=True)
        self._rng = np.random.default_rng(seed)
        self._seed = seed or 0
        self._read: tuple[int, Any] | None = None  # (trial number, what _space found for it)

    def _space(
        self, study: Study, trial: FrozenTrial
    ) -> tuple[dict[str, BaseDistribution], list[FrozenTrial], list[FrozenTrial]] | None:
        """The space as the trials saw it (the widest completed trial), the completed trials and
        the other running ones, once enough exist; read once per trial (Optuna asks twice)."""
        if self._read is not None and self._read[0] == trial.number:
            return self._read[1]
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        ready = None
        if complete:
            dists = max((t.distributions for t in complete), key=len)
            usable = [t for t in complete if all(n in t.params for n in dists)]
            if len(usable) >= self.n_startup_trials:
                running = [t for t in trials if t.state == TrialState.RUNNING and t.number != trial.number]
                ready = (dict(dists), complete, running)
        self._read = (trial.number, ready)
        return ready

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        ready = self._space(study, trial)
        return ready[0] if ready else self._startup.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        ready = self._space(study, trial)
        if ready is None or ready[0] != search_space:
            return self._startup.sample_relative(study, trial, search_space)
        dists, complete, others = ready
        running = [t.params for t in others if all(n in t.params for n in dists)]
        return self._propose(dists, complete, running)

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._startup.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._startup.before_trial(study, trial)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        self._startup.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._startup.reseed_rng()
        self._rng = np.random.default_rng()

    def _propose(
        self,
        dists: dict[str, BaseDistribution],
        trials: list[FrozenTrial],
        running: Sequence[Mapping[str, Any]] = (),
    ) -> dict[str, Any]:
        """The best candidate; ``running``: the parameters of trials other workers are running."""
        encoder = Encoder(dists)
        history = history_from_trials(trials, encoder, self.budget)
        surrogate = Surrogate(encoder, n_members=self.n_members, seed=self._seed + len(history)).fit(
            history, cv=False
        )
        drop, log_ratio = history.target("acc_drop"), history.target("log_compression_ratio")
        ok = feasible(drop, self.max_acc_drop)
        anchors = best_rows(history, self.max_acc_drop)
        rows = np.vstack(
            [encoder.sample(self._rng, self.candidates), encoder.perturb(self._rng, anchors, self.candidates)]
        )
        rows = np.array([encoder.canonical(r) for r in rows])
        pred = surrogate.predict(rows)
        d_mean, d_spread = pred["acc_drop"]
        p_feasible = norm.cdf((self.max_acc_drop - d_mean) / np.maximum(d_spread, MIN_DROP_SPREAD))
        if ok.any():
            mu, sd = pred["log_compression_ratio"]
            sd = np.maximum(sd, 1e-6)
            z = (mu - log_ratio[ok].max()) / sd
            score = ((mu - log_ratio[ok].max()) * norm.cdf(z) + sd * norm.pdf(z)) * p_feasible
        else:
            score = p_feasible
        if running:
            busy = np.array([encoder.encode(p) for p in running])  # (R, columns)
            distance = np.linalg.norm(rows[:, None, :] - busy[None, :, :], axis=2)  # (N, R)
            radius = BUSY_RADIUS * math.sqrt(rows.shape[1])
            score = score * np.prod(1.0 - np.exp(-((distance / radius) ** 2)), axis=1)
        best = int(np.argmax(score))
        optuna.logging.get_logger(__name__).info(
            "surrogate proposal: acquisition %.4g, predicted drop %.2f, ratio %.1f",
            score[best], d_mean[best], math.exp(pred["log_compression_ratio"][0][best]),
        )  # fmt: skip
        return encoder.decode(rows[best])


@register_sampler("surrogate")
def make_surrogate_sampler(spec: Any, seed: int) -> SurrogateSampler:
    """``study.sampler = "surrogate"``: TPE to start, then the ensemble's constrained EI."""
    budget = spec.study.budget
    return SurrogateSampler(max_acc_drop=budget.max_drop, drop_z=budget.z, seed=seed)
