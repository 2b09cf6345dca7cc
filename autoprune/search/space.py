"""The search space: the only place that calls ``trial.suggest_*``.

The space is data: :func:`distributions` lists every sampled parameter with its Optuna
distribution, :func:`config_from_params` turns a set of values into a plain
:class:`CompressConfig` for the engine. Everything below runs without Optuna; the surrogate
proposes values through the same two functions.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from torch import nn

from autoprune.compress import CompressConfig, Param, SpaceLayers, ordered_stages
from autoprune.search.spec import SpaceSection


def distributions(space: SpaceSection, layers: SpaceLayers) -> dict[str, BaseDistribution]:
    """Every sampled parameter, as the stages declare them: what each removes or codes, in
    pipeline order, then each one's training budget; a range of one value is fixed and not
    sampled."""
    params = [p for stage in ordered_stages() for p in stage.params(space, layers)]
    return {p.name: _distribution(p) for p in sorted(params, key=lambda p: p.training)}


def _distribution(p: Param) -> BaseDistribution:
    if p.choices:
        return CategoricalDistribution(p.choices)
    if p.integer:
        return IntDistribution(int(p.low), int(p.high))
    return FloatDistribution(p.low, p.high, log=p.log)


def config_from_params(
    params: dict[str, Any], space: SpaceSection, layers: SpaceLayers, *, seed: int = 0
) -> CompressConfig:
    """The engine config for sampled ``params``; fixed parts of the space fill the rest."""
    configs = [stage.from_params(params, space, layers, seed=seed) for stage in ordered_stages()]
    return CompressConfig.of(*(c for c in configs if c is not None), name="search")


def suggest(trial: optuna.Trial, dists: dict[str, BaseDistribution]) -> dict[str, Any]:
    """Ask the trial for every parameter of the space (enqueued values come back as given)."""
    params: dict[str, Any] = {}
    for name, dist in dists.items():
        if isinstance(dist, IntDistribution):
            params[name] = trial.suggest_int(name, dist.low, dist.high)
        elif isinstance(dist, FloatDistribution):
            params[name] = trial.suggest_float(name, dist.low, dist.high, log=dist.log)
        else:
            assert isinstance(dist, CategoricalDistribution)
            params[name] = trial.suggest_categorical(name, dist.choices)
    return params


def out_of_space(params: dict[str, Any], dists: dict[str, BaseDistribution]) -> str | None:
    """What is wrong with ``params`` as values of ``dists`` (None: every one lies inside).

    ``suggest`` hands back an enqueued value as given, even outside its range; a search trial
    runs only what its space allows (a queued ``finetune_epochs = 10**6`` is refused here)."""
    for name, dist in dists.items():
        value = params.get(name)
        if isinstance(dist, CategoricalDistribution):
            ok = value in dist.choices
        elif isinstance(dist, IntDistribution):
            ok = isinstance(value, int) and not isinstance(value, bool) and dist.low <= value <= dist.high
        else:
            assert isinstance(dist, FloatDistribution)
            ok = (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and dist.low <= value <= dist.high
            )
        if not ok:
            return f"parameter {name}={value!r} lies outside the search space ({_describe(dist)})"
    return None


def _describe(dist: BaseDistribution) -> str:
    if isinstance(dist, CategoricalDistribution):
        return "one of " + ", ".join(map(str, dist.choices))
    return f"{dist.low}..{dist.high}"  # type: ignore[attr-defined]


def recipe_params(
    recipe: CompressConfig, dists: dict[str, BaseDistribution], base: nn.Module
) -> dict[str, Any]:
    """A recipe as values of the space's parameters, so it can be enqueued beside the search:
    each stage says what its config is in its parameters; what the space cannot express
    (weight sharing switched off, a value outside a range) is left out."""
    params: dict[str, Any] = {}
    for stage, config in recipe.items():
        params.update(stage.to_params(config, list(dists), base))
    # Only values the space can hold: a retried trial must validate against its distributions.
    return {k: params[k] for k in dists if k in params and holds(dists[k], params[k])}


def holds(dist: BaseDistribution, value: Any) -> bool:
    """Whether ``dist`` can hold ``value`` (a range's bounds and step, or a choice)."""
    if isinstance(dist, CategoricalDistribution):
        return value in dist.choices
    assert isinstance(dist, (IntDistribution, FloatDistribution))
    if isinstance(dist, IntDistribution) and (isinstance(value, bool) or value != int(value)):
        return False
    if not dist.low <= value <= dist.high:
        return False
    step = dist.step
    return step is None or abs((value - dist.low) / step - round((value - dist.low) / step)) < 1e-8


def at_full_budget(config: CompressConfig, epochs: int, quant_epochs: int) -> CompressConfig:
    """A search trial's settings for the final stage: ``epochs`` of fine-tuning with no batch cap."""
    finetune = dataclasses.replace(config.finetune, epochs=epochs, max_batches=None)
    return config.replace(finetune, dataclasses.replace(config.quantize, epochs=quant_epochs))


def baseline_config(recipe: CompressConfig, space: SpaceSection, *, final: bool = False) -> CompressConfig:
    """A baseline recipe fine-tuned as the search's trials are: with the space's distillation
    when the recipe sets none and, in a capped trial (not a final one), the same batch cap."""
    finetune = recipe.finetune
    if space.distill and not finetune.distill:
        finetune = dataclasses.replace(finetune, distill=space.distill)
    if space.max_batches and not final:
        finetune = dataclasses.replace(finetune, max_batches=space.max_batches)
    return recipe if finetune == recipe.finetune else recipe.replace(finetune)
