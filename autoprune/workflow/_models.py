"""One model at a time, as the commands ``train``, ``compress`` and ``eval`` do it: a base model
trained (or loaded) and measured, one fixed recipe applied to it, a packed file read back and
measured. Each returns the plain dict the command prints or writes as JSON."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from autoprune.compress import breakdown, load_recipe
from autoprune.compress.export import export_torchscript
from autoprune.compress.recipe import fit_recipe
from autoprune.data import DataOptions, DataSplits, load_dataset
from autoprune.deploy import (
    calibration_images,
    deployment_metadata,
    deployment_onnx,
    int8_onnx,
    onnx_accuracy,
    read_onnx,
)
from autoprune.errors import AutoPruneError
from autoprune.measure import cpu_sample, measure_model, other_load, session_latency
from autoprune.models import ModelSpec, create_model, load_checkpoint
from autoprune.pipeline import (
    PackedEvaluation,
    check_fits,
    compress,
    dataset_meta,
    evaluate_packed,
    recorded_dataset,
)
from autoprune.runtime import ort_session
from autoprune.train import BaseModel, TrainConfig, measured_base, train_base


@dataclass(frozen=True)
class BaseRequest:
    """Which base model, on which data, trained how: the flags ``train`` and ``compress`` share."""

    model: str = "lenet5"  # a built-in name, or your own as file.py:factory
    dataset: str = "digits"
    data_dir: Path | None = None
    val_fraction: float = 0.1
    seed: int = 0
    options: DataOptions | None = None
    train: TrainConfig = TrainConfig()
    checkpoint: Path | None = None
    use_cache: bool = True


def load_data(request: BaseRequest) -> tuple[DataSplits, ModelSpec]:
    """The data splits and the spec of the model to build for them."""
    splits = load_dataset(
        request.dataset,
        data_dir=request.data_dir,
        val_fraction=request.val_fraction,
        seed=request.seed,
        options=request.options,
    )
    c, h, w = splits.input_shape
    return splits, ModelSpec(request.model, splits.num_classes, c, (h, w))


def load_base(
    request: BaseRequest, splits: DataSplits, spec: ModelSpec, *, trained_checkpoint: bool, progress: bool
) -> BaseModel:
    """The trained base: trained now, loaded from the cache, or the checkpoint itself when
    ``trained_checkpoint`` (compress); otherwise a checkpoint is where training starts (train)."""
    if request.checkpoint is not None and trained_checkpoint:
        model = load_checkpoint(create_model(spec), request.checkpoint).eval()
        return BaseModel(model, spec, request.checkpoint, True, ())
    return train_base(
        spec,
        splits,
        request.train,
        seed=request.seed,
        checkpoint=request.checkpoint,
        use_cache=request.use_cache,
        progress=progress,
    )


def train(
    request: BaseRequest, *, out: Path | None = None, threads: int | None = None, progress: bool = True
) -> dict[str, Any]:
    """Train (or load from the cache) the base model, measure it, and write its state_dict to
    ``out`` if given."""
    started = time.perf_counter()
    splits, spec = load_data(request)
    base = load_base(request, splits, spec, trained_checkpoint=False, progress=progress)
    metrics = measure_model(base.model, splits, threads=threads)
    if out is not None:
        torch.save(base.model.state_dict(), out)
    return {
        "model": spec.name,
        "dataset": splits.name,
        "input_shape": list(splits.input_shape),
        "num_classes": splits.num_classes,
        "split_sizes": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)},
        "cached": base.cached,
        "cache_path": str(base.path),
        "out": str(out) if out else None,
        "seconds": round(time.perf_counter() - started, 2),
        **metrics.to_dict(),
    }


def compress_recipe(
    request: BaseRequest,
    recipe: Path,
    out: Path,
    *,
    latency: bool = True,
    latency_batch: int = 64,
    threads: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Apply one recipe file to the base model (the checkpoint itself when one is given), write
    the packed file to ``out`` and report what was measured, per layer too."""
    started = time.perf_counter()
    config = load_recipe(recipe)
    splits, spec = load_data(request)
    config = fit_recipe(config, create_model(spec))  # checked before any training
    base = load_base(request, splits, spec, trained_checkpoint=True, progress=progress)
    measuring = time.perf_counter()
    base_metrics, measured_before = measured_base(
        base, splits, threads=threads, latency=latency, latency_batch=latency_batch
    )
    measuring = time.perf_counter() - measuring
    meta = {
        "dataset": dataset_meta(splits.name, request.data_dir, request.val_fraction, request.seed, splits),
        "recipe": config.name,
        "base": base_metrics.summary(),
    }
    result = compress(
        base.model,
        spec,
        splits,
        config,
        out,
        base_metrics=base_metrics,
        seed=request.seed,
        progress=progress,
        threads=threads,
        meta=meta,
        latency=latency,
        latency_batch=latency_batch,
    )
    return {
        "latency_batch": latency_batch,
        "recipe": config.name,
        "model": spec.name,
        "dataset": splits.name,
        "out": str(out),
        "base": {**base_metrics.to_dict(), "from_cache": measured_before},
        "base_measure_s": round(measuring, 2),
        **result.metrics,
        "layers": [dict(r.__dict__, density=r.density) for r in result.report.layers],
        "norms": [n.to_dict() for n in result.norms],
        "seconds": round(time.perf_counter() - started, 2),
    }


