"""Dataset registry and the split/normalise step every loader shares."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from autoprune.data._stream import AUGMENTS, ImageReader, StreamSplit, decoded_bytes, image_stats
from autoprune.data._task import TaskSplit
from autoprune.errors import DataError
from autoprune.registry import Registry

# A loader reads its files and returns raw arrays; splitting and normalising happen here.
Loader = Callable[[Path | None], "RawData | ImageFiles"]
DATASETS: Registry[Loader] = Registry("dataset")


@dataclass(frozen=True)
class RawData:
    """What a loader returns: images (N, C, H, W) scaled to [0, 1] and integer labels."""

    x_train: np.ndarray  # (N, C, H, W) float32 in [0, 1]
    y_train: np.ndarray  # (N,) int64
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImageFiles:
    """What a loader of image files returns: the files, read later (streamed or all at once)."""

    train: tuple[Path, ...]
    y_train: np.ndarray  # (N,) int64
    test: tuple[Path, ...]
    y_test: np.ndarray
    classes: tuple[str, ...]
    mode: str  # "L" or "RGB"
    native_size: tuple[int, int]  # (H, W) the most common size: used when no image_size is given


@dataclass(frozen=True)
class DataOptions:
    """How a dataset is read: the input size of an image folder, whether it is held in memory,
    and the training-time augmentation (none by default: the built-in 8x8 digits gain nothing)."""

    image_size: tuple[int, int] | None = (
        None  # (H, W): short side resized, centre crop; None: the most common size
    )
    in_memory: str = "auto"  # "auto" (when the decoded tensors take under 1 GB), "yes" or "no"
    augment: str = "none"  # "none" or "crop-flip" (random crop with 4 pixels of padding, horizontal flip)
    workers: int = 2  # decoding processes of a streamed split

    def __post_init__(self) -> None:
        if self.in_memory not in ("auto", "yes", "no"):
            raise DataError(f"in_memory={self.in_memory!r} should be 'auto', 'yes' or 'no'")
        if self.augment not in AUGMENTS:
            raise DataError(f"augment={self.augment!r} should be one of {', '.join(AUGMENTS)}")
        if self.image_size is not None and not (
            len(self.image_size) == 2 and all(1 <= v <= 4096 for v in self.image_size)
        ):
            raise DataError(f"image_size={self.image_size} should be [height, width] in 1..4096")
        if not 0 <= self.workers <= 64:
            raise DataError(f"workers={self.workers} should be in 0..64")


IN_MEMORY_LIMIT = 1 << 30  # bytes of decoded tensors below which "auto" holds a split in memory


@dataclass(frozen=True)
class Split:
    """One split held in memory as tensors, ready for batching."""

    x: torch.Tensor  # (N, C, H, W) float32, normalised
    y: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.y)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(int(v) for v in self.x.shape[1:])

    def batches(
        self, batch_size: int, order: torch.Tensor | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(x, y) batches of the images in ``order`` (default: as stored)."""
        for start in range(0, len(self) if order is None else len(order), batch_size):
            if order is None:
                yield self.x[start : start + batch_size], self.y[start : start + batch_size]
            else:
                idx = order[start : start + batch_size]
                yield self.x[idx], self.y[idx]

    def fingerprint(self, digest: Any) -> None:
        digest.update(self.x.numpy().tobytes())
        digest.update(self.y.numpy().tobytes())


ImageSplit = Split | StreamSplit  # images and labels, in memory or streamed from files
AnySplit = Split | StreamSplit | TaskSplit  # or a user's task, scored by its own evaluate


