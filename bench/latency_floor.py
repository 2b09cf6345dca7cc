"""How fast can filter pruning make a network at batch 1 (issue 27)? ResNet-20 and MobileNetV2 at
28x28, untrained (weights do not change the time), pruned uniformly to nearly nothing: what is
left is the per-operator cost that removing filters cannot remove, the floor under any speed-up.

    python bench/latency_floor.py [--rounds 5] [--repeats 200]

ONNX Runtime at batch 1 (the faster backend for these networks at batch 1), the networks timed
in interleaved rounds, the median of the rounds' medians; "base again" is a second copy of the
base: the timing's own noise. Writes ``bench/results/latency_floor.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from pathlib import Path

import torch

from autoprune.compress import FilterPruneConfig, prune_filters_
from autoprune.measure import count_macs, cpu_sample, measure_latency, other_load
from autoprune.models import ModelSpec, create_model

RATIOS = (0.5, 0.75, 0.9, 0.94)  # 0.94 keeps one filter of 16
SHAPE = (1, 28, 28)


def floor(network: str, rounds: int, repeats: int) -> dict:
    torch.manual_seed(0)
    base = create_model(ModelSpec(network, 10, 1, SHAPE[1:])).eval()
    nets = {"base": base, "base again": copy.deepcopy(base)}
    for ratio in RATIOS:
        model = copy.deepcopy(base)
        prune_filters_(model, FilterPruneConfig(default=ratio), torch.zeros(1, *SHAPE))
        nets[f"uniform {ratio}"] = model.eval()
    times: dict[str, list[float]] = {name: [] for name in nets}
    before = cpu_sample()
    for _ in range(rounds):
        for name, model in nets.items():
            timing = measure_latency(
                model, SHAPE, batch_size=1, repeats=repeats, warmup=10, backends=("onnxruntime",)
            )
            times[name].append(timing.median_ms)
    load = other_load(before, cpu_sample())
    macs = {name: count_macs(model, SHAPE) for name, model in nets.items()}
    base_ms = statistics.median(times["base"])
    rows = [
        {
            "what": name,
            "macs_ratio": macs["base"] / macs[name],
            "ms": statistics.median(times[name]),
            "speedup": base_ms / statistics.median(times[name]),
        }
        for name in nets
    ]
    return {"other_load": load, "rounds": rounds, "repeats": repeats, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results/latency_floor.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = {}
    for network in ("resnet20", "mobilenetv2"):
        out[network] = floor(network, args.rounds, args.repeats)
        for row in out[network]["rows"]:
            print(
                network, json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
            )
        print(network, "other_load", out[network]["other_load"], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
