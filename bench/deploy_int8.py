"""The file a user deploys, float32 against int8 (issue 28, item 4): a compressed network exported
as ONNX with its normalisation folded in, and as ONNX Runtime's static int8 (QDQ) model
calibrated on 256 training images; each measured in ONNX Runtime on raw [0, 1] images
(validation and test accuracy), on disk (bytes), and in time (batch 1 and 32, one thread,
float and int8 timed in alternating rounds, the median of the rounds' medians).

    python bench/deploy_int8.py --network lenet5                        # Fashion-MNIST, deep-compression
    python bench/deploy_int8.py --network resnet20 --train-limit 10000  # real_nets' base, uniform L1 0.35

The LeNet-5 base is studies/fashion-lenet5.toml's (trained once, cached); ResNet-20's is
bench/real_nets.py's (the same flags give the same cached base). Rows go to --results.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from autoprune.compress import CompressConfig, FilterPruneConfig, load_recipe
from autoprune.deploy import (
    calibration_images,
    deployment_metadata,
    deployment_onnx,
    int8_onnx,
    onnx_accuracy,
)
from autoprune.measure import cpu_sample, measure_model, other_load, session_latency
from autoprune.pipeline import compress
from autoprune.runtime import ort_session
from autoprune.search.setup import load_inputs
from autoprune.search.spec import load_spec
from autoprune.train import TrainConfig

sys.path.insert(0, str(Path(__file__).parent))
import real_nets  # noqa: E402  # the ResNet-20 base and its flags

RESULTS = Path("bench/results/deploy_int8.json")


def inputs_and_recipe(args: argparse.Namespace) -> tuple[Any, CompressConfig]:
    if args.network == "lenet5":
        spec = load_spec(Path("studies/fashion-lenet5.toml"))
        return load_inputs(spec, progress=True), load_recipe("studies/recipes/deep-compression.toml")
    flags = real_nets.main_parser().parse_args(
        ["base", "--network", args.network, "--train-limit", str(args.train_limit), "--base-epochs", "15"]
    )
    recipe = CompressConfig.of(
        FilterPruneConfig(default=args.ratio),
        TrainConfig(epochs=args.finetune_epochs),
        name=f"uniform-{args.ratio}",
    )
    return load_inputs(real_nets.study_spec(flags), progress=True), recipe


def timings(graphs: dict[str, bytes], shape: tuple[int, ...], rounds: int) -> dict[str, dict[str, float]]:
    """Median ms per graph and batch size: ``rounds`` alternating rounds, the median of their medians."""
    sessions = {k: ort_session(g, threads=1) for k, g in graphs.items()}
    seen: dict[str, dict[str, list[float]]] = {k: {"b1": [], "b32": []} for k in graphs}
    for _ in range(rounds):
        for k, session in sessions.items():
            for batch in (1, 32):
                latency = session_latency(session, shape, batch_size=batch, repeats=100, warmup=10)
                seen[k][f"b{batch}"].append(latency.median_ms)
    return {k: {b: statistics.median(v) for b, v in per.items()} for k, per in seen.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--network", choices=["lenet5", "resnet20"], default="lenet5")
    parser.add_argument("--train-limit", type=int, default=10000, help="resnet20: real_nets' scaled base")
    parser.add_argument("--ratio", type=float, default=0.35, help="resnet20: uniform L1 filter ratio")
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=Path("bench/results/deploy"))
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    inputs, recipe = inputs_and_recipe(args)
    splits = inputs.splits
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    base = measure_model(inputs.base, splits, latency=False)
    result = compress(
        inputs.base,
        inputs.model_spec,
        splits,
        recipe,
        args.out / f"{args.network}.apk",
        base_metrics=base,
        latency=False,
    )
    compress_s = time.perf_counter() - started
    graphs = {
        "float32": deployment_onnx(result.model, splits, deployment_metadata(splits, recipe=recipe.name))
    }
    started = time.perf_counter()
    graphs["int8"] = int8_onnx(graphs["float32"], calibration_images(splits))
    int8_s = time.perf_counter() - started
    before = cpu_sample()
    times = timings(graphs, splits.input_shape, args.rounds)
    load = other_load(before, cpu_sample())
    row: dict[str, Any] = {
        "network": args.network,
        "dataset": splits.name,
        "recipe": recipe.name,
        "base_accuracy": base.accuracy,
        "base_test_accuracy": base.test_accuracy,
        "torch_accuracy": result.metrics["accuracy"],
        "torch_test_accuracy": result.metrics["test_accuracy"],
        "packed_bytes": result.metrics["packed_bytes"],
        "base_dense_bytes": result.metrics["base_dense_bytes"],
        "compress_s": compress_s,
        "int8_s": int8_s,
        "other_load": load,
    }
    for kind, graph in graphs.items():
        (args.out / f"{args.network}-{kind}.onnx").write_bytes(graph)
        measured = onnx_accuracy(graph, splits)
        row[kind] = {
            "bytes": len(graph),
            "accuracy": measured.accuracy,
            "test_accuracy": measured.test_accuracy,
            "ms_b1": times[kind]["b1"],
            "ms_b32": times[kind]["b32"],
        }
    rows = [r for r in _read(args.results) if r["network"] != args.network] + [row]
    args.results.write_text(json.dumps(rows, indent=1) + "\n")
    print(json.dumps(row, indent=1))


def _read(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text()) if path.exists() else []


if __name__ == "__main__":
    main()
