"""The compression use case above the transforms: one run of the Deep Compression pipeline on
a copy of a trained network (pruning, fine-tuning, weight sharing, packing, measurement), and
the evaluation of a packed file on its dataset.

The run is a loop over the config's stages in their order (:mod:`autoprune.compress.stage`):
filter pruning -> [low-rank factorisation] -> magnitude pruning -> fine-tuning (masks held)
-> weight sharing and trained quantization -> packed file; then the network decoded from that
file is measured.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from autoprune.compress import (
    CompressConfig,
    Continuation,
    LayerNorms,
    PackReport,
    Run,
    decode_packed,
    fit_recipe,
    load_packed,
    packed_model_spec,
    read_header,
)
from autoprune.data import DataOptions, DataSplits, TaskSplit, load_dataset
from autoprune.errors import AutoPruneError, DataError
from autoprune.measure import Metrics, correct, measure_model
from autoprune.models import ModelSpec, is_user_model
from autoprune.ops.paired import paired_drop
from autoprune.train import EpochCallback

__all__ = [
    "CompressResult",
    "Continuation",
    "PackedEvaluation",
    "compress",
    "dataset_meta",
    "evaluate_packed",
    "check_fits",
    "pruned_shapes",
    "recorded_dataset",
]


def pruned_shapes(
    base: nn.Module, config: CompressConfig, input_shape: tuple[int, ...]
) -> dict[str, tuple[int, ...]]:
    """The tensors' shapes of ``base`` after ``config``'s stages that change the architecture
    (what a continuation of a trial with ``config`` must hold)."""
    model = copy.deepcopy(base).eval()
    run = Run(config, torch.zeros(1, *input_shape))
    for stage, c in config.items():
        if stage.reshapes:
            stage.apply_(model, c, run)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@dataclass(frozen=True)
class CompressResult:
    model: nn.Module  # decoded from the packed file
    metrics: dict[str, Any]  # the stable record names (accuracy, packed_bytes, ...)
    report: PackReport
    norms: list[LayerNorms]


def compress(
    base: nn.Module,
    spec: ModelSpec,
    splits: DataSplits,
    config: CompressConfig,
    out: str | Path,
    *,
    base_metrics: Metrics,
    callbacks: Sequence[EpochCallback] = (),
    seed: int = 0,
    progress: bool = True,
    latency_repeats: int = 50,
    threads: int | None = None,
    latency: bool = True,
    latency_batch: int = 64,
    meta: dict[str, Any] | None = None,
    resume: Continuation | None = None,
    keep: Path | None = None,
) -> CompressResult:
    """Compress a copy of ``base`` with ``config``, write the packed file to ``out``, measure.

    ``callbacks`` see the validation accuracy after every fine-tuning epoch (trained
    quantization epochs continue the count), so a search can report and prune. ``keep``: save
    the fine-tuning's end state there (a :class:`Continuation`); ``resume``: start from such a
    state instead of pruning and fine-tuning afresh: the same filters removed, its weights and
    masks, its optimiser and random streams, and ``config.finetune`` as the rest of the budget.
    """
    model = copy.deepcopy(base).eval()
    config = fit_recipe(config, model)  # what it says by layer position, in this model's layers
    torch.manual_seed(seed)
    run = Run(
        config,
        torch.zeros(1, *splits.input_shape),
        splits=splits,
        seed=seed,
        callbacks=callbacks,
        progress=progress,
        out=Path(out),
        spec=spec,
        meta=meta,
        resume=resume,
        keep=keep,
        teacher=base,
    )
    stages = config.items()
    timings = dict.fromkeys([*(stage.timing for stage, _ in stages), "finetune_s", "eval_s"], 0.0)
    # a line per stage, so that a slow one is seen for what it is
    bar = tqdm(
        total=len(stages) + 1,
        desc="compress",
        unit="stage",
        disable=not progress,
        leave=False,
        bar_format="{desc}: {n}/{total} stages, now {postfix} [{elapsed}]",
    )
    for stage, stage_config in stages:
        bar.set_postfix_str(stage.label)
        clock, trained = time.perf_counter(), run.train_s
        stage.apply_(model, stage_config, run)
        moved = run.train_s - trained  # a stage's training counts as fine-tuning time
        timings[stage.timing] += time.perf_counter() - clock - moved
        timings["finetune_s"] += moved
        bar.update()

    clock = time.perf_counter()
    decoded, _ = load_packed(out, model=spec.name)
    timings["pack_s"] += time.perf_counter() - clock
    bar.set_postfix_str("measuring (accuracy, MACs, latency)")
    clock = time.perf_counter()
    measured = measure_model(
        decoded,
        splits,
        latency_repeats=latency_repeats,
        threads=threads,
        latency=latency,
        latency_batch=latency_batch,
    )
    timings["eval_s"] = time.perf_counter() - clock
    bar.update()
    bar.close()
    report = run.report

    metrics = {
        **measured.to_dict(),
        "acc_drop": base_metrics.accuracy - measured.accuracy,
        "test_acc_drop": base_metrics.test_accuracy - measured.test_accuracy,
        # paired on the validation images; a task's metric has no per-image parts to pair
        "acc_drop_se": None
        if isinstance(val := splits.val, TaskSplit)
        else paired_drop(correct(base, val), correct(decoded, val)).se,
        "base_accuracy": base_metrics.accuracy,
        "base_dense_bytes": base_metrics.dense_bytes,
        "packed_bytes": report.packed_bytes,
        "compression_ratio": base_metrics.dense_bytes / report.packed_bytes,
        "speedup": base_metrics.latency_ms / measured.latency_ms,
        "mac_ratio": base_metrics.macs / max(measured.macs, 1),
        **{k: round(v, 4) for k, v in timings.items()},
    }
    return CompressResult(decoded, metrics, report, run.norms)


@dataclass(frozen=True)
class PackedEvaluation:
    model: nn.Module  # decoded from the file
    header: dict[str, Any]
    splits: DataSplits
    metrics: Metrics


def evaluate_packed(
    path: str | Path,
    *,
    model: str | None = None,
    dataset: str | None = None,
    data_dir: str | Path | None = None,
    val_fraction: float | None = None,
    seed: int | None = None,
    threads: int | None = None,
    latency: bool = True,
    latency_batch: int = 64,
) -> PackedEvaluation:
    """Decode a packed file and measure it on its dataset.

    The file may name a built-in dataset (used unless ``dataset`` is given) and its split, but
    never a folder to read or code to import: ``data_dir`` and ``model`` (a user's factory)
    come from the caller. A dataset whose images or classes differ from the file's network is
    refused before anything is decoded.
    """
    header, payload = read_header(path)  # read once: checked here, decoded below
    stored = header.get("meta", {}).get("dataset")
    stored = stored if isinstance(stored, dict) else {}
    recorded = header["model"]["name"], stored.get("data_dir")
    if model is None and is_user_model(recorded[0]) and data_dir is None and isinstance(recorded[1], str):
        raise AutoPruneError(  # both at once: not one error, then the next
            f"{path} needs --model {recorded[0]} and --data-dir (it was made from {recorded[1]!r}): a packed "
            "file never makes autoprune import code or choose a folder to read"
        )
    spec = packed_model_spec(header, path, model=model)
    splits = recorded_dataset(
        stored,
        path,
        dataset=dataset,
        data_dir=data_dir,
        val_fraction=val_fraction,
        seed=seed,
        image_size=spec.image_size,
    )
    check_fits(path, (spec.in_channels, *spec.image_size), spec.num_classes, splits)
    net = decode_packed(header, payload, path, model=model)
    measured = measure_model(net, splits, threads=threads, latency=latency, latency_batch=latency_batch)
    return PackedEvaluation(net, header, splits, measured)


def check_fits(path: str | Path, shape: tuple[int, ...], classes: int | None, splits: DataSplits) -> None:
    """Refuse a dataset whose images or classes differ from a file's network (``classes`` None:
    the file does not say)."""
    if shape != splits.input_shape or classes not in (None, splits.num_classes):
        raise AutoPruneError(
            f"{path} holds a network for {'x'.join(map(str, shape))} images and {classes} classes; "
            f"dataset {splits.name!r} has {'x'.join(map(str, splits.input_shape))} images and "
            f"{splits.num_classes} classes"
        )


def recorded_dataset(
    stored: dict[str, Any],
    path: str | Path,
    *,
    dataset: str | None,
    data_dir: str | Path | None,
    val_fraction: float | None,
    seed: int | None,
    image_size: tuple[int, ...],
) -> DataSplits:
    """The dataset a file records (``stored``: its name and split; a packed file's header or an
    ONNX file's metadata), unless the caller names another. The file never chooses a folder
    to read: ``data_dir`` is the caller's."""
    name = dataset or stored.get("name")
    if not isinstance(name, str):
        raise AutoPruneError(f"{path} records no dataset; pass --dataset")
    same = name == stored.get("name")
    val_fraction = (
        val_fraction if val_fraction is not None else stored.get("val_fraction", 0.1) if same else 0.1
    )
    seed = seed if seed is not None else stored.get("seed", 0) if same else 0
    if (
        isinstance(val_fraction, bool)
        or not isinstance(val_fraction, (int, float))
        or not isinstance(seed, int)
    ):
        raise AutoPruneError(f"{path} records a split it cannot describe; pass --val-fraction and --seed")
    try:
        # an image folder is read at the network's own input size
        options = DataOptions(image_size=(image_size[0], image_size[1])) if len(image_size) == 2 else None
        return load_dataset(name, data_dir=data_dir, val_fraction=val_fraction, seed=seed, options=options)
    except DataError as e:
        recorded = stored.get("data_dir") if same else None
        if data_dir is None and isinstance(recorded, str) and recorded:
            raise DataError(
                f"{e}; {path} was made from {recorded!r}: pass --data-dir yourself (a file never "
                "chooses a folder to read)"
            ) from None
        raise


def dataset_meta(
    name: str, data_dir: str | Path | None, val_fraction: float, seed: int, splits: DataSplits
) -> dict[str, Any]:
    """The dataset a packed file records (its folder only as a note: it is never read back), and
    what feeding its network needs: the normalisation of raw [0, 1] images and the class names."""
    return {
        "name": name,
        "data_dir": str(data_dir) if data_dir else None,
        "val_fraction": val_fraction,
        "seed": seed,
        "mean": list(splits.mean),
        "std": list(splits.std),
        "classes": list(splits.classes),
    }
