"""The sampler registry: a spec's ``study.sampler`` names one of these.

Optuna's samplers are registered here; other packages register theirs (``autoprune.surrogate``
registers ``surrogate`` when it is imported), so ``search`` never imports what sits above it.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Callable

import optuna

from autoprune.errors import UnknownNameError

if TYPE_CHECKING:
    from autoprune.search.spec import StudySpec

SamplerFactory = Callable[["StudySpec", int], optuna.samplers.BaseSampler]  # (spec, seed) -> sampler
_REGISTRY: dict[str, SamplerFactory] = {}


def register_sampler(name: str) -> Callable[[SamplerFactory], SamplerFactory]:
    def add(factory: SamplerFactory) -> SamplerFactory:
        _REGISTRY[name] = factory
        return factory

    return add


def list_samplers() -> list[str]:
    return sorted(_REGISTRY)


def sampler_factory(name: str) -> SamplerFactory:
    if name not in _REGISTRY:
        hint = " (import autoprune.surrogate to register it)" if name == "surrogate" else ""
        raise UnknownNameError(f"unknown sampler {name!r}{hint}; valid samplers: {', '.join(list_samplers())}")
    return _REGISTRY[name]


def make_sampler(spec: StudySpec, seed: int) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():  # GP and constant liar are "experimental" in Optuna 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return sampler_factory(spec.study.sampler)(spec, seed)


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
