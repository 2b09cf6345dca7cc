"""autoprune's 1-D k-means against scikit-learn's KMeans on one 400K-weight layer.

    python bench/kmeans_speed.py [--weights 400000] [--bits 5] [--repeats 3]

The weights are LeNet-5's fc1 (400,000 weights) trained on Fashion-MNIST when a cached base
model exists, else a bimodal sample of the same size. Both start from the same initial
centroids (each of the paper's three initialisations) and run Lloyd's algorithm to
convergence (scikit-learn: tol=0, n_init=1, max_iter=100000).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans

from autoprune.ops import init_centroids, kmeans_1d


def trained_fc1() -> np.ndarray | None:
    cache = Path.home() / ".cache" / "autoprune" / "base"
    import torch

    for path in sorted(cache.glob("lenet5-*.pt")):
        state = torch.load(path, weights_only=True)
        if state.get("fc1.weight") is not None and state["fc1.weight"].numel() == 400_000:
            return state["fc1.weight"].flatten().double().numpy()
    return None


def timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", type=int, default=400_000)
    parser.add_argument("--bits", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/kmeans_speed.json"))
    args = parser.parse_args()

    w = trained_fc1()
    source = "LeNet-5 fc1 trained on Fashion-MNIST"
    if w is None or w.size != args.weights:
        rng = np.random.default_rng(0)
        w = np.concatenate(
            [
                rng.normal(-0.03, 0.02, args.weights // 2),
                rng.normal(0.03, 0.02, args.weights - args.weights // 2),
            ]
        )
        source = "bimodal normal sample"
    k = 1 << args.bits
    rows = []
    for init in ("linear", "density", "forgy"):
        start = init_centroids(w, k, init, seed=0)
        ours_s, ours = timed(lambda: kmeans_1d(w, k, init=start), args.repeats)
        sk = KMeans(k, init=start.reshape(-1, 1), n_init=1, tol=0.0, max_iter=100_000, algorithm="lloyd")
        theirs_s, theirs = timed(lambda: sk.fit(w.reshape(-1, 1)), max(1, args.repeats - 2))
        rows.append(
            {
                "init": init,
                "ours_s": ours_s,
                "sklearn_s": theirs_s,
                "speedup": theirs_s / ours_s,
                "ours_inertia": ours.inertia,
                "sklearn_inertia": float(theirs.inertia_),
                "ours_iterations": ours.iterations,
                "sklearn_iterations": int(theirs.n_iter_),
            }
        )
        r = rows[-1]
        print(
            f"{init:8} ours {ours_s * 1000:8.1f} ms ({r['ours_iterations']} it, inertia "
            f"{r['ours_inertia']:.6g})  "
            f"sklearn {theirs_s * 1000:9.1f} ms ({r['sklearn_iterations']} it, inertia "
            f"{r['sklearn_inertia']:.6g})  "
            f"{r['speedup']:.0f}x faster",
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"weights": int(w.size), "k": k, "source": source, "machine": platform.platform(), "rows": rows},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