def evaluate_file(
    path: Path,
    *,
    model: str | None = None,
    dataset: str | None = None,
    data_dir: Path | None = None,
    val_fraction: float | None = None,
    seed: int | None = None,
    latency: bool = True,
    latency_batch: int = 64,
    threads: int | None = None,
    torchscript: Path | None = None,
    onnx: Path | None = None,
    int8: bool = False,
) -> dict[str, Any]:
    """Decode a packed file, measure it on its dataset (the one its header records unless
    ``dataset`` is given), break its size down per layer, and export it if asked: ``onnx`` is
    the file to deploy (raw [0, 1] images in, the normalisation and class names inside; int8
    with ``int8``), measured back with ONNX Runtime."""
    if path.suffix == ".onnx":
        if torchscript or onnx or int8:
            raise AutoPruneError(
                f"{path} is already ONNX: --torchscript, --onnx and --int8 export a packed file"
            )
        return evaluate_onnx(
            path,
            dataset=dataset,
            data_dir=data_dir,
            val_fraction=val_fraction,
            seed=seed,
            threads=threads,
            latency=latency,
            latency_batch=latency_batch,
        )
    if int8 and not onnx:
        raise AutoPruneError("--int8 quantizes the ONNX file: pass --onnx PATH with it")
    ev = evaluate_packed(
        path,
        model=model,
        dataset=dataset,
        data_dir=data_dir,
        val_fraction=val_fraction,
        seed=seed,
        threads=threads,
        latency=latency,
        latency_batch=latency_batch,
    )
    metrics, meta = ev.metrics.to_dict(), ev.header.get("meta", {})
    packed = path.stat().st_size
    base = meta.get("base") if isinstance(meta.get("base"), dict) else {}
    dense, base_acc = base.get("dense_bytes"), base.get("accuracy")
    result = {
        "latency_batch": latency_batch,
        "file": str(path),
        "model": ev.header["model"]["name"],
        "dataset": ev.splits.name,
        "recipe": meta.get("recipe") if isinstance(meta.get("recipe"), str) else None,
        "study": meta.get("study") if isinstance(meta.get("study"), str) else None,
        "settings": {k: v for k, v in meta["settings"].items() if isinstance(v, (int, float, str))}
        if isinstance(meta.get("settings"), dict)
        else {},
        **metrics,
        "packed_bytes": packed,
        "compression_ratio": dense / packed if isinstance(dense, (int, float)) and dense > 0 else None,
        "acc_drop": base_acc - metrics["accuracy"] if isinstance(base_acc, (int, float)) else None,
        "layers": [dict(r.__dict__, density=r.density) for r in breakdown(ev.header)],
    }
    if torchscript:
        result["torchscript"] = str(export_torchscript(ev.model, ev.splits.input_shape, torchscript))
    if onnx:
        stored = meta.get("dataset") if isinstance(meta.get("dataset"), dict) else {}
        result |= write_deployment(ev, path, result, stored, onnx, int8=int8)
    return result


