"""Weight sharing and trained quantization (Deep Compression stage 2).

Per layer, the non-zero weights are clustered by 1-D k-means into ``2**bits`` shared values;
zeros stay zero. Trained quantization then fine-tunes the shared values: each layer's weight
becomes ``codebook[index] * mask`` with the codebook as the only trainable weight tensor, so
autograd sums the gradients of every weight in a cluster (the paper's Figure 3) while the
assignment stays fixed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from autoprune.compress._layers import RecipeError, check_layer_names, layer_kind, weight_layers
from autoprune.limits import MAX_EPOCHS
from autoprune.ops.kmeans import INITS, kmeans_1d


@dataclass(frozen=True)
class ShareConfig:
    enabled: bool = True
    conv_bits: int = 8
    fc_bits: int = 5
    layers: dict[str, int] = field(default_factory=dict)  # per-layer bits by module name
    init: str = "linear"  # "linear", "density" or "forgy"
    seed: int = 0  # for forgy
    epochs: int = 1  # trained quantization: epochs of fine-tuning the shared values
    lr: float = 1e-4

    def __post_init__(self) -> None:
        if not 0 <= self.epochs <= MAX_EPOCHS or not (self.lr > 0 and math.isfinite(self.lr)):
            raise RecipeError(
                f"quantize epochs={self.epochs} should be in 0..{MAX_EPOCHS} and lr={self.lr} > 0"
            )
        if self.init not in INITS:
            raise RecipeError(f"quantize init={self.init!r} should be one of {', '.join(INITS)}")
        for name, bits in [("conv_bits", self.conv_bits), ("fc_bits", self.fc_bits), *self.layers.items()]:
            if not (isinstance(bits, int) and 1 <= bits <= 16):
                raise RecipeError(f"quantize bits for {name}={bits} should be an integer in 1..16")

    def bits_for(self, name: str, module: nn.Module) -> int:
        if name in self.layers:
            return self.layers[name]
        return self.conv_bits if layer_kind(module) == "conv" else self.fc_bits


class SharedWeight(nn.Module):
    """Parametrization: the weight is ``codebook[index]`` where ``mask`` is set, else zero."""

    index: torch.Tensor  # buffers
    mask: torch.Tensor

    def __init__(self, index: torch.Tensor, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("index", index)
        self.register_buffer("mask", mask)

    def forward(self, codebook: torch.Tensor) -> torch.Tensor:
        return codebook[self.index] * self.mask


@torch.no_grad()
def share_weights_(model: nn.Module, config: ShareConfig) -> dict[str, np.ndarray]:
    """Replace each layer's non-zero weights by their k-means centroid; returns the codebooks."""
    layers = weight_layers(model)
    check_layer_names(config.layers, layers, "quantize.layers")
    codebooks = {}
    for name, layer in layers.items():
        w = layer.weight
        nonzero = w != 0
        values = w[nonzero].double().numpy()
        if values.size == 0:
            codebooks[name] = np.zeros(0)
            continue
        k = 1 << config.bits_for(name, layer)
        result = kmeans_1d(values, k, init=config.init, seed=config.seed)
        centroids = torch.from_numpy(result.centroids).to(w.dtype)
        shared = centroids[torch.from_numpy(result.labels)]
        # a centroid that rounds to exactly zero would merge with the pruned weights
        shared = torch.where(shared == 0, torch.finfo(w.dtype).tiny, shared)
        w[nonzero] = shared
        codebooks[name] = result.centroids
    return codebooks


def attach_codebooks_(model: nn.Module) -> None:
    """Make every layer's distinct non-zero values its trainable codebook (fixed assignment)."""
    for layer in weight_layers(model).values():
        w = layer.weight.detach()
        # a zero entry in the codebook is harmless: the mask keeps pruned weights at zero
        codebook, index = torch.unique(w, return_inverse=True)
        mask = w != 0
        # parametrize builds weight = codebook[index] * mask from now on
        layer.weight = nn.Parameter(codebook)
        parametrize.register_parametrization(layer, "weight", SharedWeight(index, mask), unsafe=True)


def detach_codebooks_(model: nn.Module) -> None:
    """Turn the trained codebooks back into plain weights."""
    for layer in weight_layers(model).values():
        if parametrize.is_parametrized(layer, "weight"):
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
