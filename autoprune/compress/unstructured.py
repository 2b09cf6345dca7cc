"""Magnitude pruning of single weights (Han et al., 2015; Deep Compression stage 1).

Per layer, weights with |w| below a threshold are set to zero and held there by a mask. The
threshold is either ``quality * std(layer weights)`` or the magnitude that reaches a target
sparsity.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from autoprune.compress._layers import (
    RecipeError,
    by_position,
    check_layer_names,
    check_positions,
    setting,
    weight_layers,
)
from autoprune.compress.stage import (
    Param,
    Run,
    SpaceLayers,
    Stage,
    per_layer_params,
    per_layer_values,
    register,
)

Masks = dict[str, torch.Tensor]  # layer name -> bool mask of the weights kept


@dataclass(frozen=True)
class MagnitudeConfig:
    mode: str = "quality"  # "quality": threshold = value * std; "sparsity": share of weights zeroed
    default: float = 0.0  # for every conv / linear layer not named in ``layers`` or ``positions``
    layers: dict[str, float] = field(default_factory=dict)
    positions: dict[str, float] = field(default_factory=dict)  # by layer position (first_conv, ...)
    # Prune in this many steps spread over the fine-tuning epochs (Zhu & Gupta's cubic schedule,
    # as Deep Compression prunes iteratively); 1: all at once before fine-tuning.
    steps: int = 1

    def __post_init__(self) -> None:
        if self.mode not in ("quality", "sparsity"):
            raise RecipeError(f"unstructured mode={self.mode!r} should be 'quality' or 'sparsity'")
        if self.steps < 1:
            raise RecipeError(f"unstructured steps={self.steps} should be at least 1")
        check_positions(self.positions, "unstructured.positions")
        for name, value in [("default", self.default), *self.layers.items(), *self.positions.items()]:
            if self.mode == "sparsity" and not 0.0 <= value < 1.0:
                raise RecipeError(f"unstructured sparsity for {name}={value} should be in [0, 1)")
            if self.mode == "quality" and not 0.0 <= value <= 10.0:
                raise RecipeError(f"unstructured quality for {name}={value} should be in [0, 10]")

    def value_for(self, name: str) -> float:
        return setting(self.layers, name, self.default)

    def steps_over(self, epochs: int) -> int:
        """Pruning steps over ``epochs`` of fine-tuning (one at most per epoch, one without any)."""
        return min(self.steps, epochs) if epochs > 0 else 1

    def at_step(self, step: int, steps: int) -> MagnitudeConfig:
        """The share of the final pruning reached after ``step`` of ``steps`` (cubic ramp:
        large steps first, while the network has the most to give)."""
        f = 1.0 - (1.0 - step / steps) ** 3
        return dataclasses.replace(
            self,
            default=self.default * f,
            layers={k: v * f for k, v in self.layers.items()},
            positions={k: v * f for k, v in self.positions.items()},
            steps=1,
        )


def magnitude_mask(weight: torch.Tensor, mode: str, value: float) -> torch.Tensor:
    """Bool mask of the weights kept (pure: tensor in, tensor out)."""
    w = weight.detach().abs()
    if value <= 0:
        return torch.ones_like(w, dtype=torch.bool)
    if mode == "quality":
        return w >= value * float(weight.detach().std())
    pruned = int(round(value * w.numel()))
    if pruned == 0:
        return torch.ones_like(w, dtype=torch.bool)
    # keep the numel - pruned largest; ties broken by position so the count is exact
    order = torch.argsort(w.flatten(), stable=True)
    mask = torch.ones(w.numel(), dtype=torch.bool)
    mask[order[:pruned]] = False
    return mask.view_as(w)


@torch.no_grad()
def prune_magnitude_(model: nn.Module, config: MagnitudeConfig) -> Masks:
    """Zero the small weights of every conv / linear layer in place; returns the masks."""
    layers = weight_layers(model)
    check_layer_names(config.layers, layers, "unstructured.layers")
    masks = {}
    for name, layer in layers.items():
        mask = magnitude_mask(layer.weight, config.mode, config.value_for(name))
        mask &= layer.weight != 0  # weights already zero stay pruned
        layer.weight.mul_(mask)
        masks[name] = mask
    return masks


def mask_holder(model: nn.Module, masks: Masks):
    """An ``after_step`` hook for :func:`autoprune.train.fit` that keeps pruned weights at zero."""
    layers = weight_layers(model)
    pairs = [(layers[name].weight, mask) for name, mask in masks.items() if not bool(mask.all())]

    @torch.no_grad()
    def hold() -> None:
        for i, (weight, mask) in enumerate(pairs):
            if mask.device != weight.device:  # the model was moved to the training device
                pairs[i] = (weight, mask := mask.to(weight.device))
            weight.mul_(mask)

    return hold


@register
class MagnitudePruning(Stage):
    name = "unstructured"
    config = MagnitudeConfig
    order = 20
    label = "magnitude pruning"
    timing = "prune_s"

    def apply_(self, model: nn.Module, config: MagnitudeConfig, run: Run) -> None:
        # the first step of a gradual schedule (fine-tuning takes the others); a replay, which
        # does not fine-tune, prunes all at once
        steps = config.steps_over(run.config.finetune.epochs) if run.training else 1
        run.masks = prune_magnitude_(model, config.at_step(1, steps))

    def params(self, space: Any, layers: SpaceLayers) -> list[Param]:
        return per_layer_params(space.magnitude, "quality", space.quality, layers.weights)

    def from_params(
        self, params: dict[str, Any], space: Any, layers: SpaceLayers, *, seed: int = 0
    ) -> MagnitudeConfig:
        quality = per_layer_values(params, space.magnitude, "quality", space.quality, layers.weights)
        return MagnitudeConfig(mode="quality", layers=quality)

    def to_params(self, config: MagnitudeConfig, names: Sequence[str], base: nn.Module) -> dict[str, Any]:
        """A sparsity target becomes the quality (threshold / std) that reaches it on the base
        weights."""
        layers = weight_layers(base)
        params: dict[str, Any] = {}
        for name in names:
            if name != "quality" and not name.startswith("quality_"):
                continue
            layer = name.removeprefix("quality_") if name != "quality" else None
            target = config.value_for(layer) if layer else config.default
            if config.mode == "quality":
                params[name] = target
            elif layer is not None:
                w = layers[layer].weight.detach().abs().flatten()
                threshold = torch.quantile(w, target).item() if target > 0 else 0.0
                params[name] = threshold / float(layers[layer].weight.detach().std())
        return params

    def check(self, config: MagnitudeConfig, model: nn.Module) -> None:
        check_layer_names(config.layers, weight_layers(model), "unstructured.layers")

    def fit(self, config: MagnitudeConfig, model: nn.Module) -> MagnitudeConfig:
        self.check(config, model)
        layers = by_position(config.layers, config.positions, model, weight_layers(model))
        return dataclasses.replace(config, layers=layers, positions={})
