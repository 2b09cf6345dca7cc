"""Weight sharing and trained quantization (Deep Compression stage 2).

Per layer, the non-zero weights are clustered by 1-D k-means into ``2**bits`` shared values;
zeros stay zero. Trained quantization then fine-tunes the shared values: each layer's weight
becomes ``codebook[index] * mask`` with the codebook as the only trainable weight tensor, so
autograd sums the gradients of every weight in a cluster (the paper's Figure 3) while the
assignment stays fixed.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from autoprune.compress._layers import RecipeError, check_layer_names, layer_kind, setting, weight_layers
from autoprune.compress.finetune import counted_from
from autoprune.compress.stage import Param, Run, SpaceLayers, Stage, ranged, register, value
from autoprune.limits import MAX_EPOCHS
from autoprune.ops.kmeans import INITS, kmeans_1d
from autoprune.train import TrainConfig, fit


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
        return setting(self.layers, name, self.conv_bits if layer_kind(module) == "conv" else self.fc_bits)


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


@register
class WeightSharing(Stage):
    name = "quantize"
    config = ShareConfig
    order = 40
    label = "weight sharing (k-means, trained quantization)"
    timing = "quantize_s"

    def apply_(self, model: nn.Module, config: ShareConfig, run: Run) -> None:
        if not config.enabled:
            return
        share_weights_(model, config)
        run.bits = {name: config.bits_for(name, layer) for name, layer in weight_layers(model).items()}
        if config.epochs <= 0 or not run.training:
            return
        ft = run.config.finetune
        attach_codebooks_(model)
        start = time.perf_counter()
        try:
            fit(
                model,
                run.splits,
                TrainConfig(
                    epochs=config.epochs,
                    lr=config.lr,
                    batch_size=ft.batch_size,
                    max_batches=ft.max_batches,
                    distill=ft.distill,
                    temperature=ft.temperature,
                ),
                seed=run.seed,
                callbacks=counted_from(run.epochs, run.callbacks),
                progress=run.progress,
                desc="trained quantization",
                teacher=run.teacher,
            )
        finally:
            detach_codebooks_(model)
        run.train_s += time.perf_counter() - start  # training time is not quantization time
        run.epochs += config.epochs

    def params(self, space: Any, layers: SpaceLayers) -> list[Param]:
        if not space.quantize:
            return []
        choices = [Param("init", choices=tuple(space.init))] if len(space.init) > 1 else []
        epochs = [
            dataclasses.replace(p, training=True)
            for p in ranged("quant_epochs", space.quant_epochs, integer=True)
        ]
        return [
            *ranged("conv_bits", space.conv_bits, integer=True),
            *ranged("fc_bits", space.fc_bits, integer=True),
            *choices,
            *epochs,
        ]

    def from_params(
        self, params: dict[str, Any], space: Any, layers: SpaceLayers, *, seed: int = 0
    ) -> ShareConfig:
        if not space.quantize:
            return ShareConfig(enabled=False)
        return ShareConfig(
            conv_bits=value(params, "conv_bits", space.conv_bits),
            fc_bits=value(params, "fc_bits", space.fc_bits),
            init=params.get("init", space.init[0]),
            seed=seed,
            epochs=value(params, "quant_epochs", space.quant_epochs),
            lr=value(params, "lr", space.lr) / 10,  # the fine-tuning's rate, tenfold smaller
        )

    def to_params(self, config: ShareConfig, names: Sequence[str], base: nn.Module) -> dict[str, Any]:
        if not config.enabled:
            return {}
        known = {
            "conv_bits": config.conv_bits,
            "fc_bits": config.fc_bits,
            "init": config.init,
            "quant_epochs": config.epochs,
        }
        return {n: known[n] for n in names if n in known}

    def check(self, config: ShareConfig, model: nn.Module) -> None:
        check_layer_names(config.layers, weight_layers(model), "quantize.layers")
