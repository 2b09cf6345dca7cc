"""Measured CPU speed-up of LeNet-5 (28x28) with half its filters physically removed, against
its MAC reduction: does removing filters buy real time, not only fewer MACs?

    python bench/latency_half_filters.py [--threads 1 2] [--repeats 500] [--rounds 5]

Latency is autoprune's own measurement (median of timed runs after warm-up), once on each
backend alone and once as a search records it ("fastest": the fastest of the backends). Each
round measures the full and the pruned network back to back; the median over rounds is reported.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.compress import FilterPruneConfig, prune_filters_
from autoprune.measure import BACKENDS, count_macs, measure_latency
from autoprune.models import ModelSpec, create_model


def measure_pair(
    full: nn.Module,
    pruned: nn.Module,
    mac_ratio: float,
    threads: int,
    batch: int,
    backend: str,
    args: argparse.Namespace,
) -> dict[str, Any]:
    repeats = args.repeats if batch == 1 else max(20, args.repeats // 20)
    options: dict[str, Any] = dict(batch_size=batch, warmup=50, repeats=repeats, threads=threads)
    if backend != "fastest":
        options["backends"] = (backend,)
    full_ms, pruned_ms, used = [], [], set()  # used: the backends the measurements ran on
    for _ in range(args.rounds):
        a = measure_latency(full, (1, 28, 28), **options)
        b = measure_latency(pruned, (1, 28, 28), **options)
        full_ms.append(a.median_ms)
        pruned_ms.append(b.median_ms)
        used |= {a.backend, b.backend}
    speedup = statistics.median(full_ms) / statistics.median(pruned_ms)
    row = {
        "threads": threads,
        "batch": batch,
        "backend": backend,
        "used": sorted(used),
        "full_ms": statistics.median(full_ms),
        "pruned_ms": statistics.median(pruned_ms),
        "speedup": speedup,
        "mac_ratio": mac_ratio,
        "speedup_over_mac_ratio": speedup / mac_ratio,
    }
    print(
        f"threads {threads} batch {batch:3} {backend:11}: full {row['full_ms']:.3f} ms, pruned "
        f"{row['pruned_ms']:.3f} ms, speed-up {speedup:.2f}x vs {mac_ratio:.2f}x fewer MACs = "
        f"{row['speedup_over_mac_ratio']:.2f} ({', '.join(row['used'])})",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--repeats", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench/results/latency_half_filters.json"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    full = create_model(ModelSpec("lenet5", 10, 1, (28, 28))).eval()
    pruned = create_model(ModelSpec("lenet5", 10, 1, (28, 28))).eval()
    prune_filters_(pruned, FilterPruneConfig(default=0.5), torch.zeros(1, 1, 28, 28))
    mac_ratio = count_macs(full, (1, 28, 28)) / count_macs(pruned, (1, 28, 28))
    rows = []
    for batch in args.batch_sizes:
        for threads in args.threads:
            for backend in (*BACKENDS, "fastest"):
                rows.append(measure_pair(full, pruned, mac_ratio, threads, batch, backend, args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"machine": platform.platform(), "torch": torch.__version__, "rows": rows}, indent=2)
    )


if __name__ == "__main__":
    main()