def write_deployment(
    ev: PackedEvaluation,
    source: Path,
    measured: dict[str, Any],
    stored: dict[str, Any],
    out: Path,
    *,
    int8: bool,
) -> dict[str, Any]:
    """Write the decoded network as the ONNX file to deploy (int8 with ``int8``), with what was
    measured of it and the split it was measured on (``stored``: the packed file's record) in
    its metadata; return what ONNX Runtime measures of the file written."""
    keys = ("study", "recipe", "settings", "accuracy", "test_accuracy", "packed_bytes")
    info = {k: measured[k] for k in keys if measured[k] is not None}  # a recipe's file has no study
    split = (
        {k: stored.get(k) for k in ("val_fraction", "seed")} if stored.get("name") == ev.splits.name else {}
    )
    metadata = deployment_metadata(ev.splits, source=source.name, **split, **info)
    graph = deployment_onnx(ev.model, ev.splits, metadata)
    if int8:
        graph = int8_onnx(graph, calibration_images(ev.splits))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(graph)
    accuracy = onnx_accuracy(graph, ev.splits)
    return {
        "onnx": str(out),
        "onnx_int8": int8,
        "onnx_bytes": len(graph),
        "onnx_accuracy": accuracy.accuracy,
        "onnx_test_accuracy": accuracy.test_accuracy,
    }


def evaluate_onnx(
    path: Path,
    *,
    dataset: str | None = None,
    data_dir: Path | None = None,
    val_fraction: float | None = None,
    seed: int | None = None,
    threads: int | None = None,
    latency: bool = True,
    latency_batch: int = 64,
) -> dict[str, Any]:
    """An ONNX file measured as it is deployed: ONNX Runtime on raw [0, 1] images of its
    dataset (the one its metadata names unless ``dataset`` is given), its size on disk, its
    batch-1 and batch-``latency_batch`` latency."""
    deployed = read_onnx(path)
    meta = deployed.metadata
    stored: dict[str, Any] = {"name": meta.get("dataset")}
    stored |= {k: meta[k] for k in ("val_fraction", "seed") if k in meta}
    splits = recorded_dataset(
        stored,
        path,
        dataset=dataset,
        data_dir=data_dir,
        val_fraction=val_fraction,
        seed=seed,
        image_size=deployed.input_shape[1:],
    )
    check_fits(path, deployed.input_shape, deployed.outputs, splits)
    used = threads or 1
    measured = onnx_accuracy(deployed.graph, splits, threads=used)
    result: dict[str, Any] = {
        "file": str(path),
        "format": "onnx",
        "int8": "int8" in meta,
        "dataset": splits.name,
        "accuracy": measured.accuracy,
        "test_accuracy": measured.test_accuracy,
        "onnx_bytes": path.stat().st_size,
        "metadata": {k: meta[k] for k in ("study", "recipe", "source", "class_names") if k in meta},
        "latency_batch": latency_batch,
        "latency_ms": None,
        "latency_ms_batch": None,
        "threads": used,
        "backend": "onnxruntime" if latency else "not measured",
        "other_load": None,
    }
    if latency:
        session, before = ort_session(deployed.graph, threads=used), cpu_sample()
        for key, batch in (("latency_ms", 1), ("latency_ms_batch", latency_batch)):
            result[key] = session_latency(
                session, splits.input_shape, batch_size=batch, threads=used
            ).median_ms
        result["other_load"] = other_load(before, cpu_sample())
    return result
