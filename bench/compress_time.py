"""Where `autoprune compress` spends its time on a larger network, and how much of it is
measuring: MobileNetV2 at 32x32 on 512 random images, the recipe of the any-CNN report (30% L1
filter pruning of every conv, magnitude quality 0.5, 6/4 bits, one capped fine-tuning epoch).

    python bench/compress_time.py --label after --out bench/results/compress_time.json

Run it again from another checkout (PYTHONPATH=that/checkout) with another --label to compare
versions: each label's row is kept in the same JSON file. The base is trained (one epoch) and
cached first, outside the timing, so every row times the same work. The wall time is the
whole command; "measuring" is the base's measurement plus the compressed model's evaluation
(accuracy, MACs and latency on three backends at two batch sizes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from any_cnn import autoprune, inputs  # the same recipe, data and way to run the command


def other_load(seconds: float = 2.0) -> float:
    """Cores other processes keep busy now (from /proc/stat), noted beside every timing."""

    def sample() -> tuple[float, float]:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
        return time.perf_counter(), (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")

    (t0, b0), _ = sample(), time.sleep(seconds)
    t1, b1 = sample()
    return round((b1 - b0) / (t1 - t0), 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--label", required=True, help="this run's name in the results (before, after, ...)")
    ap.add_argument("--model", default="mobilenetv2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("bench/results/compress_time.json"))
    args = ap.parse_args()
    tmp = inputs()
    data = [
        "--model",
        args.model,
        "--dataset",
        "npz",
        "--data-dir",
        str(tmp / "rgb32.npz"),
        "--epochs",
        "1",
        "--threads",
        str(args.threads),
    ]
    autoprune("train", *data, "--json", "-q")  # the base, trained and cached outside the timing
    load = other_load()
    doc, wall = autoprune(
        "compress", *data, "--recipe", str(tmp / "recipe.toml"), "--out", str(tmp / "m.apk"), "--json", "-q"
    )
    stages = {k: doc[k] for k in ("prune_s", "finetune_s", "quantize_s", "pack_s", "eval_s")}
    row = {
        "label": args.label,
        "model": args.model,
        "wall_s": round(wall, 1),
        "stages_s": stages,
        "base_measure_s": round(doc.get("base_measure_s", float("nan")), 2)
        if "base_measure_s" in doc
        else None,
        "latency_repeats": doc.get("latency_repeats"),
        "latency_interval": doc.get("latency_interval"),
        "latency_ms": doc["latency_ms"],
        "latency_ms_batch": doc["latency_ms_batch"],
        "backend": doc["backend"],
        "compression_ratio": round(doc["compression_ratio"], 2),
        "other_load_before": load,
        "other_load_timing": doc.get("other_load"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} threads",
    }
    rows = json.loads(args.out.read_text())["rows"] if args.out.is_file() else []
    rows = [r for r in rows if r["label"] != args.label] + [row]
    args.out.write_text(
        json.dumps({"command": "python bench/compress_time.py", "rows": rows}, indent=2) + "\n"
    )
    print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
