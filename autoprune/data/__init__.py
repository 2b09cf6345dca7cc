"""Datasets: a registry of loaders giving normalised train / validation / test tensors."""

from autoprune.data import _digits, _files, _idx  # noqa: F401  (register the loaders)
from autoprune.data._base import (
    DataSplits,
    RawData,
    Split,
    list_datasets,
    load_dataset,
    make_splits,
    register_dataset,
)

__all__ = [
    "DataSplits",
    "RawData",
    "Split",
    "list_datasets",
    "load_dataset",
    "make_splits",
    "register_dataset",
]
