"""Low-rank factorisation of linear layers (Denton et al., 2014), an optional stage.

A linear layer's weight W (out, in) becomes the product of two thinner layers through its
truncated SVD: W ~ (U_r sqrt(S_r)) (sqrt(S_r) V_r^T), a ``Linear(in, r)`` then a
``Linear(r, out)`` with the bias. A layer is factorised only when that stores fewer weights,
r (in + out) < in out, and never the classifier. Fine-tuning afterwards recovers the accuracy;
magnitude pruning and weight sharing then act on the two factors, which keep the original
layer's per-layer settings (``fc1.0`` and ``fc1.1`` take ``fc1``'s).

This module is all the stage is: adding it touched ``autoprune/compress/__init__.py`` (the
import that registers it) and the docs. A recipe runs it with a ``[lowrank]`` table; a search
samples its ``rank`` with ``[space.stages.lowrank] rank = [low, high]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from autoprune.compress._layers import RecipeError, check_layer_names, output_layer, setting, weight_layers
from autoprune.compress.stage import Param, Run, SpaceLayers, Stage, ranged, register, value


@dataclass(frozen=True)
class LowRankConfig:
    rank: float = 1.0  # share of a layer's min(in, out) singular values kept
    layers: dict[str, float] = field(default_factory=dict)  # per-layer share by module name

    def __post_init__(self) -> None:
        for name, share in [("rank", self.rank), *self.layers.items()]:
            if not 0.0 < share <= 1.0:
                raise RecipeError(f"lowrank rank for {name}={share} should be in (0, 1]")

    def rank_for(self, name: str, layer: nn.Linear) -> int | None:
        """The rank ``layer`` is factorised at (None: it stays whole, as it saves nothing)."""
        n_in, n_out = layer.in_features, layer.out_features
        rank = max(1, math.ceil(setting(self.layers, name, self.rank) * min(n_in, n_out)))
        return rank if rank * (n_in + n_out) < n_in * n_out else None


@dataclass(frozen=True)
class LowRankSpace:
    """The stage's table in a study spec: ``[space.stages.lowrank]``."""

    rank: list[float] = field(default_factory=lambda: [0.1, 1.0])  # a range, or one value (fixed)

    def __post_init__(self) -> None:
        if len(self.rank) not in (1, 2) or not all(0.0 < r <= 1.0 for r in self.rank):
            raise ValueError(f"rank={self.rank} should be one or two values in (0, 1]")
        if len(self.rank) == 2 and not self.rank[0] < self.rank[1]:
            raise ValueError(f"rank={self.rank} is an empty range (one value fixes it)")


class Factorised(nn.Sequential):
    """A linear layer as two: ``0`` maps in -> rank (no bias), ``1`` maps rank -> out."""

    def __init__(self, n_in: int, rank: int, n_out: int, *, bias: bool, device: Any = None) -> None:
        super().__init__(
            nn.Linear(n_in, rank, bias=False, device=device), nn.Linear(rank, n_out, bias=bias, device=device)
        )

    @property
    def first(self) -> nn.Linear:
        return self[0]  # type: ignore[return-value]

    @property
    def second(self) -> nn.Linear:
        return self[1]  # type: ignore[return-value]


@torch.no_grad()
def factorise_(model: nn.Module, config: LowRankConfig) -> dict[str, int]:
    """Replace every linear layer (but the classifier) that a rank saves weights on by its
    truncated SVD; returns the rank of each layer factorised."""
    layers = weight_layers(model)
    check_layer_names(config.layers, layers, "lowrank.layers")
    out, ranks = output_layer(model), {}
    for name, layer in layers.items():
        if not isinstance(layer, nn.Linear) or name == out or (rank := config.rank_for(name, layer)) is None:
            continue
        u, s, vh = torch.linalg.svd(layer.weight.double(), full_matrices=False)  # (out, k) (k,) (k, in)
        root = s[:rank].sqrt()
        new = Factorised(layer.in_features, rank, layer.out_features, bias=layer.bias is not None)
        new.first.weight.copy_((root[:, None] * vh[:rank]).float())
        new.second.weight.copy_((u[:, :rank] * root).float())
        if layer.bias is not None:
            new.second.bias.copy_(layer.bias)
        model.set_submodule(name, new)
        ranks[name] = rank
    return ranks


@register
class LowRank(Stage):
    name = "lowrank"
    config = LowRankConfig
    order = 15  # after filter pruning, before magnitude pruning and fine-tuning
    label = "low-rank factorisation"
    timing = "prune_s"
    optional = True
    reshapes = True
    space = LowRankSpace

    def apply_(self, model: nn.Module, config: LowRankConfig, run: Run) -> None:
        factorise_(model, config)

    def params(self, space: Any, layers: SpaceLayers) -> list[Param]:
        mine = self.space_of(space)
        return ranged("lowrank_rank", mine.rank) if mine is not None else []

    def from_params(
        self, params: dict[str, Any], space: Any, layers: SpaceLayers, *, seed: int = 0
    ) -> LowRankConfig | None:
        mine = self.space_of(space)
        return LowRankConfig(rank=value(params, "lowrank_rank", mine.rank)) if mine is not None else None

    def to_params(self, config: LowRankConfig, names: Sequence[str], base: nn.Module) -> dict[str, Any]:
        return {"lowrank_rank": config.rank} if "lowrank_rank" in names else {}

    def check(self, config: LowRankConfig, model: nn.Module) -> None:
        check_layer_names(config.layers, weight_layers(model), "lowrank.layers")

    def record(self, model: nn.Module) -> dict[str, int] | None:
        ranks = {name: m.first.out_features for name, m in model.named_modules() if isinstance(m, Factorised)}
        return ranks or None

    def rebuild_(self, model: nn.Module, record: Any) -> None:
        if not isinstance(record, dict):
            raise TypeError("the lowrank record should be a table of layer ranks")
        for name, rank in record.items():
            layer = model.get_submodule(name) if isinstance(name, str) else None
            if not isinstance(layer, nn.Linear):
                raise ValueError(f"lowrank names {str(name)[:80]!r}, not a linear layer of the model")
            limit = min(layer.in_features, layer.out_features)
            if not (isinstance(rank, int) and not isinstance(rank, bool) and 1 <= rank <= limit):
                raise ValueError(f"lowrank rank {rank!r} of {name} should be an integer in 1..{limit}")
            device = layer.weight.device  # the meta device for a skeleton: nothing allocated
            bias = layer.bias is not None
            model.set_submodule(
                name, Factorised(layer.in_features, rank, layer.out_features, bias=bias, device=device)
            )
