"""The compression use case above the transforms: one run of the Deep Compression pipeline on
a copy of a trained network (pruning, fine-tuning, weight sharing, packing, measurement), and
the evaluation of a packed file on its dataset.


structured pruning -> magnitude pruning -> fine-tuning (masks held) -> weight sharing ->
trained quantization -> packed file -> measurement of the model decoded from that file.
"""

from __future__ import annotations

import copy
import dataclasses
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
    LayerNorms,
    PackReport,
    attach_codebooks_,
    decode_packed,
    detach_codebooks_,
    load_packed,
    mask_holder,
    packed_model_spec,
    prune_filters_,
    prune_magnitude_,
    read_header,
    save_packed,
    share_weights_,
    weight_layers,
)
from autoprune.data import DataOptions, DataSplits, TaskSplit, load_dataset
from autoprune.errors import AutoPruneError, DataError
from autoprune.measure import Metrics, correct, measure_model
from autoprune.models import ModelSpec
from autoprune.ops.paired import paired_drop
from autoprune.train import EpochCallback, TrainConfig, TrainState, fit, fit_resumable


@dataclass(frozen=True)
class Continuation:
    """A run's fine-tuning where it stopped, to continue it (a capped search trial promoted to
    the full budget): the fine-tuned network's weights (its architecture is its base pruned by
    the same config again), the training state, and the batches it had."""

    weights: dict[str, torch.Tensor]
    state: TrainState
    batches: int

    def save(self, path: str | Path) -> None:
        torch.save(
            {
                "format": CONTINUATION_FORMAT,
                "weights": self.weights,
                "state": self.state.to_dict(),
                "batches": self.batches,
            },
            path,
        )

    def mismatch(self, shapes: dict[str, tuple[int, ...]]) -> str:
        """What keeps these weights from the network whose tensors have ``shapes`` ("" if nothing)."""
        mine = {k: tuple(v.shape) for k, v in self.weights.items()}
        if mine.keys() != shapes.keys():
            return f"its tensors are not the network's ({len(mine)} against {len(shapes)})"
        wrong = next((k for k in shapes if mine[k] != shapes[k]), None)
        return f"{wrong} is {mine[wrong]}, the network's {shapes[wrong]}" if wrong else ""

    @staticmethod
    def load(path: str | Path) -> Continuation:
        """A saved continuation (data: read with ``weights_only=True`` and checked)."""
        try:
            d = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many kinds on a file that is not one of ours
            raise AutoPruneError(f"{path} is not a saved fine-tuning state ({type(e).__name__})") from None
        if (
            not isinstance(d, dict)
            or d.get("format") != CONTINUATION_FORMAT
            or not isinstance(d.get("weights"), dict)
        ):
            raise AutoPruneError(f"{path} is not a saved fine-tuning state (expected {CONTINUATION_FORMAT})")
        if not all(isinstance(t, torch.Tensor) for t in d["weights"].values()):
            raise AutoPruneError(f"{path} is not a saved fine-tuning state (a weight is not a tensor)")
        try:
            return Continuation(d["weights"], TrainState.from_dict(d["state"]), int(d["batches"]))
        except (KeyError, TypeError, ValueError) as e:
            raise AutoPruneError(f"{path} is not a saved fine-tuning state ({e})") from None


CONTINUATION_FORMAT = "autoprune-finetune-state/1"


