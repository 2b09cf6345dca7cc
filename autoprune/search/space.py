"""The search space: the only place that calls ``trial.suggest_*``.

The space is data: :func:`distributions` lists every sampled parameter with its Optuna
distribution, :func:`config_from_params` turns a set of values into a plain
:class:`CompressConfig` for the engine. Everything below runs without Optuna; the surrogate
proposes values through the same two functions.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import optuna
import torch
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from torch import nn

from autoprune.compress import (
    CompressConfig,
    FilterPruneConfig,
    MagnitudeConfig,
    ShareConfig,
    conv_layers,
    output_layer,
    weight_layers,
)
from autoprune.search.spec import SpaceSection
from autoprune.train import TrainConfig


@dataclass(frozen=True)
class SpaceLayers:
    """The layers the space has per-layer parameters for."""

    conv: tuple[str, ...]  # conv layers whose filters may be removed
    weights: tuple[str, ...]  # conv and linear layers for magnitude pruning

    @classmethod
    def of(cls, model: nn.Module) -> SpaceLayers:
        out = output_layer(model)
        convs = [
            n
            for n, m in conv_layers(model).items()
            if n != out and not (m.groups > 1 and m.groups == m.in_channels)
        ]
        return cls(tuple(convs), tuple(weight_layers(model)))


def distributions(space: SpaceSection, layers: SpaceLayers) -> dict[str, BaseDistribution]:
    """Every sampled parameter; a range of one value is fixed and not sampled."""
    d: dict[str, BaseDistribution] = {}

    def add(name: str, values: list, kind: type, log: bool = False) -> None:
        if len(values) == 2:
            low, high = values
            d[name] = IntDistribution(low, high) if kind is int else FloatDistribution(low, high, log=log)

    if space.structured == "per_layer":
        for layer in layers.conv:
            add(f"ratio_{layer}", space.ratio, float)
    elif space.structured == "global" and layers.conv:
        add("ratio", space.ratio, float)
    if space.magnitude == "per_layer":
        for layer in layers.weights:
            add(f"quality_{layer}", space.quality, float)
    elif space.magnitude == "global":
        add("quality", space.quality, float)
    add("conv_bits", space.conv_bits, int)
    add("fc_bits", space.fc_bits, int)
    if len(space.init) > 1:
        d["init"] = CategoricalDistribution(space.init)
    add("finetune_epochs", space.finetune_epochs, int)
    add("lr", space.lr, float, log=True)
    add("quant_epochs", space.quant_epochs, int)
    return d


def config_from_params(
    params: dict[str, Any], space: SpaceSection, layers: SpaceLayers, *, seed: int = 0
) -> CompressConfig:
    """The engine config for sampled ``params``; fixed parts of the space fill the rest."""

    def value(name: str, values: list) -> Any:
        return params[name] if name in params else values[0]

    def per_layer(mode: str, name: str, values: list, names: tuple[str, ...]) -> dict[str, Any]:
        if mode == "off":
            return {}
        return {n: value(f"{name}_{n}" if mode == "per_layer" else name, values) for n in names}

    ratios = per_layer(space.structured, "ratio", space.ratio, layers.conv)
    quality = per_layer(space.magnitude, "quality", space.quality, layers.weights)
    epochs = value("finetune_epochs", space.finetune_epochs)
    lr = value("lr", space.lr)
    return CompressConfig(
        name="search",
        structured=FilterPruneConfig(mode="ratio", layers=ratios),
        unstructured=MagnitudeConfig(mode="quality", layers=quality),
        finetune=TrainConfig(epochs=epochs, lr=lr, max_batches=space.max_batches or None),
        quantize=ShareConfig(
            conv_bits=value("conv_bits", space.conv_bits),
            fc_bits=value("fc_bits", space.fc_bits),
            init=params.get("init", space.init[0]),
            seed=seed,
            epochs=value("quant_epochs", space.quant_epochs),
            lr=lr / 10,
        ),
    )


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
    """A recipe as values of the space's parameters, so it can be enqueued beside the search.

    A sparsity target becomes the quality (threshold / std) that reaches it on the base
    weights; what the space cannot express (weight sharing switched off, a value outside a
    range) is left out.
    """
    layers = weight_layers(base)
    params: dict[str, Any] = {}
    s, u, q, f = recipe.structured, recipe.unstructured, recipe.quantize, recipe.finetune
    for name in dists:
        if name == "ratio" and s.mode == "ratio":
            params[name] = s.default
        elif name.startswith("ratio_") and s.mode == "ratio":
            params[name] = s.value_for(name.removeprefix("ratio_"))
        elif name == "quality" or name.startswith("quality_"):
            layer = name.removeprefix("quality_") if name != "quality" else None
            target = u.value_for(layer) if layer else u.default
            if u.mode == "quality":
                params[name] = target
            elif layer is not None:
                w = layers[layer].weight.detach().abs().flatten()
                threshold = torch.quantile(w, target).item() if target > 0 else 0.0
                params[name] = threshold / float(layers[layer].weight.detach().std())
        elif name in ("conv_bits", "fc_bits") and q.enabled:
            params[name] = getattr(q, name)
        elif name == "init" and q.enabled:
            params[name] = q.init
        elif name == "finetune_epochs":
            params[name] = f.epochs
        elif name == "lr":
            params[name] = f.lr
        elif name == "quant_epochs" and q.enabled:
            params[name] = q.epochs
    # Only values the space can hold: a retried trial must validate against its distributions.
    return {k: v for k, v in params.items() if holds(dists[k], v)}


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
    quantize = dataclasses.replace(config.quantize, epochs=quant_epochs)
    return dataclasses.replace(config, finetune=finetune, quantize=quantize)


def with_cap(recipe: CompressConfig, space: SpaceSection) -> CompressConfig:
    """A baseline recipe under the search's fine-tuning budget (the same batch cap)."""
    if not space.max_batches:
        return recipe
    return dataclasses.replace(
        recipe, finetune=dataclasses.replace(recipe.finetune, max_batches=space.max_batches)
    )
