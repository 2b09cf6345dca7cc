"""Measured CPU speed-up of LeNet-5 (28x28) with half its filters physically removed, against
its MAC reduction: does removing filters buy real time, not only fewer MACs?

    python bench/latency_half_filters.py [--threads 1 2] [--repeats 500] [--rounds 5]

Latency is autoprune's own measurement (median of timed runs after warm-up, faster of the two
CPU conv backends). Each round measures the full and the pruned network back to back; the
median over rounds is reported.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import warnings
from pathlib import Path

import torch

from autoprune.compress import FilterPruneConfig, prune_filters_
from autoprune.measure import count_macs, measure_latency
from autoprune.models import ModelSpec, create_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    for threads in args.threads:
        for batch in args.batch_sizes:
            repeats = args.repeats if batch == 1 else max(20, args.repeats // 20)
            full_ms, pruned_ms, backends = [], [], set()
            for _ in range(args.rounds):
                a = measure_latency(full, (1, 28, 28), batch_size=batch, warmup=50, repeats=repeats, threads=threads)
                b = measure_latency(pruned, (1, 28, 28), batch_size=batch, warmup=50, repeats=repeats, threads=threads)
                full_ms.append(a.median_ms)
                pruned_ms.append(b.median_ms)
                backends |= {a.backend, b.backend}
            speedup = statistics.median(full_ms) / statistics.median(pruned_ms)
            rows.append({
                "threads": threads, "batch": batch, "full_ms": statistics.median(full_ms),
                "pruned_ms": statistics.median(pruned_ms), "speedup": speedup, "mac_ratio": mac_ratio,
                "speedup_over_mac_ratio": speedup / mac_ratio, "backends": sorted(backends),
            })  # fmt: skip
            r = rows[-1]
            print(f"threads {threads} batch {batch:3}: full {r['full_ms']:.3f} ms, pruned {r['pruned_ms']:.3f} ms, "
                  f"speed-up {speedup:.2f}x vs {mac_ratio:.2f}x fewer MACs = {r['speedup_over_mac_ratio']:.2f} "
                  f"({', '.join(r['backends'])})", flush=True)  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": platform.platform(), "torch": torch.__version__, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
