"""The surrogate (the seed paper's idea): one small network shared by every layer learns what
pruning a layer costs from the trials of one study or several, proposes settings that are
promised within the accuracy budget, and is compared, run for real, with the search."""

from autoprune.surrogate._history import (
    Encoder,
    History,
    ModelSpace,
    SurrogateError,
    history_from_trials,
)
from autoprune.surrogate._layers import FEATURES, Encoded, LayerView, prior_drop
from autoprune.surrogate._layerwise import LayerwiseEnsemble, SharedLayerNet
from autoprune.surrogate._model import MIN_TRIALS, CVScore, Surrogate, cross_validate
from autoprune.surrogate._propose import Proposal, ProposeConfig, anchors, cv_margin, propose
from autoprune.surrogate._sampler import SurrogateSampler
from autoprune.surrogate._space import model_space

__all__ = [
    "FEATURES",
    "MIN_TRIALS",
    "CVScore",
    "Encoded",
    "Encoder",
    "History",
    "LayerView",
    "LayerwiseEnsemble",
    "ModelSpace",
    "Proposal",
    "ProposeConfig",
    "SharedLayerNet",
    "Surrogate",
    "SurrogateError",
    "SurrogateSampler",
    "anchors",
    "cross_validate",
    "cv_margin",
    "history_from_trials",
    "model_space",
    "prior_drop",
    "propose",
]
