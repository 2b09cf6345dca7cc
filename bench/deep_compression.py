"""Deep Compression stage by stage on Fashion-MNIST: the paper's recipes for LeNet-5 and
LeNet-300-100, next to the paper's MNIST figures.

    python bench/deep_compression.py [--models lenet5 lenet300] [--out bench/results/deep_compression.json]

Stages, each a real packed file that decodes back:
  pruning     the recipe with weight sharing off: sparse positions + float32 values
  + sharing   the full recipe (k-means + trained quantization), indices at fixed width
  + Huffman   the same model with both index streams Huffman-coded (the recipe's file)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import tempfile
import time
import warnings
from pathlib import Path

import torch

from autoprune.compress import load_recipe, save_packed, weight_layers
from autoprune.data import load_dataset
from autoprune.measure import measure_model
from autoprune.models import ModelSpec
from autoprune.pipeline import compress
from autoprune.train import TrainConfig, train_base

RECIPES = {
    "lenet5": "studies/recipes/deep-compression-lenet5.toml",
    "lenet300": "studies/recipes/deep-compression-lenet300.toml",
}
# Deep Compression (Han et al. 2016), MNIST: compression ratio after each stage, error before -> after
PAPER = {
    "lenet5": {"pruning": 12, "+ sharing": 33, "+ Huffman": 39, "error": "0.80% -> 0.74%"},
    "lenet300": {"pruning": 12, "+ sharing": 32, "+ Huffman": 40, "error": "1.64% -> 1.58%"},
}


def run(model_name: str, epochs: int, out_dir: Path) -> list[dict]:
    splits = load_dataset("fashion-mnist")
    spec = ModelSpec(model_name, 10, 1, (28, 28))
    t = time.perf_counter()
    base = train_base(spec, splits, TrainConfig(epochs=epochs), progress=False)
    base_train_s = time.perf_counter() - t
    base_metrics = measure_model(base.model, splits)
    recipe = load_recipe(RECIPES[model_name])
    rows = [
        {
            "model": model_name,
            "stage": "base",
            "accuracy": base_metrics.accuracy,
            "test_accuracy": base_metrics.test_accuracy,
            "acc_drop": 0.0,
            "bytes": base_metrics.dense_bytes,
            "ratio": 1.0,
            "paper_ratio": 1,
            "seconds": round(base_train_s, 1),
            "cached": base.cached,
        }
    ]

    def row(stage: str, result_metrics: dict, size: int, seconds: float) -> dict:
        return {
            "model": model_name,
            "stage": stage,
            "accuracy": result_metrics["accuracy"],
            "test_accuracy": result_metrics["test_accuracy"],
            "acc_drop": base_metrics.accuracy - result_metrics["accuracy"],
            "test_acc_drop": base_metrics.test_accuracy - result_metrics["test_accuracy"],
            "bytes": size,
            "ratio": base_metrics.dense_bytes / size,
            "paper_ratio": PAPER[model_name][stage],
            "seconds": round(seconds, 1),
        }

    pruning_only = recipe.replace(dataclasses.replace(recipe.quantize, enabled=False))
    t = time.perf_counter()
    a = compress(
        base.model,
        spec,
        splits,
        pruning_only,
        out_dir / f"{model_name}-pruned.apk",
        base_metrics=base_metrics,
        progress=False,
    )
    rows.append(row("pruning", a.metrics, a.metrics["packed_bytes"], time.perf_counter() - t))

    t = time.perf_counter()
    b = compress(
        base.model,
        spec,
        splits,
        recipe,
        out_dir / f"{model_name}-huffman.apk",
        base_metrics=base_metrics,
        progress=False,
    )
    seconds = time.perf_counter() - t
    bits = {name: recipe.quantize.bits_for(name, layer) for name, layer in weight_layers(b.model).items()}
    fixed = save_packed(
        b.model,
        spec,
        out_dir / f"{model_name}-shared.apk",
        bits=bits,
        config=dataclasses.replace(recipe.pack, huffman=False),
    )
    rows.append(row("+ sharing", b.metrics, fixed.packed_bytes, seconds))
    rows.append(row("+ Huffman", b.metrics, b.metrics["packed_bytes"], seconds))
    rows[-1]["layers"] = [dict(r.__dict__, density=r.density) for r in b.report.layers]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--base-epochs", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path("bench/results/deep_compression.json"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            rows += run(name, args.base_epochs, Path(tmp))
            for r in rows:
                if r["model"] == name:
                    print(
                        f"{name:9} {r['stage']:10} val {r['accuracy']:6.2f}  test {r['test_accuracy']:6.2f}  "
                        f"drop {r['acc_drop']:5.2f}  {r['bytes'] / 1024:8.1f} KB  {r['ratio']:5.1f}x  "
                        f"(paper {r['paper_ratio']}x)  {r['seconds']} s",
                        flush=True,
                    )
    machine = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