@dataclass(frozen=True, eq=False)
class DataSplits:
    """Train / validation / test splits of one dataset, normalised with train statistics."""

    name: str
    train: AnySplit
    val: AnySplit
    test: AnySplit
    num_classes: int
    mean: tuple[float, ...]  # per channel, of the training split before normalising
    std: tuple[float, ...]
    classes: tuple[str, ...] = ()
    augment: str = "none"  # applied to training batches (see DataOptions)
    task: Any = None  # your own training loop and metric (autoprune.data._task), in place of the data
    metric: str = "accuracy"  # what evaluating a network measures: top-1 accuracy, or the task's metric
    source: str = ""  # a task's own identity for caches: its name and the hash of its source

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.sample_shape
        return (int(c), int(h), int(w))

    @functools.cached_property
    def fingerprint(self) -> str:
        """A hash of the data's content (of a streamed split: its files' names, sizes and
        dates), and of the augmentation, so caches notice when either changes."""
        digest = hashlib.blake2b(digest_size=16)
        digest.update(self.source.encode())
        for split in (self.train, self.val, self.test):
            split.fingerprint(digest)
        if self.augment != "none":
            digest.update(self.augment.encode())
        return digest.hexdigest()


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Add a loader to the registry under ``name``."""
    return DATASETS.register(name)


def list_datasets() -> list[str]:
    return DATASETS.names()


def load_dataset(
    name: str,
    *,
    data_dir: str | Path | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    options: DataOptions | None = None,
) -> DataSplits:
    """Load a registered dataset (once per process) and split it: into tensors, or, for an
    image folder too large for memory, into splits streamed from its files (``options``).

    The validation split is carved from the training data, stratified by class, with ``seed``;
    the test split is the dataset's own (or a fixed carve where it has none).
    """
    options = options or DataOptions()
    DATASETS.get(name)  # an unknown name fails first, with the valid ones
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction={val_fraction} should be in (0, 1)")
    path = Path(data_dir).expanduser().resolve() if data_dir is not None else None
    splits = _load_cached(
        name, path, float(val_fraction), int(seed), dataclasses.replace(options, augment="none")
    )
    return dataclasses.replace(splits, augment=options.augment) if options.augment != "none" else splits


@functools.lru_cache(maxsize=8)
def _load_cached(
    name: str, data_dir: Path | None, val_fraction: float, seed: int, options: DataOptions
) -> DataSplits:
    raw = DATASETS.get(name)(data_dir)
    if isinstance(raw, ImageFiles):
        return file_splits(name, raw, val_fraction=val_fraction, seed=seed, options=options)
    return make_splits(name, raw, val_fraction=val_fraction, seed=seed)


def _carve_val(
    y: np.ndarray, num_classes: int, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training and validation parts, stratified by class where it can be."""
    indices = np.arange(len(y))
    counts = np.bincount(y, minlength=num_classes)
    stratify = y if counts[counts > 0].min() >= 2 else None
    train_idx, val_idx = train_test_split(
        indices, test_size=val_fraction, random_state=seed, stratify=stratify
    )
    return np.sort(train_idx), np.sort(val_idx)


def file_splits(
    name: str, raw: ImageFiles, *, val_fraction: float, seed: int, options: DataOptions
) -> DataSplits:
    """Image files split by index; each split streamed, or decoded into memory when small
    (``options.in_memory``). Both read every image with the same reader and statistics."""
    y_all = np.concatenate([raw.y_train, raw.y_test])
    num_classes = int(y_all.max()) + 1
    if len(np.unique(raw.y_train)) < 2:
        raise DataError(
            f"dataset {name!r}: the training data has only one class; a classifier needs at least two"
        )
    train_idx, val_idx = _carve_val(raw.y_train, num_classes, val_fraction, seed)
    size = options.image_size or raw.native_size
    plain = ImageReader(size, raw.mode)
    mean, std = image_stats([raw.train[i] for i in train_idx], plain, seed=seed)
    reader = dataclasses.replace(plain, mean=mean, std=std)
    total = decoded_bytes(len(raw.train) + len(raw.test), size, raw.mode)
    in_memory = options.in_memory == "yes" or (options.in_memory == "auto" and total < IN_MEMORY_LIMIT)
    shape = (1 if raw.mode == "L" else 3, *size)  # (C, H, W)

    def split(files: Sequence[Path], y: np.ndarray) -> Split | StreamSplit:
        labels = torch.from_numpy(np.asarray(y, dtype=np.int64))
        if in_memory:
            x = torch.stack([reader(f) for f in files]) if files else torch.zeros(0, *shape)
            return Split(x=x, y=labels)
        return StreamSplit(tuple(files), labels, reader, options.workers)

    return DataSplits(
        name=name,
        train=split([raw.train[i] for i in train_idx], raw.y_train[train_idx]),
        val=split([raw.train[i] for i in val_idx], raw.y_train[val_idx]),
        test=split(raw.test, raw.y_test),
        num_classes=num_classes,
        mean=mean,
        std=std,
        classes=raw.classes,
    )


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
        raise DataError(
            f"dataset {name!r}: the training data has only one class; a classifier needs at least two"
        )
    if not np.isfinite(raw.x_train).all() or not np.isfinite(raw.x_test).all():
        raise DataError(f"dataset {name!r}: images hold NaN or infinite values")

    train_idx, val_idx = _carve_val(raw.y_train, num_classes, val_fraction, seed)

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