def pruned_shapes(
    base: nn.Module, config: CompressConfig, input_shape: tuple[int, ...]
) -> dict[str, tuple[int, ...]]:
    """The tensors' shapes of ``base`` after ``config``'s filter pruning (what a continuation
    of a trial with ``config`` must hold)."""
    model = copy.deepcopy(base).eval()
    prune_filters_(model, config.structured, torch.zeros(1, *input_shape))
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
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    model = copy.deepcopy(base).eval()
    torch.manual_seed(seed)
    # a line per stage, so that a slow one is seen for what it is
    stages = tqdm(
        total=5,
        desc="compress",
        unit="stage",
        disable=not progress,
        leave=False,
        bar_format="{desc}: {n}/{total} stages, now {postfix} [{elapsed}]",
    )
    stages.set_postfix_str("pruning (dependency graph, filters, weights)")

    ft, u = config.finetune, config.unstructured
    steps = min(u.steps, ft.epochs) if ft.epochs > 0 else 1
    norms = prune_filters_(model, config.structured, torch.zeros(1, *splits.input_shape))
    masks = prune_magnitude_(model, u.at_step(1, steps))
    timings["prune_s"] = time.perf_counter() - clock
    stages.update()
    stages.set_postfix_str("fine-tuning")

    train_time = time.perf_counter()
    offset, state, had = 0, None, resume.batches if resume is not None else 0
    if resume is not None:  # a promotion: the trial's own network, its fine-tuning continued
        try:
            model.load_state_dict(resume.weights)
        except RuntimeError:
            raise AutoPruneError("the saved fine-tuning state does not fit this network as pruned") from None
        masks = {name: layer.weight != 0 for name, layer in weight_layers(model).items()}
        _, state = fit_resumable(
            model,
            splits,
            ft,
            seed=seed,
            callbacks=callbacks,
            after_step=mask_holder(model, masks),
            progress=progress,
            desc="fine-tune (continued)",
            resume=resume.state,
            new_schedule=True,
        )
        offset, had = ft.epochs, had + (state.steps if state else 0)
    for step, epochs in enumerate(_split(ft.epochs, steps) if resume is None else [], start=1):
        if step > 1:  # gradual pruning: the next step on the fine-tuned weights
            masks = prune_magnitude_(model, u.at_step(step, steps))
        shifted = _counted_from(offset, callbacks)
        _, state = fit_resumable(
            model,
            splits,
            dataclasses.replace(ft, epochs=epochs),
            seed=seed + step - 1,
            callbacks=shifted,
            after_step=mask_holder(model, masks),
            progress=progress,
            desc="fine-tune",
        )
        offset, had = offset + epochs, had + (state.steps if state else 0)
    if keep is not None and state is not None:
        Continuation({k: v.detach().clone() for k, v in model.state_dict().items()}, state, had).save(keep)
    timings["finetune_s"] = time.perf_counter() - train_time
    stages.update()
    stages.set_postfix_str("weight sharing (k-means, trained quantization)")

    q = config.quantize
    bits: dict[str, int] = {}
    quant_time = time.perf_counter()
    if q.enabled:
        share_weights_(model, q)
        bits = {name: q.bits_for(name, layer) for name, layer in weight_layers(model).items()}
        if q.epochs > 0:
            attach_codebooks_(model)
            shifted = _counted_from(offset, callbacks)
            t = time.perf_counter()
            try:
                fit(
                    model,
                    splits,
                    TrainConfig(
                        epochs=q.epochs, lr=q.lr, batch_size=ft.batch_size, max_batches=ft.max_batches
                    ),
                    seed=seed,
                    callbacks=shifted,
                    progress=progress,
                    desc="trained quantization",
                )
            finally:
                detach_codebooks_(model)
            timings["finetune_s"] += time.perf_counter() - t
            quant_time += time.perf_counter() - t  # training time is not quantization time
    timings["quantize_s"] = time.perf_counter() - quant_time
    stages.update()
    stages.set_postfix_str("packing (Huffman coding) and decoding")

    pack_time = time.perf_counter()
    report = save_packed(model, spec, out, bits=bits, config=config.pack, meta=meta)
    decoded, _ = load_packed(out, model=spec.name)
    timings["pack_s"] = time.perf_counter() - pack_time
    stages.update()
    stages.set_postfix_str("measuring (accuracy, MACs, latency)")

    eval_time = time.perf_counter()
    measured = measure_model(
        decoded,
        splits,
        latency_repeats=latency_repeats,
        threads=threads,
        latency=latency,
        latency_batch=latency_batch,
    )
    timings["eval_s"] = time.perf_counter() - eval_time
    stages.update()
    stages.close()

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
    return CompressResult(decoded, metrics, report, norms)


def _counted_from(offset: int, callbacks: Sequence[EpochCallback]) -> list[EpochCallback]:
    """The callbacks, told epoch ``offset + e`` for a later stage's epoch ``e``."""

    def shifted(callback: EpochCallback) -> EpochCallback:
        return lambda epoch, acc: callback(offset + epoch, acc)

    return [shifted(cb) for cb in callbacks]


def _split(epochs: int, steps: int) -> list[int]:
    """``epochs`` fine-tuning epochs over ``steps`` pruning steps, the extra ones first."""
    if epochs <= 0:
        return []
    return [epochs // steps + (i < epochs % steps) for i in range(steps)]


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
    spec = packed_model_spec(header, path, model=model)
    stored = header.get("meta", {}).get("dataset")
    stored = stored if isinstance(stored, dict) else {}
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
        size = spec.image_size
        options = DataOptions(image_size=(size[0], size[1])) if len(size) == 2 else None
        splits = load_dataset(name, data_dir=data_dir, val_fraction=val_fraction, seed=seed, options=options)
    except DataError as e:
        recorded = stored.get("data_dir") if same else None
        if data_dir is None and isinstance(recorded, str) and recorded:
            raise DataError(
                f"{e}; {path} was made from {recorded!r}: pass --data-dir yourself (a packed file never "
                "chooses a folder to read)"
            ) from None
        raise
    wanted = (spec.in_channels, *spec.image_size)
    if wanted != splits.input_shape or spec.num_classes != splits.num_classes:
        raise AutoPruneError(
            f"{path} holds a network for {'x'.join(map(str, wanted))} images and {spec.num_classes} classes; "
            f"dataset {name!r} has {'x'.join(map(str, splits.input_shape))} images and "
            f"{splits.num_classes} classes"
        )
    net = decode_packed(header, payload, path, model=model)
    measured = measure_model(net, splits, threads=threads, latency=latency, latency_batch=latency_batch)
    return PackedEvaluation(net, header, splits, measured)


def dataset_meta(name: str, data_dir: str | Path | None, val_fraction: float, seed: int) -> dict[str, Any]:
    """The dataset a packed file records (its folder only as a note: it is never read back)."""
    return {
        "name": name,
        "data_dir": str(data_dir) if data_dir else None,
        "val_fraction": val_fraction,
        "seed": seed,
    }
