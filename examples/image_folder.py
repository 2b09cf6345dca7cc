"""A stand-in for your own images: scikit-learn's handwritten digits written as an image folder
(one subfolder of PNGs per class, named after the class), at 16x16, the layout autoprune's
``imagefolder`` dataset reads.

    python examples/image_folder.py pics
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def main(folder: Path) -> None:
    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images, digits.target)):
        pixels = Image.fromarray((image * (255 / 16)).astype(np.uint8), mode="L")
        (folder / NAMES[label]).mkdir(parents=True, exist_ok=True)
        pixels.resize((16, 16), Image.Resampling.BILINEAR).save(folder / NAMES[label] / f"{i:04d}.png")
    print(f"wrote {len(digits.images)} images in {len(NAMES)} class folders under {folder}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "pics"))
