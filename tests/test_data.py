from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from autoprune.data import list_datasets, load_dataset
from autoprune.data._idx import read_idx
from autoprune.errors import DataError, UnknownNameError
from tests.conftest import images, write_npz


def test_digits_is_the_embedded_default() -> None:
    s = load_dataset("digits", seed=0)
    assert s.input_shape == (1, 8, 8)
    assert s.num_classes == 10
    assert len(s.train) + len(s.val) + len(s.test) == 1797
    assert len(s.val) == pytest.approx(0.1 * (len(s.train) + len(s.val)), abs=1)
    # normalised with training statistics
    assert abs(float(s.train.x.mean())) < 1e-4
    assert float(s.train.x.std()) == pytest.approx(1.0, abs=1e-3)


def test_validation_split_is_stratified_and_seeded() -> None:
    a, b, c = (load_dataset("digits", seed=s) for s in (1, 1, 2))
    assert a is b  # loaded once and reused
    assert not torch.equal(a.val.y, c.val.y)
    train_share = torch.bincount(a.train.y, minlength=10).float() / len(a.train)
    val_share = torch.bincount(a.val.y, minlength=10).float() / len(a.val)
    assert torch.allclose(train_share, val_share, atol=0.02)
    # the test split does not depend on the seed: it is never tuned on
    assert torch.equal(a.test.y, c.test.y)


def test_unknown_dataset_lists_the_valid_names() -> None:
    with pytest.raises(UnknownNameError) as e:
        load_dataset("imagenet")
    for name in list_datasets():
        assert name in str(e.value)


def test_idx_gzipped_and_raw(idx_dir: Path) -> None:
    s = load_dataset("mnist", data_dir=idx_dir)
    assert s.input_shape == (1, 28, 28)
    assert len(s.train) + len(s.val) == 120 and len(s.test) == 40
    raw = read_idx(idx_dir / "t10k-images-idx3-ubyte")
    assert raw.shape == (40, 28, 28) and raw.dtype == np.uint8


def test_idx_missing_file_names_it(idx_dir: Path) -> None:
    (idx_dir / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_dataset("mnist", data_dir=idx_dir)


def test_idx_bad_magic(tmp_path: Path) -> None:
    bad = tmp_path / "x"
    bad.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(bad)


def test_missing_directory_says_how_to_get_fashion_mnist(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", data_dir=tmp_path / "nope")


def test_cifar10_pickle_batches(cifar_dir: Path) -> None:
    s = load_dataset("cifar10", data_dir=cifar_dir)
    assert s.input_shape == (3, 32, 32)
    assert len(s.train) + len(s.val) == 100 and len(s.test) == 20
    assert s.classes[0] == "class0"
    assert len(s.mean) == 3


def test_npz_channels_last_and_first(tmp_path: Path) -> None:
    last = load_dataset("npz", data_dir=write_npz(tmp_path / "a.npz", (32, 32, 3)))
    assert last.input_shape == (3, 32, 32)
    x, y = images(40, (28, 28), 4)
    np.savez(tmp_path / "b.npz", x_train=x[:, None], y_train=y, x_test=x[:8, None], y_test=y[:8])
    first = load_dataset("npz", data_dir=tmp_path / "b.npz")
    assert first.input_shape == (1, 28, 28) and first.num_classes == 4


def test_npz_missing_array(tmp_path: Path) -> None:
    np.savez(tmp_path / "c.npz", x_train=np.zeros((4, 8, 8)), y_train=np.zeros(4))
    with pytest.raises(DataError, match="missing arrays x_test, y_test"):
        load_dataset("npz", data_dir=tmp_path / "c.npz")


@pytest.mark.parametrize("with_splits", [True, False])
def test_imagefolder(tmp_path: Path, with_splits: bool) -> None:
    x, y = images(60, (16, 16, 3), 3)
    roots = [tmp_path / "train", tmp_path / "test"] if with_splits else [tmp_path]
    for root in roots:
        for i, (img, label) in enumerate(zip(x, y)):
            folder = root / f"c{label}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(folder / f"{i}.png")
    s = load_dataset("imagefolder", data_dir=tmp_path)
    assert s.input_shape == (3, 16, 16)
    assert s.classes == ("c0", "c1", "c2")
    assert len(s.test) == (60 if with_splits else 12)
