"""A compression recipe: every setting of one run of the pipeline, as a frozen config.

Recipes are TOML files (``studies/recipes/*.toml``) with one table per stage. Reading one
checks every key and type and names the offending key, so a typo is never silently ignored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoprune._config import build_config, read_toml
from autoprune.compress._layers import RecipeError, check_layer_names, conv_layers, weight_layers
from autoprune.compress.packing import PackConfig
from autoprune.compress.quantize import ShareConfig
from autoprune.compress.structured import FilterPruneConfig
from autoprune.compress.unstructured import MagnitudeConfig
from autoprune.train import TrainConfig


@dataclass(frozen=True)
class CompressConfig:
    """All the settings of one compression run."""

    name: str = "custom"
    description: str = ""
    structured: FilterPruneConfig = field(default_factory=FilterPruneConfig)
    unstructured: MagnitudeConfig = field(default_factory=MagnitudeConfig)
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=2))  # after pruning, masks held
    quantize: ShareConfig = field(default_factory=ShareConfig)
    pack: PackConfig = field(default_factory=PackConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompressConfig:
        return build_config(cls, data, error=RecipeError)


def load_recipe(path: str | Path) -> CompressConfig:
    path = Path(path)
    data = read_toml(path, "recipe", RecipeError)
    try:
        return CompressConfig.from_dict(data)
    except RecipeError as e:
        raise RecipeError(f"recipe {path}: {e}") from None


def check_layers(config: CompressConfig, model: Any) -> None:
    """Fail fast, before any training, when the recipe names a layer the model lacks."""

    check_layer_names(config.structured.layers, conv_layers(model), "structured.layers")
    check_layer_names(config.unstructured.layers, weight_layers(model), "unstructured.layers")
    check_layer_names(config.quantize.layers, weight_layers(model), "quantize.layers")
