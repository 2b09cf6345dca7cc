"""A search on an image folder too large for memory, with its peak memory measured (issue 24).

Writes an image folder of JPEGs (class-coloured shapes with noise) whose decoded float32
tensors at the chosen size would need --gib GiB or more, then runs `autoprune search` on it
for a few trials (base training and fine-tuning capped at a few batches: the point is memory,
not accuracy) while sampling the resident memory of the search process and every process under
it (its DataLoader workers) from /proc every 0.2 s. Reports the peak of the whole tree as
PSS (shared pages split between the processes sharing them: the tree's real footprint) and
as a sum of RSS (shared pages counted once per process: reads high), and the largest process.

    python bench/stream_memory.py --gib 8 --out bench/results/stream_memory.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
FACTORY = '''
from torch import nn

def small(num_classes=10, in_channels=3, image_size=(224, 224)):
    """A cheap CNN for 224x224 inputs: strided convs, global pooling."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 5, stride=4, padding=2), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes),
    )
'''
SPEC = """
[study]
trials = {trials}
latency_repeats = 5
[model]
name = "{factory}:small"
[data]
name = "imagefolder"
data_dir = "{folder}"
image_size = [{size}, {size}]
augment = "crop-flip"
workers = 2
[train]
epochs = 1
max_batches = 20
[space]
finetune_epochs = [1]
quant_epochs = [0]
max_batches = 5
"""


def write_folder(root: Path, count: int, size: int, classes: int = 10) -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(count):
        label = i % classes
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:06d}.jpg"
        if path.exists():
            continue
        cx, cy, r = rng.integers(size // 4, 3 * size // 4, 2).tolist() + [size // 6]
        image = rng.integers(0, 50, (size, size, 3), dtype=np.uint8)
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
        image[disc] = np.array([25 * label, 255 - 25 * label, 128], dtype=np.uint8)
        Image.fromarray(image).save(path, quality=85)


def tree_rss(pid: int) -> tuple[int, int, int]:
    """(sum of RSS, sum of PSS, largest RSS) in bytes of ``pid`` and every process under it.
    PSS counts a page shared by k processes as 1/k in each: the tree's real footprint; the RSS
    sum counts shared pages (torch's libraries, the parent's pages its forked workers share)
    once per process."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    total = proportional = largest = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                fields = {
                    line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if line.split()[-1] == "kB"
                }
        except (OSError, ValueError, IndexError):
            continue
        total, largest = total + fields.get("Rss", 0), max(largest, fields.get("Rss", 0))
        proportional += fields.get("Pss", 0)
    return total, proportional, largest


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gib", type=float, default=8.0, help="decoded float32 size the folder must reach")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "autoprune-stream-bench")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/stream_memory.json")
    args = parser.parse_args()

    count = math.ceil(args.gib * 2**30 / (3 * args.size * args.size * 4))
    started = time.perf_counter()
    write_folder(args.folder / "images", count, args.size)
    written_s = time.perf_counter() - started
    on_disk = sum(f.stat().st_size for f in (args.folder / "images").rglob("*.jpg"))
    (args.folder / "nets.py").write_text(FACTORY)
    spec = args.folder / "stream.toml"
    spec.write_text(
        SPEC.format(
            trials=args.trials, factory=args.folder / "nets.py", folder=args.folder / "images", size=args.size
        )
    )
    storage = f"sqlite:///{args.folder / 'stream.db'}"
    (args.folder / "stream.db").unlink(missing_ok=True)
    env = {**os.environ, "AUTOPRUNE_CACHE": str(args.folder / "cache")}
    command = [
        sys.executable,
        "-m",
        "autoprune",
        "search",
        str(spec),
        "--storage",
        storage,
        "--device",
        "cpu",
        "--threads",
        "2",
        "--quiet",
        "--json",
    ]
    peak = {"sum": 0, "pss": 0, "max": 0}
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def sample() -> None:
        while proc.poll() is None:
            for key, value in zip(("sum", "pss", "max"), tree_rss(proc.pid)):
                peak[key] = max(peak[key], value)
            time.sleep(0.2)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    out, err = proc.communicate()
    watcher.join()
    search_s = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"search failed ({proc.returncode}): {err[-2000:]}")
    summary = json.loads(out)
    result = {
        "command": " ".join(sys.argv),
        "images": count,
        "image_size": [args.size, args.size],
        "decoded_float32_gib": round(count * 3 * args.size * args.size * 4 / 2**30, 2),
        "jpeg_on_disk_gib": round(on_disk / 2**30, 2),
        "trials": summary["states"],
        "peak_pss_tree_gib": round(peak["pss"] / 2**30, 3),
        "peak_rss_tree_gib": round(peak["sum"] / 2**30, 3),
        "peak_rss_largest_process_gib": round(peak["max"] / 2**30, 3),
        "search_s": round(search_s, 1),
        "folder_written_s": round(written_s, 1),
        "load_before": load_before,
        "cpus": os.cpu_count(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
