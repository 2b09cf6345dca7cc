"""The Deep Compression engine: what one trial does to a copy of the network.

Model transforms (config in, model changed) over the pure math in :mod:`autoprune.ops`.
"""

from autoprune.compress._layers import RecipeError, weight_layers
from autoprune.compress.packing import (
    LayerReport,
    PackConfig,
    PackError,
    PackReport,
    breakdown,
    load_packed,
    read_header,
    save_packed,
)
from autoprune.compress.pipeline import CompressResult, PackedEvaluation, compress, evaluate_packed
from autoprune.compress.quantize import ShareConfig, share_weights_
from autoprune.compress.recipe import CompressConfig, FinetuneConfig, load_recipe
from autoprune.compress.structured import FilterPruneConfig, LayerNorms, prune_filters_
from autoprune.compress.unstructured import MagnitudeConfig, prune_magnitude_

__all__ = [
    "CompressConfig",
    "CompressResult",
    "FilterPruneConfig",
    "FinetuneConfig",
    "LayerNorms",
    "LayerReport",
    "MagnitudeConfig",
    "PackedEvaluation",
    "PackConfig",
    "PackError",
    "PackReport",
    "RecipeError",
    "ShareConfig",
    "breakdown",
    "compress",
    "evaluate_packed",
    "load_packed",
    "load_recipe",
    "prune_filters_",
    "prune_magnitude_",
    "read_header",
    "save_packed",
    "share_weights_",
    "weight_layers",
]
