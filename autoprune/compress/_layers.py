"""Which layers of a network the compression stages act on, by qualified module name."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeVar, cast

import torch
from torch import nn

from autoprune.errors import AutoPruneError


class RecipeError(AutoPruneError):
    """A compression recipe or config with a value out of range or an unknown layer."""


WeightLayer = nn.Conv2d | nn.Linear  # the layers that hold prunable weights
T = TypeVar("T")
# A layer's place in any network, so one recipe fits every network: Deep Compression's
# per-layer settings of LeNet-5 said by position (its conv1, conv2, fc1 and fc2).
POSITIONS = ("first_conv", "conv", "hidden_fc", "output")


def weight_layers(model: nn.Module) -> dict[str, WeightLayer]:
    """Conv and linear layers in definition order: the layers that hold prunable weights."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


@torch.no_grad()
def norm_affine(norm: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch norm's inference map on its running statistics, ``y = scale * x + shift``: (C,) each."""
    mean, var = cast(torch.Tensor, norm.running_mean), cast(torch.Tensor, norm.running_var)
    scale = torch.rsqrt(var + norm.eps)
    if not norm.affine:
        return scale, -mean * scale
    scale = scale * norm.weight
    return scale, norm.bias - mean * scale


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


def layer_positions(model: nn.Module) -> dict[str, str]:
    """Every weight layer's position: the first conv (the one that sees the image), the other
    convs, the linear layers before the output, and the output layer (the classifier, linear
    or conv)."""
    out = output_layer(model)
    positions = {}
    for name, layer in weight_layers(model).items():
        if name == out:
            positions[name] = "output"
        elif isinstance(layer, nn.Linear):
            positions[name] = "hidden_fc"
        else:
            positions[name] = "conv" if "first_conv" in positions.values() else "first_conv"
    return positions


def by_position(
    layers: Mapping[str, float], positions: Mapping[str, float], model: nn.Module, among: Iterable[str]
) -> dict[str, float]:
    """``layers`` with every other layer of ``among`` (those a stage acts on) given its
    position's value from ``positions``; a layer named in ``layers`` keeps its own."""
    where = layer_positions(model)
    out = dict(layers)
    for name in among:
        if name not in out and where.get(name) in positions:
            out[name] = positions[where[name]]
    return out


def check_positions(positions: Mapping[str, float], what: str) -> None:
    unknown = sorted(set(positions) - set(POSITIONS))
    if unknown:
        raise RecipeError(f"unknown position {unknown[0]!r} in {what}; positions: {', '.join(POSITIONS)}")


def setting(settings: Mapping[str, T], name: str, default: T) -> T:
    """A layer's own setting, else that of the module above it, else ``default``: a stage that
    replaces a layer by several names them below it (a low-rank ``fc1`` becomes ``fc1.0`` and
    ``fc1.1``), and they keep what a recipe or a search set for ``fc1``."""
    while name not in settings:
        if "." not in name:
            return default
        name = name.rpartition(".")[0]
    return settings[name]


def check_layer_names(names: Iterable[str], valid: Mapping[str, nn.Module], what: str) -> None:
    """Every name is a layer of ``valid`` or a module holding some (the layers made of it)."""
    unknown = sorted(
        n for n in set(names) if n not in valid and not any(v.startswith(n + ".") for v in valid)
    )
    if unknown:
        raise RecipeError(f"unknown layer {unknown[0]!r} in {what}; layers: {', '.join(valid) or '(none)'}")
