"""The Deep Compression engine: what one trial does to a copy of the network.

Model transforms (config in, model changed) over the pure math in :mod:`autoprune.ops`. Each
stage is one module that registers itself in :data:`STAGES` when imported here
(:mod:`autoprune.compress.stage` says what a stage declares).
"""

from autoprune.compress import lowrank  # noqa: F401  (registers the optional low-rank stage)
from autoprune.compress._layers import RecipeError, conv_layers, layer_positions, output_layer, weight_layers
from autoprune.compress.finetune import Continuation
from autoprune.compress.fold import FoldConfig  # registers the optional batch norm folding
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
from autoprune.compress.recipe import CompressConfig, fit_recipe, load_recipe
from autoprune.compress.stage import STAGES, Param, Run, SpaceLayers, Stage, ordered_stages
from autoprune.compress.structured import FilterPruneConfig, LayerNorms, prune_filters_
from autoprune.compress.unstructured import MagnitudeConfig, mask_holder, prune_magnitude_

__all__ = [
    "STAGES",
    "CompressConfig",
    "Continuation",
    "FilterPruneConfig",
    "FoldConfig",
    "LayerNorms",
    "LayerReport",
    "MagnitudeConfig",
    "PackConfig",
    "PackError",
    "PackReport",
    "Param",
    "RecipeError",
    "Run",
    "SpaceLayers",
    "Stage",
    "ShareConfig",
    "attach_codebooks_",
    "breakdown",
    "conv_layers",
    "decode_packed",
    "detach_codebooks_",
    "fit_recipe",
    "layer_positions",
    "load_packed",
    "load_recipe",
    "mask_holder",
    "ordered_stages",
    "output_layer",
    "packed_model_spec",
    "prune_filters_",
    "prune_magnitude_",
    "read_header",
    "save_packed",
    "share_weights_",
    "weight_layers",
]
