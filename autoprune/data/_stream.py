"""Image folders that need not fit in memory: images decoded per batch by a DataLoader, at one
fixed input size, and the training-time augmentation both paths share.

An image is read the same way whether it is streamed or held in memory (``ImageReader``: the
short side resized to the target, then a centre crop; the aspect ratio kept), and normalised
with the same statistics (of a fixed sample of the training images), so the two paths give
the same batches for the same seed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from autoprune.errors import DataError

STATS_SAMPLE = 2000  # training images read to compute the normalisation (all of them below this)
AUGMENTS = ("none", "crop-flip")


@dataclass(frozen=True)
class ImageReader:
    """One image file as a (C, H, W) float32 tensor at ``size``, normalised."""

    size: tuple[int, int]  # (H, W)
    mode: str  # "L" or "RGB"
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def __call__(self, path: Path) -> torch.Tensor:

        try:
            with Image.open(path) as opened:
                img = opened.convert(self.mode)
                h, w = self.size
                scale = max(h / img.height, w / img.width)  # the short side (relative to the target) fits
                if (img.height, img.width) != (h, w):
                    img = img.resize(
                        (max(w, round(img.width * scale)), max(h, round(img.height * scale))),
                        Image.Resampling.BILINEAR,
                    )
                    left, top = (img.width - w) // 2, (img.height - h) // 2
                    img = img.crop((left, top, left + w, top + h))
                array = np.asarray(img, dtype=np.uint8)
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise DataError(f"cannot read image {path}: {e}") from None
        x = torch.from_numpy(array.astype(np.float32) / 255.0)
        x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)  # (C, H, W)
        if self.mean:
            x = (x - torch.tensor(self.mean)[:, None, None]) / torch.tensor(self.std)[:, None, None]
        return x


class _Files(torch.utils.data.Dataset):
    def __init__(self, files: Sequence[Path], labels: torch.Tensor, reader: ImageReader) -> None:
        self.files, self.labels, self.reader = files, labels, reader

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.reader(self.files[i]), self.labels[i]


@dataclass(frozen=True, eq=False)
class StreamSplit:
    """A split read from its files batch by batch (``workers`` decoding processes); only the
    labels live in memory."""

    files: tuple[Path, ...]
    y: torch.Tensor  # (N,) int64
    reader: ImageReader
    workers: int = 2

    def __len__(self) -> int:
        return len(self.y)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (1 if self.reader.mode == "L" else 3, *self.reader.size)

    def batches(
        self, batch_size: int, order: torch.Tensor | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(x, y) batches of the images in ``order`` (default: as stored), decoded now."""
        indices = order.tolist() if order is not None else range(len(self))
        loader = torch.utils.data.DataLoader(
            _Files(self.files, self.y, self.reader),
            batch_size=batch_size,
            sampler=list(indices),
            num_workers=self.workers,
            pin_memory=torch.cuda.is_available(),
        )
        yield from loader

    def fingerprint(self, digest: Any) -> None:
        """The files as listed, sized and dated (never every pixel), and how they are read."""
        digest.update(repr((self.reader.size, self.reader.mode)).encode())
        for path, label in zip(self.files, self.y.tolist()):
            info = path.stat()
            digest.update(f"{path}\0{info.st_size}\0{info.st_mtime_ns}\0{label}\n".encode())


def image_stats(
    files: Sequence[Path], reader: ImageReader, seed: int = 0
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of a fixed sample of ``files`` (all of them when few)."""
    chosen = files
    if len(files) > STATS_SAMPLE:
        picks = np.random.default_rng(seed).choice(len(files), STATS_SAMPLE, replace=False)
        chosen = [files[i] for i in sorted(picks)]
    total = total_sq = torch.zeros(0, dtype=torch.float64)
    count = 0
    for path in chosen:
        x = reader(path).double()  # (C, H, W) in [0, 1]: the reader has no statistics yet
        s, sq = x.sum(dim=(1, 2)), (x * x).sum(dim=(1, 2))
        total, total_sq = (s, sq) if count == 0 else (total + s, total_sq + sq)
        count += x.shape[1] * x.shape[2]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(0).sqrt()
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def augment_batch(x: torch.Tensor, kind: str, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Training-time augmentation of a batch (B, C, H, W), drawn from ``generator``:
    ``crop-flip`` is the CIFAR recipe, a random crop of the image padded by ``pad`` (zeros: the
    mean colour after normalising) and a horizontal flip of half the images."""
    if kind == "none":
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator)
    flips = torch.rand(b, generator=generator) < 0.5
    out = torch.empty_like(x)
    for i in range(b):
        top, left = int(offsets[i, 0]), int(offsets[i, 1])
        crop = padded[i, :, top : top + h, left : left + w]
        out[i] = crop.flip(-1) if flips[i] else crop
    return out


def decoded_bytes(n: int, size: tuple[int, int], mode: str) -> int:
    """What ``n`` images would take in memory as float32 tensors."""
    return n * (1 if mode == "L" else 3) * math.prod(size) * 4
