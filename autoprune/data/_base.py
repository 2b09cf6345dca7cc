"""Dataset registry and the split/normalise step every loader shares."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from autoprune.errors import DataError, UnknownNameError

# A loader reads its files and returns raw arrays; splitting and normalising happen here.
Loader = Callable[[Path | None], "RawData"]
_REGISTRY: dict[str, Loader] = {}


@dataclass(frozen=True)
class RawData:
    """What a loader returns: images (N, C, H, W) scaled to [0, 1] and integer labels."""

    x_train: np.ndarray  # (N, C, H, W) float32 in [0, 1]
    y_train: np.ndarray  # (N,) int64
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Split:
    """One split held in memory as tensors, ready for batching."""

    x: torch.Tensor  # (N, C, H, W) float32, normalised
    y: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True, eq=False)
class DataSplits:
    """Train / validation / test splits of one dataset, normalised with train statistics."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    mean: tuple[float, ...]  # per channel, of the training split before normalising
    std: tuple[float, ...]
    classes: tuple[str, ...] = ()

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.x.shape[1:]
        return (int(c), int(h), int(w))

    @functools.cached_property
    def fingerprint(self) -> str:
        """A hash of the data's content, so caches notice when the files change."""
        digest = hashlib.blake2b(digest_size=16)
        for split in (self.train, self.val, self.test):
            digest.update(split.x.numpy().tobytes())
            digest.update(split.y.numpy().tobytes())
        return digest.hexdigest()


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Add a loader to the registry under ``name``."""

    def add(loader: Loader) -> Loader:
        _REGISTRY[name] = loader
        return loader

    return add


def list_datasets() -> list[str]:
    return sorted(_REGISTRY)


def load_dataset(
    name: str, *, data_dir: str | Path | None = None, val_fraction: float = 0.1, seed: int = 0
) -> DataSplits:
    """Load a registered dataset into tensors (once per process) and split it.

    The validation split is carved from the training data, stratified by class, with ``seed``;
    the test split is the dataset's own (or a fixed carve where it has none).
    """
    if name not in _REGISTRY:
        raise UnknownNameError(
            f"unknown dataset {name!r}; valid datasets: {', '.join(list_datasets())}"
        )
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction={val_fraction} should be in (0, 1)")
    path = Path(data_dir).expanduser().resolve() if data_dir is not None else None
    return _load_cached(name, path, float(val_fraction), int(seed))


@functools.lru_cache(maxsize=8)
def _load_cached(name: str, data_dir: Path | None, val_fraction: float, seed: int) -> DataSplits:
    raw = _REGISTRY[name](data_dir)
    return make_splits(name, raw, val_fraction=val_fraction, seed=seed)


def make_splits(name: str, raw: RawData, *, val_fraction: float, seed: int) -> DataSplits:
    """Carve a stratified validation split and normalise every split with train statistics."""
    if raw.x_train.ndim != 4 or raw.x_test.ndim != 4:
        raise DataError(f"dataset {name!r}: images must be (N, C, H, W), got {raw.x_train.shape}")
    if len(raw.x_train) != len(raw.y_train) or len(raw.x_test) != len(raw.y_test):
        raise DataError(f"dataset {name!r}: image and label counts differ")
    y_all = np.concatenate([raw.y_train, raw.y_test])
    if len(y_all) == 0 or y_all.min() < 0:
        raise DataError(f"dataset {name!r}: labels must be non-negative integers")
    num_classes = int(y_all.max()) + 1
    if len(np.unique(raw.y_train)) < 2:
        raise DataError(f"dataset {name!r}: the training data has only one class; a classifier needs at least two")
    if not np.isfinite(raw.x_train).all() or not np.isfinite(raw.x_test).all():
        raise DataError(f"dataset {name!r}: images hold NaN or infinite values")

    indices = np.arange(len(raw.y_train))
    counts = np.bincount(raw.y_train, minlength=num_classes)
    stratify = raw.y_train if counts[counts > 0].min() >= 2 else None
    train_idx, val_idx = train_test_split(
        indices, test_size=val_fraction, random_state=seed, stratify=stratify
    )
    train_idx.sort()
    val_idx.sort()

    x_train = raw.x_train[train_idx]
    mean = x_train.mean(axis=(0, 2, 3), dtype=np.float64)
    std = x_train.std(axis=(0, 2, 3), dtype=np.float64)
    std = np.where(std > 1e-8, std, 1.0)

    def split(x: np.ndarray, y: np.ndarray) -> Split:
        normalised = (x - mean[None, :, None, None]) / std[None, :, None, None]
        return Split(
            x=torch.from_numpy(np.ascontiguousarray(normalised, dtype=np.float32)),
            y=torch.from_numpy(np.asarray(y, dtype=np.int64)),
        )

    return DataSplits(
        name=name,
        train=split(x_train, raw.y_train[train_idx]),
        val=split(raw.x_train[val_idx], raw.y_train[val_idx]),
        test=split(raw.x_test, raw.y_test),
        num_classes=num_classes,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        classes=raw.classes,
    )


def require_dir(data_dir: Path | None, dataset: str, hint: str = "") -> Path:
    """The dataset directory, or a DataError naming what was expected where."""
    if data_dir is None:
        raise DataError(f"dataset {dataset!r} needs --data-dir{hint}")
    if not data_dir.is_dir():
        raise DataError(f"dataset {dataset!r}: data directory {data_dir} does not exist{hint}")
    return data_dir


def carve_test(x: np.ndarray, y: np.ndarray, fraction: float = 0.2) -> tuple[np.ndarray, ...]:
    """A fixed (seed 0) stratified test carve for datasets that ship no test split."""
    counts = np.bincount(y)
    stratify = y if counts[counts > 0].min() >= 2 else None
    return tuple(train_test_split(x, y, test_size=fraction, random_state=0, stratify=stratify))
