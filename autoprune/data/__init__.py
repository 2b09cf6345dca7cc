"""Datasets: a registry of loaders giving normalised train / validation / test tensors."""

from autoprune.data import _digits, _files, _idx  # noqa: F401  (register the loaders)
from autoprune.data._base import (
    DATASETS,
    AnySplit,
    DataOptions,
    DataSplits,
    ImageFiles,
    ImageSplit,
    RawData,
    Split,
    list_datasets,
    load_dataset,
    make_splits,
    register_dataset,
)
from autoprune.data._stream import AUGMENTS, StreamSplit, augment_batch
from autoprune.data._task import FinetuneBudget, TaskSplit

__all__ = [
    "DATASETS",
    "AnySplit",
    "ImageSplit",
    "AUGMENTS",
    "DataOptions",
    "DataSplits",
    "FinetuneBudget",
    "TaskSplit",
    "ImageFiles",
    "StreamSplit",
    "augment_batch",
    "RawData",
    "Split",
    "list_datasets",
    "load_dataset",
    "make_splits",
    "register_dataset",
]
