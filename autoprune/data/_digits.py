"""scikit-learn's bundled 8x8 handwritten digits: the embedded default, no file needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

from autoprune.data._base import RawData, carve_test, register_dataset


@register_dataset("digits")
def load(data_dir: Path | None) -> RawData:
    del data_dir  # bundled with scikit-learn
    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None]  # (1797, 1, 8, 8), pixel values 0..16
    y = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = carve_test(x, y)
    return RawData(x_train, y_train, x_test, y_test, tuple(str(c) for c in bunch.target_names))
