"""Datasets a user brings as files: CIFAR-10 pickle batches, one npz file, an image folder."""

from __future__ import annotations

import pickle
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from autoprune.data._base import ImageFiles, RawData, carve_test, register_dataset, require_dir
from autoprune.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def _to_nchw(x: np.ndarray, path: Path) -> np.ndarray:
    """Images as (N, C, H, W) floats in [0, 1]; accepts (N, H, W), NHWC and NCHW."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim != 4:
        raise DataError(f"{path}: images must be (N, H, W), (N, H, W, C) or (N, C, H, W), got {x.shape}")
    scale = 255.0 if x.dtype == np.uint8 or x.max(initial=0) > 1.0 else 1.0
    return x.astype(np.float32) / scale


# ---- CIFAR-10: the standard python-pickle batches directory -------------------------------

# What a real batch (pickled by Python 2's cPickle, or again by NumPy) may name: NumPy's array
# reconstruction (protocol 5: from a buffer) and the str -> bytes codec. Nothing else is ever
# looked up, so a crafted batch cannot call anything that runs code.
_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _BatchUnpickler(pickle.Unpickler):
    """Dicts, lists, strings, bytes, numbers and NumPy arrays: the types a CIFAR-10 batch holds."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR-10 batch never does")
        return super().find_class(module, name)


def _unpickle(path: Path) -> Any:
    with open(path, "rb") as f:
        return _BatchUnpickler(f, encoding="bytes").load()


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"dataset 'cifar10': expected {path.name} in {path.parent}")
    try:
        batch = _unpickle(path)
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (
        pickle.UnpicklingError,
        EOFError,
        KeyError,
        TypeError,
        ValueError,
        AttributeError,
        IndexError,
    ) as e:
        raise DataError(f"{path} is not a CIFAR-10 python batch: {e}") from None
    return data, labels


@register_dataset("cifar10")
def load_cifar10(data_dir: Path | None) -> RawData:
    path = require_dir(data_dir, "cifar10", " (the cifar-10-batches-py directory)")
    train = [_read_cifar_batch(path / f"data_batch_{i}") for i in range(1, 6)]
    x_test, y_test = _read_cifar_batch(path / "test_batch")
    classes: tuple[str, ...] = ()
    if (path / "batches.meta").is_file():
        try:
            classes = tuple(n.decode() for n in _unpickle(path / "batches.meta")[b"label_names"])
        except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError) as e:
            raise DataError(f"{path / 'batches.meta'} is not a CIFAR-10 batches.meta: {e}") from None
    x_train = np.concatenate([x for x, _ in train]).astype(np.float32) / 255.0
    y_train = np.concatenate([y for _, y in train])
    return RawData(x_train, y_train, x_test.astype(np.float32) / 255.0, y_test, classes)


# ---- npz: one file with x_train, y_train, x_test, y_test ----------------------------------


@register_dataset("npz")
def load_npz(data_dir: Path | None) -> RawData:
    """``--data-dir`` names the .npz file itself (or a directory holding exactly one)."""
    if data_dir is None:
        raise DataError("dataset 'npz' needs --data-dir pointing at a .npz file")
    path = data_dir
    if path.is_dir():
        found = sorted(path.glob("*.npz"))
        if len(found) != 1:
            raise DataError(f"dataset 'npz': expected exactly one .npz file in {path}, found {len(found)}")
        path = found[0]
    if not path.is_file():
        raise DataError(f"dataset 'npz': file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = {"x_train", "y_train", "x_test", "y_test"} - set(f.files)
            if missing:
                raise DataError(f"{path}: missing arrays {', '.join(sorted(missing))}")
            arrays = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(f"cannot read {path} as npz: {e}") from None
    for key in ("x_train", "x_test"):
        if arrays[key].dtype.kind not in "biuf":
            raise DataError(f"{path}: {key} holds {arrays[key].dtype} values; images must be numbers")
    return RawData(
        _to_nchw(arrays["x_train"], path),
        _labels(arrays["y_train"], path, "y_train"),
        _to_nchw(arrays["x_test"], path),
        _labels(arrays["y_test"], path, "y_test"),
    )


def _labels(y: np.ndarray, path: Path, key: str) -> np.ndarray:
    """Class labels as int64; refused unless every value is a whole number (never truncated)."""
    if y.dtype.kind not in "biuf":
        raise DataError(f"{path}: {key} holds {y.dtype} values; labels must be whole numbers")
    if y.dtype.kind == "f" and not np.all(np.isfinite(y) & (y == np.round(y))):
        bad = y[~(np.isfinite(y) & (y == np.round(y)))].flat[0]
        raise DataError(f"{path}: {key} holds {bad!r}; labels must be whole numbers (class indices)")
    return y.astype(np.int64).reshape(-1)


# ---- image folder: one subfolder per class ------------------------------------------------


def _read_class_folders(
    root: Path, classes: list[str] | None = None
) -> tuple[list[Path], list[int], list[str]]:
    if classes is None:
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"dataset 'imagefolder': no class subfolders in {root}")
    files, labels = [], []
    for label, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            raise DataError(f"dataset 'imagefolder': {root} has no folder for class {name!r}")
        for f in sorted(folder.iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                files.append(f)
                labels.append(label)
    if not files:
        raise DataError(f"dataset 'imagefolder': no image files under {root}")
    return files, labels, classes


PROBE = 500  # images whose headers decide an image folder's native size and colour mode


def _probe(files: list[Path]) -> tuple[tuple[int, int], str]:
    """The most common size (H, W) and the colour mode of a spread of ``files`` (headers only)."""

    step = max(1, len(files) // PROBE)
    sizes: Counter[tuple[int, int]] = Counter()
    modes: set[str] = set()
    for f in files[::step]:
        try:
            with Image.open(f) as img:
                sizes[(img.height, img.width)] += 1
                modes.add(img.mode)
        except (OSError, UnidentifiedImageError) as e:
            raise DataError(f"cannot read image {f}: {e}") from None
    return sizes.most_common(1)[0][0], "L" if modes <= {"L", "1", "I", "I;16", "F"} else "RGB"


@register_dataset("imagefolder")
def load_imagefolder(data_dir: Path | None) -> ImageFiles:
    """Class subfolders of images, in ``train/`` and ``test/`` or directly (then 20% is test).

    Nothing is decoded here: the files are read at the size the options give (else the most
    common one), streamed or held in memory (:func:`autoprune.data._base.file_splits`);
    grayscale unless some image has colour.
    """
    root = require_dir(data_dir, "imagefolder", " (one subfolder of images per class)")
    has_splits = (root / "train").is_dir() and (root / "test").is_dir()
    files, labels, classes = _read_class_folders(root / "train" if has_splits else root)
    y = np.asarray(labels, dtype=np.int64)
    size, mode = _probe(files)
    if has_splits:
        test_files, test_labels, _ = _read_class_folders(root / "test", classes)
        return ImageFiles(
            tuple(files),
            y,
            tuple(test_files),
            np.asarray(test_labels, dtype=np.int64),
            tuple(classes),
            mode,
            size,
        )
    train_idx, test_idx, y_train, y_test = carve_test(np.arange(len(files)), y)
    return ImageFiles(
        tuple(files[i] for i in train_idx),
        y_train,
        tuple(files[i] for i in test_idx),
        y_test,
        tuple(classes),
        mode,
        size,
    )
