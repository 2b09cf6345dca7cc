"""What measuring costs a search trial on wider networks (issue 27): validation and test
accuracy, MACs and latency of a pruned ResNet-20 and MobileNetV2 (uniform L1 0.35) on
Fashion-MNIST's first 10,000 training images and its test set, against the fine-tuning of one
capped trial (1 epoch of 100 batches of 128 and 20 timed repeats, as bench/real_nets.py's
search), with the latency bound (a shared TOTAL_S budget, backends raced) and without it (the
constants of before).

    python bench/measure_cost.py [--rounds 3]

Rounds alternate the two ways of timing, so a busy spell hits both; the medians are reported.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from autoprune import measure
from autoprune.compress import FilterPruneConfig, prune_filters_
from autoprune.data import load_dataset
from autoprune.measure import accuracy, count_macs, cpu_sample, other_load, trial_latencies
from autoprune.models import ModelSpec, create_model
from autoprune.train import TrainConfig, fit

sys.path.insert(0, str(Path(__file__).parent))
import real_nets  # noqa: E402  # the scaled dataset's name

RESULTS = Path("bench/results/measure_cost.json")


def timed(call: Any) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def latency_s(model: torch.nn.Module, shape: tuple[int, ...], bounded: bool) -> float:
    """Seconds the trial's latency measurement takes (batch 1 and 64, every backend)."""
    saved = measure.TOTAL_S, measure.RACE
    if not bounded:
        measure.TOTAL_S, measure.RACE = math.inf, math.inf
    try:
        return timed(lambda: trial_latencies(model, shape, repeats=20))  # real_nets.py's study
    finally:
        measure.TOTAL_S, measure.RACE = saved


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    splits = load_dataset(real_nets.limited("fashion-mnist", 10000))
    shape = splits.input_shape
    rows = []
    for network in ("resnet20", "mobilenetv2"):
        torch.manual_seed(0)
        model = create_model(ModelSpec(network, splits.num_classes, *shape[:1], shape[1:]))
        prune_filters_(model, FilterPruneConfig(default=0.35), torch.zeros(1, *shape))
        model.eval()
        finetune = timed(
            lambda: fit(copy.deepcopy(model), splits, TrainConfig(epochs=1, max_batches=100), progress=False)
        )
        seen: dict[str, list[float]] = {"val": [], "test": [], "bounded": [], "unbounded": []}
        before = cpu_sample()
        for _ in range(args.rounds):
            seen["val"].append(timed(lambda: accuracy(model, splits.val)))
            seen["test"].append(timed(lambda: accuracy(model, splits.test)))
            seen["unbounded"].append(latency_s(model, shape, bounded=False))
            seen["bounded"].append(latency_s(model, shape, bounded=True))
        load = other_load(before, cpu_sample())
        median = {k: statistics.median(v) for k, v in seen.items()}
        for way in ("unbounded", "bounded"):
            measuring = median["val"] + median["test"] + median[way]
            trial = finetune + measuring
            rows.append(
                {
                    "network": network,
                    "latency": way,
                    "macs": count_macs(model, shape),
                    "finetune_s": finetune,
                    "val_accuracy_s": median["val"],
                    "test_accuracy_s": median["test"],
                    "latency_s": median[way],
                    "measure_share": measuring / trial,
                    "latency_share": median[way] / trial,
                    "other_load": load,
                }
            )
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in rows[-1].items()}))
    args.results.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
