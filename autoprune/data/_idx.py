"""MNIST and Fashion-MNIST from IDX files, gzipped or raw."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np

from autoprune.data._base import RawData, register_dataset, require_dir
from autoprune.errors import DataError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_HINT = (
    " (on Debian: `apt-get install dataset-fashion-mnist` puts it in /usr/share/datasets/fashion-mnist)"
)
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_DTYPES: dict[int, Any] = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Decode one IDX file: two zero bytes, a type code, the rank, big-endian dims, the data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read IDX file {path}: {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    rank = data[3]
    header = 4 + 4 * rank
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank))
    dtype = np.dtype(_DTYPES[data[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataError(f"{path}: header says {dims} but the file holds {len(data) - header} bytes")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)


def _find(data_dir: Path, stem: str, dataset: str, hint: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (data_dir / name).is_file():
            return data_dir / name
    raise DataError(f"dataset {dataset!r}: expected {stem}[.gz] in {data_dir}{hint}")


def load_idx_dir(data_dir: Path, dataset: str, hint: str = "") -> RawData:
    arrays = {key: read_idx(_find(data_dir, stem, dataset, hint)) for key, stem in _FILES.items()}
    x_train, x_test = (arrays[k].astype(np.float32)[:, None] / 255.0 for k in ("x_train", "x_test"))
    return RawData(x_train, arrays["y_train"].astype(np.int64), x_test, arrays["y_test"].astype(np.int64))


@register_dataset("mnist")
def load_mnist(data_dir: Path | None) -> RawData:
    return load_idx_dir(require_dir(data_dir, "mnist"), "mnist")


@register_dataset("fashion-mnist")
def load_fashion_mnist(data_dir: Path | None) -> RawData:
    if data_dir is None and FASHION_MNIST_DIR.is_dir():
        data_dir = FASHION_MNIST_DIR
    path = require_dir(data_dir, "fashion-mnist", FASHION_MNIST_HINT)
    raw = load_idx_dir(path, "fashion-mnist", FASHION_MNIST_HINT)
    return RawData(raw.x_train, raw.y_train, raw.x_test, raw.y_test, FASHION_CLASSES)
