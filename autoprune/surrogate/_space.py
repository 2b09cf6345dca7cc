"""A study's network as the surrogate sees it, built from a search's context: the sensitivity
analysis (cached per base model), the exact size model, and the space searched."""

from __future__ import annotations

import math
from typing import Any

from autoprune.measure import dense_bytes
from autoprune.sensitivity import Sensitivity, sensitivity_for
from autoprune.surrogate._history import ModelSpace
from autoprune.surrogate._layers import LayerView
from autoprune.train import TrainConfig

_BUILT: dict[int, tuple[Any, ModelSpace]] = {}  # id(context) -> (context, its model space): built once


def model_space(
    context: Any, *, sensitivity: Sensitivity | None = None, progress: bool = False
) -> ModelSpace:
    """The :class:`ModelSpace` of a search context (a :class:`~autoprune.search.objective.SearchContext`):
    built once per context, the sensitivity analysis computed at most once per base model."""
    key = id(context)
    if key in _BUILT and _BUILT[key][0] is context:
        return _BUILT[key][1]
    if sensitivity is None:
        sensitivity, _ = sensitivity_for(context.base, context.splits, progress=progress)
    batch = TrainConfig().batch_size  # a search's fine-tuning uses the default batch size
    view = LayerView(
        context.base,
        context.model_spec,
        sensitivity,
        train_batches=math.ceil(len(context.splits.train) / batch),
        dense_bytes=dense_bytes(context.base),
    )
    space = ModelSpace(context.spec.study.name, view, context.spec.space, context.layers)
    _BUILT[key] = (context, space)
    return space
