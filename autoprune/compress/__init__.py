"""The Deep Compression engine: what one trial does to a copy of the network.

Model transforms (config in, model changed) over the pure math in :mod:`autoprune.ops`.
"""

from autoprune.compress._layers import RecipeError, conv_layers, output_layer, weight_layers
from autoprune.compress.packing import (
    LayerReport,
    PackConfig,
    PackError,
    PackReport,
    breakdown,
    decode_packed,
    load_packed,
    packed_model_spec,
    read_header,
    save_packed,
)
from autoprune.compress.quantize import ShareConfig, attach_codebooks_, detach_codebooks_, share_weights_
from autoprune.compress.recipe import CompressConfig, load_recipe
from autoprune.compress.structured import FilterPruneConfig, LayerNorms, prune_filters_
from autoprune.compress.unstructured import MagnitudeConfig, mask_holder, prune_magnitude_

__all__ = [
    "CompressConfig",
    "FilterPruneConfig",
    "LayerNorms",
    "LayerReport",
    "MagnitudeConfig",
    "PackConfig",
    "PackError",
    "PackReport",
    "RecipeError",
    "ShareConfig",
    "attach_codebooks_",
    "breakdown",
    "conv_layers",
    "decode_packed",
    "detach_codebooks_",
    "load_packed",
    "load_recipe",
    "mask_holder",
    "output_layer",
    "packed_model_spec",
    "prune_filters_",
    "prune_magnitude_",
    "read_header",
    "save_packed",
    "share_weights_",
    "weight_layers",
]
