"""Magnitude pruning of single weights (Han et al., 2015; Deep Compression stage 1).

Per layer, weights with |w| below a threshold are set to zero and held there by a mask. The
threshold is either ``quality * std(layer weights)`` or the magnitude that reaches a target
sparsity.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn

from autoprune.compress._layers import RecipeError, check_layer_names, weight_layers

Masks = dict[str, torch.Tensor]  # layer name -> bool mask of the weights kept


@dataclass(frozen=True)
class MagnitudeConfig:
    mode: str = "quality"  # "quality": threshold = value * std; "sparsity": share of weights zeroed
    default: float = 0.0  # for every conv / linear layer not named in ``layers``
    layers: dict[str, float] = field(default_factory=dict)
    # Prune in this many steps spread over the fine-tuning epochs (Zhu & Gupta's cubic schedule,
    # as Deep Compression prunes iteratively); 1: all at once before fine-tuning.
    steps: int = 1

    def __post_init__(self) -> None:
        if self.mode not in ("quality", "sparsity"):
            raise RecipeError(f"unstructured mode={self.mode!r} should be 'quality' or 'sparsity'")
        if self.steps < 1:
            raise RecipeError(f"unstructured steps={self.steps} should be at least 1")
        for name, value in [("default", self.default), *self.layers.items()]:
            if self.mode == "sparsity" and not 0.0 <= value < 1.0:
                raise RecipeError(f"unstructured sparsity for {name}={value} should be in [0, 1)")
            if self.mode == "quality" and not 0.0 <= value <= 10.0:
                raise RecipeError(f"unstructured quality for {name}={value} should be in [0, 10]")

    def value_for(self, name: str) -> float:
        return self.layers.get(name, self.default)

    def at_step(self, step: int, steps: int) -> MagnitudeConfig:
        """The share of the final pruning reached after ``step`` of ``steps`` (cubic ramp:
        large steps first, while the network has the most to give)."""
        f = 1.0 - (1.0 - step / steps) ** 3
        return dataclasses.replace(
            self, default=self.default * f, layers={k: v * f for k, v in self.layers.items()}, steps=1
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
