"""Which layers of a network the compression stages act on, by qualified module name."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch import nn

from autoprune.errors import AutoPruneError


class RecipeError(AutoPruneError):
    """A compression recipe or config with a value out of range or an unknown layer."""


WeightLayer = nn.Conv2d | nn.Linear  # the layers that hold prunable weights


def weight_layers(model: nn.Module) -> dict[str, WeightLayer]:
    """Conv and linear layers in definition order: the layers that hold prunable weights."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def conv_layers(model: nn.Module) -> dict[str, nn.Conv2d]:
    return {n: m for n, m in weight_layers(model).items() if isinstance(m, nn.Conv2d)}


def layer_kind(module: nn.Module) -> str:
    return "conv" if isinstance(module, nn.Conv2d) else "fc"


def output_layer(model: nn.Module) -> str:
    """The classifier: the last weight layer, whose outputs must stay whole."""
    layers = weight_layers(model)
    if not layers:
        raise RecipeError("the model has no conv or linear layer to compress")
    return list(layers)[-1]


def check_layer_names(names: Iterable[str], valid: Mapping[str, nn.Module], what: str) -> None:
    unknown = sorted(set(names) - set(valid))
    if unknown:
        raise RecipeError(f"unknown layer {unknown[0]!r} in {what}; layers: {', '.join(valid) or '(none)'}")
