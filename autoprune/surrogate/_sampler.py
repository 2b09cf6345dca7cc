"""``--sampler surrogate``: TPE until enough trials exist, then the candidate where the
shared-layer surrogate expects the largest feasible gain in compression ratio.

The acquisition is constrained expected improvement with a known objective: a candidate's
compression ratio is computed exactly (:class:`~autoprune.compress.size.SizeModel`), so its
improvement over the best feasible trial so far is certain, and is weighed by the probability
that its accuracy drop stays within the budget (the ensemble's mean and spread). With
parallel workers, candidates near a point another worker is running are penalised (local
penalisation), so that two workers do not run the same trial. Each trial it proposes records
its predicted drop, spread and ratio, and ``proposer = "surrogate"``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, TPESampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState
from scipy.stats import norm

from autoprune._compat import set_trial_user_attr
from autoprune.search.objective import stored_recipes
from autoprune.search.record import Budget, Source
from autoprune.search.samplers import register_sampler
from autoprune.surrogate._history import History, ModelSpace, history_from_trials
from autoprune.surrogate._model import Surrogate
from autoprune.surrogate._propose import anchors, score
from autoprune.surrogate._space import model_space

MIN_DROP_SPREAD = 0.1  # points: an ensemble agreeing with itself is not certainty
BUSY_RADIUS = 0.1  # per unit-box dimension: how far a running trial's penalty reaches


class SurrogateSampler(BaseSampler):
    def __init__(
        self,
        *,
        max_acc_drop: float = 1.0,
        drop_z: float = 0.0,  # judge drops as acc_drop + drop_z * acc_drop_se (the study's rule)
        n_startup_trials: int = 10,
        candidates: int = 400,  # drawn at random, and as many again near the best trials
        n_members: int = 5,
        seed: int | None = None,
        model: ModelSpace | None = None,  # the study's network and space; search attaches it
    ):
        self.max_acc_drop = max_acc_drop
        self.budget = Budget(max_acc_drop, drop_z)
        self.n_startup_trials = n_startup_trials
        self.candidates = candidates
        self.n_members = n_members
        self.model = model
        self._startup = TPESampler(seed=seed, multivariate=True, constant_liar=True)
        self._rng = np.random.default_rng(seed)
        self._seed = seed or 0
        self._read: tuple[int, Any] | None = None  # (trial number, what _ready found for it)

    def attach(self, context: Any) -> None:
        """Called by the search with its context once the base model is loaded."""
        self.model = model_space(context)

    def _ready(self, study: Study, trial: FrozenTrial) -> tuple[History, list[FrozenTrial]] | None:
        """The usable history and the other running trials, once enough trials exist; read once
        per trial (Optuna asks twice)."""
        if self._read is not None and self._read[0] == trial.number:
            return self._read[1]
        ready = None
        if self.model is not None:
            trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
            complete = [t for t in trials if t.state == TrialState.COMPLETE]
            if sum(t.user_attrs.get("source") != Source.FINAL for t in complete) >= self.n_startup_trials:
                history = history_from_trials(complete, self.model, self.budget, stored_recipes(study))
                running = [t for t in trials if t.state == TrialState.RUNNING and t.number != trial.number]
                ready = (history, running) if len(history) >= self.n_startup_trials else None
        self._read = (trial.number, ready)
        return ready

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        if self._ready(study, trial) is not None and self.model is not None:
            return self.model.dists
        return self._startup.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        ready = self._ready(study, trial)
        if ready is None or self.model is None or search_space != self.model.dists:
            return self._startup.sample_relative(study, trial, search_space)
        history, others = ready
        running = [t.params for t in others if all(n in t.params for n in search_space)]
        params, predicted = self._propose(history, running)
        for key, value in predicted.items():
            set_trial_user_attr(study, trial, key, value)
        return params

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
        self, history: History, running: Sequence[Mapping[str, Any]] = ()
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The best candidate and what the surrogate expects of it; ``running``: the
        parameters of trials other workers are running."""
        model = self.model
        assert model is not None
        enc = model.encoder
        surrogate = Surrogate(n_members=self.n_members, seed=self._seed + len(history)).fit(history, cv=False)
        near = anchors(history, model.name, self.max_acc_drop)
        parts = [enc.sample(self._rng, self.candidates)]
        if near:
            parts.append(enc.perturb(self._rng, np.array([enc.encode(p) for p in near]), self.candidates))
        rows = np.vstack(parts)
        pred, ratio = score(model, surrogate, rows)
        mean, spread = pred["acc_drop"]
        p_feasible = norm.cdf((self.max_acc_drop - mean) / np.maximum(spread, MIN_DROP_SPREAD))
        ok = history.drop <= self.max_acc_drop
        best = float(np.log(history.ratio[ok].max())) if ok.any() else 0.0
        gain = np.maximum(np.log(ratio) - best, 0.0)
        acquisition = gain * p_feasible if (gain > 0).any() else p_feasible * np.log(ratio)
        if running:
            busy = np.array([enc.encode(p) for p in running])  # (R, columns)
            distance = np.linalg.norm(rows[:, None, :] - busy[None, :, :], axis=2)  # (N, R)
            radius = BUSY_RADIUS * math.sqrt(rows.shape[1])
            acquisition = acquisition * np.prod(1.0 - np.exp(-((distance / radius) ** 2)), axis=1)
        i = int(np.argmax(acquisition))
        optuna.logging.get_logger(__name__).info(
            "surrogate proposal: acquisition %.4g, predicted drop %.2f +- %.2f, ratio %.1f",
            acquisition[i],
            mean[i],
            spread[i],
            ratio[i],
        )
        predicted = {
            "proposer": "surrogate",
            "predicted_acc_drop": float(mean[i]),
            "predicted_acc_drop_spread": float(spread[i]),
            "predicted_compression_ratio": float(ratio[i]),
        }
        return enc.decode(rows[i]), predicted


@register_sampler("surrogate")
def make_surrogate_sampler(spec: Any, seed: int) -> SurrogateSampler:
    """``study.sampler = "surrogate"``: TPE to start, then the surrogate's constrained EI."""
    budget = spec.study.budget
    return SurrogateSampler(max_acc_drop=budget.max_drop, drop_z=budget.z, seed=seed)
