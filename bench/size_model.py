"""The size model (`autoprune/compress/size.py`): its speed on many candidates, and its error
against real packed files, on every built-in model.

    python bench/size_model.py [--candidates 3000] [--checked 6] [--out bench/results/size_model.json]

Each model is built untrained (seeded), the settings drawn at random as tests/test_size.py
draws them (per-layer filter ratios 0-0.7, quality thresholds 0-2.5, 4-8 / 2-6 bits, any
k-means initialisation). Speed: CPU seconds of the process (time.process_time, so another
process on the machine slows it less than it slows wall time) per 1,000 estimates, the size
model built beforehand and its caches empty, as for one `surrogate propose`. Error: the
estimate against the packed file the pipeline writes for the same settings (`--checked` per
model, other draws than the speed run's).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from autoprune.compress.size import SizeModel
from autoprune.measure import cpu_sample, other_load
from autoprune.models import ModelSpec, create_model, list_models
from autoprune.search.space import SpaceLayers

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the draws and the real files exactly as tests/test_size.py makes them
from tests.test_size import SHAPES, random_config, real_size

RESULTS = REPO / "bench" / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", type=int, default=3000)
    ap.add_argument("--checked", type=int, default=6)
    ap.add_argument("--out", type=Path, default=RESULTS / "size_model.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = {}
    before = cpu_sample()
    with tempfile.TemporaryDirectory() as tmp:
        for name in list_models():
            c, h, w = SHAPES.get(name, (3, 32, 32))
            spec = ModelSpec(name, 10, c, (h, w))
            torch.manual_seed(0)
            base = create_model(spec).eval()
            layers = SpaceLayers.of(base)
            sizes = SizeModel(base, spec)
            rng = np.random.default_rng(0)
            configs = [random_config(layers, rng) for _ in range(args.candidates)]
            started = time.process_time()
            for config in configs:
                sizes.estimate(config)
            cpu = time.process_time() - started
            errors = []
            for i in range(args.checked):
                config = random_config(layers, rng)
                errors.append(
                    sizes.estimate(config) / real_size(base, spec, config, Path(tmp) / f"{i}.apk") - 1
                )
            rows[name] = {
                "cpu_s_per_1000": round(cpu / args.candidates * 1000, 3),
                "error_pct": [round(100 * e, 2) for e in errors],
                "max_abs_error_pct": round(100 * max(abs(e) for e in errors), 2),
            }
            print(
                f"{name}: {rows[name]['cpu_s_per_1000']:.2f} CPU s per 1,000 estimates; "
                f"error vs real files max {rows[name]['max_abs_error_pct']:.2f}%",
                flush=True,
            )
    result = {
        "command": "python bench/size_model.py "
        + " ".join(f"--{k} {v}" for k, v in (("candidates", args.candidates), ("checked", args.checked))),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, one torch "
        "thread",
        "other_load": other_load(before, cpu_sample()),  # cores other processes kept busy meanwhile
        "models": rows,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
