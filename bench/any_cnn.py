"""Any CNN a user brings: each architecture compressed by `autoprune compress` with the recipe of
the any-CNN report (30% L1 filter pruning of every conv, magnitude quality 0.5, 6/4 bits, one
capped fine-tuning epoch) on 512 random 32x32x3 images, then reloaded by `eval`.

    python bench/any_cnn.py --out bench/results/any_cnn.json

Per architecture: parameters before and after, the packed ratio, the compress command's wall
time (its base trained one epoch and cached beforehand, outside the timing), the accuracy the
packed file reloads to against the compressed model's own, and the convs left whole, by reason.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
NETS = [
    "vgg",
    "resnet20",
    "mobilenetv2",
    f"{HERE / 'cifar_nets.py'}:shufflenet_g2",
    f"{HERE / 'cifar_nets.py'}:shufflenetv2",
]
RECIPE = """name = "any-cnn-report"
[structured]
default = 0.3
[unstructured]
default = 0.5
[finetune]
epochs = 1
max_batches = 4
[quantize]
conv_bits = 6
fc_bits = 4
epochs = 1
"""


def autoprune(*args: str, timeout: float = 900) -> tuple[dict, float]:
    started = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "autoprune", *args], capture_output=True, text=True, timeout=timeout
    )
    wall = time.perf_counter() - started
    if r.returncode != 0:
        raise SystemExit(f"autoprune {' '.join(args)} failed: {r.stderr.strip()}")
    return json.loads(r.stdout), wall


def inputs() -> Path:
    """A folder with the report's data (512 random 32x32x3 images, 10 classes) and recipe."""
    tmp = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(512, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, size=512)
    np.savez(tmp / "rgb32.npz", x_train=x, y_train=y, x_test=x[:128], y_test=y[:128])
    (tmp / "recipe.toml").write_text(RECIPE)
    return tmp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", default=",".join(NETS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "any_cnn.json")
    args = ap.parse_args()
    tmp = inputs()
    rows = []
    for net in args.nets.split(","):
        data = [
            "--model",
            net,
            "--dataset",
            "npz",
            "--data-dir",
            str(tmp / "rgb32.npz"),
            "--threads",
            str(args.threads),
        ]
        autoprune("train", *data, "--epochs", "1", "--json", "-q")  # the base, cached outside the timing
        out = tmp / "m.apk"
        doc, wall = autoprune(
            "compress",
            *data,
            "--epochs",
            "1",
            "--recipe",
            str(tmp / "recipe.toml"),
            "--out",
            str(out),
            "--json",
            "-q",
        )
        again, _ = autoprune("eval", str(out), *data[:6], "--no-latency", "--json")
        whole = Counter(n["why"].split(":")[0] for n in doc["norms"] if n["why"])
        rows.append(
            {
                "model": Path(net.split(":")[-1]).name,
                "params_before": doc["base"]["params"],
                "params_after": doc["params"],
                "compression_ratio": round(doc["compression_ratio"], 2),
                "compress_wall_s": round(wall, 1),
                "stages_s": {k: doc[k] for k in ("prune_s", "finetune_s", "quantize_s", "pack_s", "eval_s")},
                "accuracy": doc["accuracy"],
                "reloaded_accuracy": again["accuracy"],
                "convs": len(doc["norms"]),
                "left_whole_or_short": dict(whole),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    result = {
        "command": "python bench/any_cnn.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} threads",
        "rows": rows,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
