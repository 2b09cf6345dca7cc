"""Image folders streamed from disk: the same batches and accuracy as held in memory, nothing
decoded beyond the batch at hand, one input size (short side resized, centre crop) and the
CIFAR augmentation."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from autoprune.data import DataOptions, StreamSplit, augment_batch, load_dataset
from autoprune.data import _base as data_base
from autoprune.models import ModelSpec, create_model
from autoprune.train import TrainConfig, fit


def image_folder(root: Path, n: int = 60, classes: int = 3) -> Path:
    """RGB images of mixed sizes and aspect ratios, each class a colour band: learnable."""
    rng = np.random.default_rng(0)
    for i in range(n):
        label = i % classes
        h, w = (20, 24) if i % 4 else (30, 20)
        x = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
        x[:, :, label] = 255
        folder = root / f"c{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x).save(folder / f"{i:03d}.png")
    return root


def splits_of(root: Path, in_memory: str, **kw) -> object:
    data_base._load_cached.cache_clear()
    return load_dataset(
        "imagefolder", data_dir=root, seed=1, options=DataOptions((16, 16), in_memory, **{"workers": 2, **kw})
    )


def test_streamed_and_in_memory_give_the_same_batches_and_accuracy(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "imgs")
    memory, stream = splits_of(root, "yes"), splits_of(root, "no")
    assert isinstance(stream.train, StreamSplit) and not isinstance(memory.train, StreamSplit)
    assert memory.input_shape == stream.input_shape == (3, 16, 16)
    assert memory.mean == stream.mean and memory.std == stream.std
    order = torch.randperm(len(memory.train), generator=torch.Generator().manual_seed(3))
    for (xm, ym), (xs, ys) in zip(
        memory.train.batches(8, order), stream.train.batches(8, order), strict=True
    ):
        assert torch.equal(xm, xs) and torch.equal(ym, ys)
    histories = []
    for splits in (memory, stream):
        torch.manual_seed(0)
        model = create_model(ModelSpec("lenet5", 3, 3, (16, 16)))
        histories.append(
            fit(model, splits, TrainConfig(epochs=3, batch_size=8, lr=3e-3), seed=5, progress=False)
        )
    assert histories[0] == histories[1] and histories[0][-1] > 50


def test_a_large_folder_streams_without_being_decoded_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Memory bounded by construction: a streamed split holds file names and labels, and a
    batch decodes only its own images."""
    root = image_folder(tmp_path / "imgs", n=90)
    monkeypatch.setattr(data_base, "IN_MEMORY_LIMIT", 10_000)  # 90 images of 3x16x16 floats take 276 KB
    splits = splits_of(root, "auto", workers=0)
    assert all(isinstance(s, StreamSplit) for s in (splits.train, splits.val, splits.test))
    assert not hasattr(splits.train, "x")
    calls = []
    reader = splits.train.reader
    monkeypatch.setattr(
        type(reader), "__call__", lambda self, path: calls.append(path) or torch.zeros(3, 16, 16)
    )
    batch = next(iter(splits.train.batches(8)))
    assert batch[0].shape == (8, 3, 16, 16) and len(calls) == 8


def test_short_side_resize_and_centre_crop_keep_the_aspect_ratio(tmp_path: Path) -> None:
    x = np.zeros((30, 60, 3), np.uint8)
    x[:, 15:45] = 255  # a white square in the middle of a 2:1 image
    (tmp_path / "a" / "c0").mkdir(parents=True)
    (tmp_path / "a" / "c1").mkdir(parents=True)
    for i in range(30):
        Image.fromarray(x).save(tmp_path / "a" / f"c{i % 2}" / f"{i}.png")
    splits = splits_of(tmp_path / "a", "yes")
    image = (
        splits.train.x[0] * torch.tensor(splits.std)[:, None, None] + torch.tensor(splits.mean)[:, None, None]
    )
    # the crop is the white square (edges blend a little), not the whole frame squashed (half of it black)
    assert image.shape == (3, 16, 16) and float(image.min()) > 0.8 and float(image.mean()) > 0.95


def test_the_fingerprint_follows_the_files_not_their_pixels(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "imgs", n=30)
    first = splits_of(root, "no").fingerprint
    assert splits_of(root, "no").fingerprint == first
    some = next((root / "c0").iterdir())
    os.utime(some, ns=(some.stat().st_atime_ns, some.stat().st_mtime_ns + 10**9))
    assert splits_of(root, "no").fingerprint != first
    assert splits_of(root, "no", augment="crop-flip").fingerprint != splits_of(root, "no").fingerprint


def test_crop_flip_moves_and_mirrors_and_none_changes_nothing() -> None:
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6)
    assert augment_batch(x, "none", torch.Generator()) is x
    seen = {
        tuple(augment_batch(x, "crop-flip", torch.Generator().manual_seed(s))[0].flatten().tolist())
        for s in range(20)
    }
    assert len(seen) > 5  # different crops and flips
    out = augment_batch(x, "crop-flip", torch.Generator().manual_seed(0))
    assert out.shape == x.shape
