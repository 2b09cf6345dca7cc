"""The sampler registry: a spec's ``study.sampler`` names one of these.

Optuna's samplers are registered here; other packages register theirs (``autoprune.surrogate``
registers ``surrogate`` when it is imported), so ``search`` never imports what sits above it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from autoprune.errors import UnknownNameError
from autoprune.registry import Registry

if TYPE_CHECKING:
    from autoprune.search.spec import StudySpec

SamplerFactory = Callable[["StudySpec", int], optuna.samplers.BaseSampler]  # (spec, seed) -> sampler
SAMPLERS: Registry[SamplerFactory] = Registry("sampler")


def register_sampler(name: str) -> Callable[[SamplerFactory], SamplerFactory]:
    """``@register_sampler("name")`` on a ``(spec, seed) -> optuna sampler`` function."""
    return SAMPLERS.register(name)


def list_samplers() -> list[str]:
    return SAMPLERS.names()


def sampler_factory(name: str) -> SamplerFactory:
    if name == "surrogate" and name not in SAMPLERS:
        raise UnknownNameError("unknown sampler 'surrogate': import autoprune.surrogate to register it")
    return SAMPLERS.get(name)


def sampler_name(sampler: optuna.samplers.BaseSampler) -> str:
    """What a trial records as its source: the wrapped sampler's class name."""
    return getattr(sampler, "name", type(sampler).__name__)


def make_sampler(spec: StudySpec, seed: int) -> TrialSeeded:
    """The spec's sampler, its random draws for trial N seeded by (``seed``, N)."""
    factory = sampler_factory(spec.study.sampler)
    return TrialSeeded(lambda trial_seed: factory(spec, trial_seed), seed)


def trial_seed(seed: int, number: int) -> int:
    """Trial ``number``'s sampler seed: mixed, so that seed 1's trial 0 is not seed 0's trial 1."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


class TrialSeeded(optuna.samplers.BaseSampler):
    """A sampler whose random draws for trial N come from (``seed``, N), not from one stream
    per process: workers started as separate commands (or machines) on one study never draw
    the same trial, since trial numbers are unique in the storage, and a run replays exactly
    from its seed. A fresh inner sampler per trial; Optuna's samplers keep their history in
    the study, so only their random state is lost between trials, which is the point."""

    def __init__(self, make: Callable[[int], optuna.samplers.BaseSampler], seed: int) -> None:
        self._make, self._seed = make, seed
        self._context: Any = None
        self._inner = self._new(seed)
        self.name = type(self._inner).__name__  # what trials record as their source

    def _new(self, seed: int) -> optuna.samplers.BaseSampler:
        with warnings.catch_warnings():  # GP and constant liar are "experimental" in Optuna 5
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            inner = self._make(seed)
        if self._context is not None and hasattr(inner, "attach"):
            inner.attach(self._context)
        return inner

    def attach(self, context: Any) -> None:
        """The search's context (base model, data, space), for samplers that model the network
        itself (the surrogate's): handed to every inner sampler that takes it."""
        self._context = context
        if hasattr(self._inner, "attach"):
            self._inner.attach(context)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._inner = self._new(trial_seed(self._seed, trial.number))
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        """Optuna reseeds before a threaded optimize; the seeds here come from trial numbers."""


@register_sampler("tpe")
def _tpe(spec: StudySpec, seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)


@register_sampler("random")
def _random(spec: StudySpec, seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed)


@register_sampler("nsga2")
def _nsga2(spec: StudySpec, seed: int) -> optuna.samplers.BaseSampler:
    # Optuna's default population (50) is pure random search for a budget under 100 trials: a
    # generation a quarter of the budget (4..50) lets it evolve.
    population = max(4, min(50, spec.study.trials // 4))
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=population)


@register_sampler("gp")
def _gp(spec: StudySpec, seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.GPSampler(seed=seed)


PrunerFactory = Callable[["StudySpec"], optuna.pruners.BasePruner]
PRUNERS: Registry[PrunerFactory] = Registry("pruner")  # study.pruner: stops a poor trial early


@PRUNERS.register("median")
def _median(spec: StudySpec) -> optuna.pruners.BasePruner:
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)


@PRUNERS.register("hyperband")
def _hyperband(spec: StudySpec) -> optuna.pruners.BasePruner:
    top = max(spec.space.finetune_epochs) + max(spec.space.quant_epochs)  # epochs: the resource
    return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(top, 2))


@PRUNERS.register("none")
def _none(spec: StudySpec) -> optuna.pruners.BasePruner:
    return optuna.pruners.NopPruner()


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """The spec's pruner; none for two objectives (intermediate values need one)."""
    if len(spec.study.objectives) > 1:
        return optuna.pruners.NopPruner()
    return PRUNERS.get(spec.study.pruner)(spec)
