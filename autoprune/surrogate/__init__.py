"""The MLP surrogate (the seed paper's idea): learn from the study's trial history, propose
pruning thresholds, and compare the proposals with the search."""

from autoprune.surrogate._history import (
    TARGETS,
    Encoder,
    History,
    SurrogateError,
    history_from_trials,
    layer_descriptors,
)
from autoprune.surrogate._inverse import InverseThresholds
from autoprune.surrogate._model import MIN_TRIALS, MLPEnsemble, Surrogate, cross_validate
from autoprune.surrogate._propose import Proposal, ProposeConfig, propose
from autoprune.surrogate._sampler import SurrogateSampler

__all__ = [
    "MIN_TRIALS",
    "TARGETS",
    "Encoder",
    "History",
    "InverseThresholds",
    "MLPEnsemble",
    "Proposal",
    "ProposeConfig",
    "Surrogate",
    "SurrogateError",
    "SurrogateSampler",
    "cross_validate",
    "history_from_trials",
    "layer_descriptors",
    "propose",
]
