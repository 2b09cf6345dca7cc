"""Real architectures searched side by side with Torch-Pruning (issue 27): ResNet-20 and
MobileNetV2 on Fashion-MNIST, at equal test drop, in MACs, measured latency and file size.

One command per stage; every stage resumes (rows already written are skipped, studies resume):

    python bench/real_nets.py base     --network resnet20
    python bench/real_nets.py uniform  --network resnet20 --ratios 0.2 0.35 0.5 0.65
    python bench/real_nets.py tp       --network resnet20 --targets 1.5 2 3 4
    python bench/real_nets.py search   --network resnet20 --seed 0 --trials 20 [--objective latency]
                                       [--structured ranked]
    python bench/real_nets.py pipeline --network resnet20 --seed 0
    python bench/real_nets.py speed    --network resnet20 --seed 0   # every network timed again, together
    python bench/real_nets.py report

Every method starts from the same base (the spec's, trained once and cached) and is fine-tuned
with the same budget: ``--finetune-epochs`` at ``--lr`` with the same optimiser and cosine
schedule (autoprune's ``fit``), the search's finalized trials included (``[final] epochs``).
Methods:

- ``uniform``: Li et al.'s L1 filter pruning, the same share of every conv's filters;
- ``tp``: Torch-Pruning's own global pruning (``MetaPruner(global_pruning=True)`` with group L1
  magnitude importance), its ratio bisected to reach each MAC reduction target;
- ``search``: autoprune's search of per-layer filter ratios (magnitude pruning and weight
  sharing off: MACs are what filters decide) on (accuracy, MACs) or (accuracy, latency_ms),
  then ``finalize``; with ``--structured ranked``, of one share of all filters ranked across
  the network (the space's ``structured = "ranked"``); ``--criterion group`` ranks them by
  Torch-Pruning's group L1 instead of each filter's own (the space's ``criterion``);
- ``pipeline``: the full Deep Compression pipeline on the search's picks (each finalized network
  within 1 point, then magnitude pruning, weight sharing and Huffman coding at each of
  ``--qualities`` x ``--conv-bits``; every candidate a row): the smallest file whose validation
  drop is within 1 point, the file a user ships; its test drop only reported. ``--norms``: how
  the file holds batch norm: ``stats`` as trained (float32 weight, bias and running statistics),
  ``affine`` as its inference scale and shift (``[pack] affine_norms``), ``fold`` folded into the
  convs before weight sharing (the ``[fold]`` stage); the last two store biases as float16
  (``[pack] float16``): files for inference.

``--distill W``: every method's fine-tuning (the search's trials, its finals and the pipeline
included) also learns from the base's softened outputs; such rows are named ``<method> + distill
W`` and the search's study and label say it.

``--reconstruct N``: every method's layers that lost input channels are refitted to the base's
outputs on N training images before fine-tuning (autoprune's ``reconstruct``; for Torch-Pruning
an ablation: its own choice of filters, autoprune's refit); rows ``<method> + reconstruct N``,
and the search's space, study and label say it.

Rows (``network, method, seed, target, macs_ratio, speedup_b1, speedup_b32, packed_ratio,
val_drop, test_drop, wall_s, other_load`` and the backends' speed-ups) go to ``--results``
(JSON lines). ``--train-limit N`` takes the first N training images (a scaled run; the
dataset is then named ``<data>-first<N>`` and the test split stays whole). ``--val-fraction F``
is the share of those images held out for validation (the search selects on it): a scaled run
of 15,000 images at 0.4 trains on 9,000 and validates on 6,000, as the full run's 54,000/6,000.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
import torch_pruning as tp
from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter
from torch import nn

from autoprune.compress import (
    CompressConfig,
    FilterPruneConfig,
    FoldConfig,
    MagnitudeConfig,
    PackConfig,
    ShareConfig,
    load_packed,
    output_layer,
    prune_filters_,
    save_packed,
)
from autoprune.compress.reconstruct import reconstruct_, step_noting_kept, training_images
from autoprune.compress.structured import CRITERIA
from autoprune.data import DATASETS, RawData, register_dataset
from autoprune.errors import AutoPruneError
from autoprune.measure import (
    Metrics,
    accuracy,
    correct,
    count_macs,
    cpu_sample,
    measure_latency,
    measure_model,
    other_load,
)
from autoprune.ops.paired import paired_drop
from autoprune.pipeline import compress
from autoprune.search import Budget, TrialRecord, parse_storage
from autoprune.search.setup import Inputs, load_inputs
from autoprune.search.spec import StudySpec, spec_from_dict
from autoprune.train import TrainConfig, fit
from autoprune.workflow import artifact_dir, finalize, search

RESULTS = Path("bench/results/real_nets.jsonl")
BUDGETS = (0.5, 1.0)  # test points


# ----------------------------------------------------------------------------- inputs


def limited(data: str, limit: int) -> str:
    """The name of ``data``'s first ``limit`` training images, registered on first use."""
    if not limit:
        return data
    name = f"{data}-first{limit}"
    if name not in DATASETS:
        full = DATASETS.get(data)

        @register_dataset(name)
        def load(data_dir: Any) -> RawData:
            raw = full(data_dir)
            return RawData(raw.x_train[:limit], raw.y_train[:limit], raw.x_test, raw.y_test, raw.classes)

    return name


def at_final_budget(args: argparse.Namespace) -> bool:
    """Whether a search trial fine-tunes with the final budget already: every batch of as many
    epochs."""
    return not args.trial_batches and args.trial_epochs == args.finetune_epochs


def study_spec(args: argparse.Namespace, *, seed: int = 0, objective: str = "macs") -> StudySpec:
    """The spec every method shares: data, base training and fine-tuning budget; its study
    section is the search's."""
    metric = {"macs": "macs", "latency": "latency_ms"}[objective]
    variant = (
        ("-ranked" if args.structured == "ranked" else "")
        + (f"-r{args.round_to}" if args.round_to > 1 else "")
        + (f"-{args.criterion}" if args.criterion != "l1" else "")
        + (f"-kd{args.distill:g}" if args.distill else "")
        + (f"-rc{args.reconstruct}" if args.reconstruct else "")
        + (f"-e{args.trial_epochs}" if args.trial_epochs != 1 else "")
        + (f"-ls{args.ranked_start}" if args.ranked_start else "")
        + (f"-v{args.val_fraction:g}" if args.val_fraction != ROW_DEFAULTS["val_fraction"] else "")
    )
    return spec_from_dict(
        {
            "study": {
                "name": f"{args.network}-{objective}{variant}-s{seed}",
                "storage": f"sqlite:///{args.db}",
                "trials": args.trials,
                "seed": seed,
                "sampler": "tpe",
                "objectives": ["accuracy", metric],
                "max_acc_drop": 1.0,
                "selection": "upper",
                "latency_repeats": args.latency_repeats,
                "warm_start": args.warm_start,
            },
            "model": {"name": args.network},
            "data": {
                "name": limited(args.data, args.train_limit),
                "val_fraction": args.val_fraction,
                "augment": "crop-flip",
            },
            "train": {
                "epochs": args.base_epochs,
                "lr": args.base_lr,
                "optimizer": "sgd",
                "weight_decay": 5e-4,
                "batch_size": 128,
            },
            "space": {
                "structured": args.structured,
                "round_to": args.round_to,
                "criterion": args.criterion,
                "ranked_start": args.ranked_start,
                "reconstruct": args.reconstruct,
                "ratio": [0.0, args.max_ratio],
                "magnitude": "off",
                "quantize": False,
                "finetune_epochs": [args.trial_epochs],
                "lr": [args.lr],
                "max_batches": args.trial_batches,
                "distill": args.distill,
            },
            "final": {
                "k": args.k,
                "epochs": args.finetune_epochs,
                "quant_epochs": 0,
                # a trial at the final budget (no batch cap, the same epochs) is its own final:
                # promoted, it continues by no batches; restarted, it would run its fine-tuning
                # again on the same seeds (on a CPU, bit for bit). Capped trials start over, so
                # that every method's fine-tuning follows the same schedule.
                "promote": at_final_budget(args),
                "slack": args.slack,
            },
        }
    )


def finetune_config(args: argparse.Namespace) -> TrainConfig:
    """The fine-tuning every method gets: the search's finalized trials are fine-tuned so too
    (``[final] epochs`` at the space's learning rate, Adam, cosine, no batch cap)."""
    return TrainConfig(epochs=args.finetune_epochs, lr=args.lr, distill=args.distill)


def finetune(model: nn.Module, inputs: Inputs, args: argparse.Namespace, desc: str) -> None:
    """A comparison method's pruned ``model`` fine-tuned in place as every method is, learning
    from the base too when ``--distill`` says so."""
    fit(
        model,
        inputs.splits,
        finetune_config(args),
        seed=0,
        progress=not args.quiet,
        desc=desc,
        teacher=inputs.base,
    )


# ----------------------------------------------------------------------------- measuring


def measured(
    model: nn.Module, inputs: Inputs, base: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    """A pruned network against the base: MACs, both backends' batch-1 and batch-32 speed-up,
    validation and test drop, and the dense base's bytes over the network's packed file (float32
    weights, the removed filters gone: what a structured method ships; the pipeline's rows
    replace it with their own file's)."""
    m = measure_model(model, inputs.splits, latency=False)
    before = cpu_sample()
    timings = backend_latencies(model, inputs.splits.input_shape, args.latency_repeats)
    load = other_load(before, cpu_sample())
    return {
        "macs_ratio": base["macs"] / max(m.macs, 1),
        "latency_ms": timings,
        **{f"speedup_{k}": base["latency"][k] / v for k, v in timings.items()},
        "speedup_b1": best_speedup(base["latency"], timings, "b1"),
        "speedup_b32": best_speedup(base["latency"], timings, "b32"),
        "val_drop": base["accuracy"] - m.accuracy,
        "test_drop": base["test_accuracy"] - m.test_accuracy,
        "params": m.params,
        "packed_ratio": base["dense_bytes"] / packed_bytes(model, inputs),
        "other_load": load,
    }


def packed_bytes(model: nn.Module, inputs: Inputs) -> int:
    """Bytes of ``model``'s packed file, as it stands (float32 weights unless shared)."""
    with tempfile.TemporaryDirectory() as tmp:
        return save_packed(model, inputs.model_spec, Path(tmp) / "network.apk").packed_bytes


def best_speedup(base: dict[str, float], pruned: dict[str, float], batch: str) -> float:
    """The base's fastest backend against the pruned network's fastest, at one batch size: what
    a user deploying the faster runtime gains (a backend's own ratio can flatter a slow one)."""
    return min(v for k, v in base.items() if k.endswith(batch)) / min(
        v for k, v in pruned.items() if k.endswith(batch)
    )


def backend_latencies(model: nn.Module, shape: tuple[int, ...], repeats: int) -> dict[str, float]:
    """Median ms per backend family (ONNX Runtime; torch, the faster of oneDNN and native) at
    batch 1 and 32."""
    out = {}
    for family, backends in (("ort", ("onnxruntime",)), ("torch", ("onednn", "native"))):
        for batch, n in ((1, repeats), (32, max(5, repeats // 5))):
            out[f"{family}_b{batch}"] = measure_latency(
                model, shape, batch_size=batch, repeats=n, warmup=3, backends=backends
            ).median_ms
    return out


def base_record(inputs: Inputs, args: argparse.Namespace) -> dict[str, Any]:
    m = measure_model(inputs.base, inputs.splits, latency=False)
    return {
        "macs": m.macs,
        "accuracy": m.accuracy,
        "test_accuracy": m.test_accuracy,
        "params": m.params,
        "dense_bytes": m.dense_bytes,
        "latency": backend_latencies(inputs.base, inputs.splits.input_shape, args.latency_repeats),
    }


# ----------------------------------------------------------------------------- rows


def read_rows(path: Path) -> list[dict[str, Any]]:
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    )


ROW_DEFAULTS = {
    "val_fraction": 0.1,
    "norms": "stats",
    "quant_epochs": 1,
}  # what rows written before a key existed were run at


def done(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    return next((r for r in read_rows(path) if matches(r, key)), None)


def matches(row: dict[str, Any], key: dict[str, Any]) -> bool:
    return all(row.get(k, ROW_DEFAULTS.get(k)) == v for k, v in key.items())


def append(path: Path, row: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)


def base_of(args: argparse.Namespace) -> tuple[Inputs, dict[str, Any]]:
    """The shared base, trained once (cached by autoprune) and measured once (a row)."""
    inputs = load_inputs(study_spec(args), progress=not args.quiet)
    key = {"network": args.network, "method": "base", **data_key(args)}
    row = done(args.results, key)
    if row is None:
        started = time.perf_counter()
        row = {**key, **base_record(inputs, args), "wall_s": time.perf_counter() - started}
        append(args.results, row)
    else:
        same_base(inputs, row, args.results)
    return inputs, row


def same_base(inputs: Inputs, row: dict[str, Any], results: Path) -> None:
    """Refuses to add rows to ``results`` when the cached base is not the one its base row
    measured: every drop is taken against that row, and a base retrained on another machine
    can differ (one ResNet-20 spec gave 93.85 and 93.63 test on two machines)."""
    val, test = accuracy(inputs.base, inputs.splits.val), accuracy(inputs.base, inputs.splits.test)
    if (val, test) != (row["accuracy"], row["test_accuracy"]):
        raise SystemExit(
            f"{results} was measured against a base at {row['accuracy']:.2f} val / "
            f"{row['test_accuracy']:.2f} test, but the cached base reads {val:.2f} / {test:.2f}: "
            "write this base's rows to another --results"
        )


# ----------------------------------------------------------------------------- methods


def run_uniform(args: argparse.Namespace) -> None:
    inputs, base = base_of(args)
    example = torch.zeros(1, *inputs.splits.input_shape)
    for ratio in args.ratios:
        key = _key(args, variant("uniform", args), ratio)
        if done(args.results, key):
            continue
        started = time.perf_counter()
        model = copy.deepcopy(inputs.base)
        calibration = training_images(inputs.splits, args.reconstruct) if args.reconstruct else None
        prune_filters_(model, FilterPruneConfig(default=ratio), example, calibration=calibration)
        finetune(model, inputs, args, f"uniform {ratio}")
        append(
            args.results,
            {**key, **measured(model, inputs, base, args), "wall_s": time.perf_counter() - started},
        )


def tp_pruned(
    base: nn.Module, example: torch.Tensor, ratio: float, calibration: torch.Tensor | None = None
) -> nn.Module:
    """A copy of ``base`` pruned by Torch-Pruning's global pruning at ``ratio`` (group L1); with
    ``calibration`` images, autoprune's least-squares refit after it (an ablation: what the
    refit alone gives Torch-Pruning's choice of filters)."""
    model = copy.deepcopy(base).eval()
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=1),
        pruning_ratio=ratio,
        global_pruning=True,
        ignored_layers=[model.get_submodule(output_layer(model))],
    )
    if calibration is None:
        pruner.step()
    else:
        reconstruct_(model, base, step_noting_kept(pruner, model), calibration)
    return model


def tp_at(
    base: nn.Module, shape: tuple[int, ...], target: float, calibration: torch.Tensor | None = None
) -> tuple[nn.Module, float]:
    """Torch-Pruning's global pruning at the ratio whose MAC reduction is closest to ``target``
    (bisected: the reduction grows with the ratio)."""
    example = torch.zeros(1, *shape)
    macs = count_macs(base, shape)
    low, high = 0.0, 0.95
    for _ in range(12):
        mid = (low + high) / 2
        reached = macs / max(count_macs(tp_pruned(base, example, mid), shape), 1)
        low, high = (mid, high) if reached < target else (low, mid)
    ratio = (low + high) / 2
    return tp_pruned(base, example, ratio, calibration), ratio


def run_tp(args: argparse.Namespace) -> None:
    inputs, base = base_of(args)
    for target in args.targets:
        key = _key(args, variant("torch-pruning", args), target)
        if done(args.results, key):
            continue
        started = time.perf_counter()
        calibration = training_images(inputs.splits, args.reconstruct) if args.reconstruct else None
        model, ratio = tp_at(inputs.base, inputs.splits.input_shape, target, calibration)
        finetune(model, inputs, args, f"tp {target}x")
        row = {**key, **measured(model, inputs, base, args), "tp_ratio": ratio}
        append(args.results, {**row, "wall_s": time.perf_counter() - started})


def run_search(args: argparse.Namespace) -> None:
    inputs, base = base_of(args)
    spec = study_spec(args, seed=args.seed, objective=args.objective)
    info = parse_storage(spec.study.storage)
    method = f"search ({method_label(args)})"
    started = time.perf_counter()
    search(spec, info, spec_dir=Path.cwd(), progress=not args.quiet)
    searched = time.perf_counter()
    try:  # resumes: a trial finalized already is not run again, so a wider -k/--slack adds to it
        finalize(spec, info, progress=not args.quiet)
    except AutoPruneError as e:  # no trial within the budget and its slack: a result, said so
        key = {**_key(args, method, None), "trial": None}
        if not done(args.results, key):
            append(args.results, {**key, "note": str(e)})
    timing = {"search_s": searched - started, "final_s": time.perf_counter() - searched}
    study = optuna.load_study(study_name=spec.study.name, storage=spec.study.storage)
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if t.user_attrs.get("source") != "final" or t.user_attrs.get("recipe_name"):
            continue
        key = {**_key(args, method, None), "trial": t.number}
        if done(args.results, key):
            continue
        model = finalized_model(t, spec, inputs, args)
        row = {
            **key,
            **measured(model, inputs, base, args),
            "val_drop_judged": spec.study.budget.drop(_record(t)),
        }
        row["warm_start"] = args.warm_start
        append(args.results, {**row, "wall_s": t.user_attrs.get("trial_s"), **timing})


def pipeline_path(spec: StudySpec, row: dict[str, Any], db: Path) -> Path:
    """The packed file of a pipeline candidate's ``row`` (its pick, quality, bits, norms and
    trained quantization epochs)."""
    norms, epochs = (row.get(k, ROW_DEFAULTS[k]) for k in ("norms", "quant_epochs"))
    suffix = ("" if norms == "stats" else f"-{norms}") + ("" if epochs == 1 else f"-tq{epochs}")
    return (
        db.parent
        / f"{spec.study.name}-pipeline-t{row['pick']}-q{row['quality']:g}-b{row['conv_bits']}{suffix}.apk"
    )


def finalized_model(
    t: optuna.trial.FrozenTrial, spec: StudySpec, inputs: Inputs, args: argparse.Namespace
) -> nn.Module:
    """A finalized trial's network, decoded from its packed file (float32 weights: the space
    shares none), so every method is measured the same way, here."""
    path = artifact_dir(parse_storage(spec.study.storage), "") / t.user_attrs["artifact_id"]
    return load_packed(path, model=args.network)[0]


def pick_budget(spec: StudySpec, args: argparse.Namespace) -> Budget:
    """The study's 1-point budget as ``--pick`` judges it: its upper bound, or the validation
    drop itself (said in the rows)."""
    budget = spec.study.budget
    return dataclasses.replace(budget, z=0.0) if args.pick == "point" else budget


def run_pipeline(args: argparse.Namespace) -> None:
    """The full pipeline on the search's picks, its settings chosen on validation: every
    finalized search trial within 1 point (as ``--pick`` judges it), decoded from its file, then
    magnitude pruning at each ``--qualities`` (fine-tuned for ``--finetune-epochs`` after it, not
    at all at quality 0), weight sharing at each ``--conv-bits`` (``--quant-epochs`` of trained
    quantization) and Huffman coding. Every candidate is a row of its own; the pipeline's row is
    the smallest file among those whose validation drop, judged the same way, is within 1 point."""
    inputs, base = base_of(args)
    spec = study_spec(args, seed=args.seed, objective=args.objective)
    label = method_label(args)
    grid = {
        "qualities": args.qualities,
        "conv_bits_tried": args.conv_bits,
        "norms": args.norms,
        "quant_epochs": args.quant_epochs,
    }  # another row
    key = {**_key(args, f"pipeline ({label})", None), "pick_rule": args.pick, **grid}
    if done(args.results, key):
        return
    study = optuna.load_study(study_name=spec.study.name, storage=spec.study.storage)
    budget = pick_budget(spec, args)
    picks = [
        t
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if t.user_attrs.get("source") == "final"
        and not t.user_attrs.get("recipe_name")
        and budget.within(_record(t))
    ]
    reference = (
        measure_model(inputs.base, inputs.splits, latency=False),
        correct(inputs.base, inputs.splits.val),
    )
    candidates = []
    for t in picks:
        for quality in args.qualities:
            for bits in args.conv_bits:
                candidate = {
                    **_key(args, f"pipeline candidate ({label})", None),
                    "pick": t.number,
                    "quality": quality,
                    "conv_bits": bits,
                    "norms": args.norms,
                    "quant_epochs": args.quant_epochs,
                }
                row = done(args.results, candidate)
                if row is None:
                    row = {
                        **candidate,
                        **pipeline_candidate(t, candidate, spec, inputs, base, reference, args),
                    }
                    append(args.results, row)
                candidates.append(row)
    ok = [r for r in candidates if budget.within(r)]
    if not ok:
        note = f"none of {len(candidates)} candidates on {len(picks)} picks within 1 point"
        append(args.results, {**key, "pick": None, "note": note})
        return
    best = min(ok, key=lambda r: r["packed_bytes"])
    append(args.results, {**best, **key, "candidates": len(candidates)})


def pipeline_candidate(
    t: optuna.trial.FrozenTrial,
    candidate: dict[str, Any],
    spec: StudySpec,
    inputs: Inputs,
    base: dict[str, Any],
    reference: tuple[Metrics, np.ndarray],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One candidate: the pick's network (its filters removed, refitted and fine-tuned as the
    search finalized it), magnitude-pruned at the ``candidate``'s quality, shared at its bits
    (its batch norms packed as ``norms`` says) and packed; its validation drop paired against the base's
    (``reference``: its metrics and which validation images it gets right), as the search's are."""
    base_metrics, base_right = reference
    quality = candidate["quality"]
    norms = {
        "stats": [],
        "affine": [PackConfig(float16=True, affine_norms=True)],
        "fold": [FoldConfig(), PackConfig(float16=True)],
    }[candidate["norms"]]
    config = CompressConfig.of(
        MagnitudeConfig(mode="quality", default=quality),
        dataclasses.replace(finetune_config(args), epochs=args.finetune_epochs if quality else 0),
        ShareConfig(
            conv_bits=candidate["conv_bits"], fc_bits=5, epochs=candidate["quant_epochs"], lr=args.lr / 10
        ),
        *norms,
        name="pipeline",
    )
    started = time.perf_counter()
    result = compress(
        finalized_model(t, spec, inputs, args),
        inputs.model_spec,
        inputs.splits,
        config,
        pipeline_path(spec, candidate, args.db),
        base_metrics=base_metrics,
        progress=not args.quiet,
        latency=False,
    )
    row = measured(result.model, inputs, base, args)
    return {
        **row,
        "acc_drop": row["val_drop"],  # the names the study's budget reads
        "acc_drop_se": paired_drop(base_right, correct(result.model, inputs.splits.val)).se,
        "packed_bytes": result.metrics["packed_bytes"],
        "packed_ratio": base["dense_bytes"] / result.metrics["packed_bytes"],
        "wall_s": time.perf_counter() - started,
    }


# ----------------------------------------------------------------------------- report


def _record(t: optuna.trial.FrozenTrial) -> TrialRecord:
    record = TrialRecord.from_attrs(t.user_attrs)
    assert record is not None, f"trial {t.number} has no record"
    return record


def method_label(args: argparse.Namespace) -> str:
    """The search's objective, its space when not per-layer ratios, and its trials' fine-tuning
    when not 1 epoch."""
    space = [args.structured] if args.structured != "per_layer" else []
    space += [f"round_to {args.round_to}"] if args.round_to > 1 else []
    space += [f"criterion {args.criterion}"] if args.criterion != "l1" else []
    space += [f"distill {args.distill:g}"] if args.distill else []
    space += [f"reconstruct {args.reconstruct}"] if args.reconstruct else []
    space += [f"trial epochs {args.trial_epochs}"] if args.trial_epochs != 1 else []
    space += [f"ranked start {args.ranked_start}"] if args.ranked_start else []
    return ", ".join([args.objective, *space])


def variant(method: str, args: argparse.Namespace) -> str:
    """A comparison method's name, with its refit after pruning and its fine-tuning's
    distillation when on."""
    method += f" + reconstruct {args.reconstruct}" if args.reconstruct else ""
    return method + (f" + distill {args.distill:g}" if args.distill else "")


def _key(args: argparse.Namespace, method: str, target: float | None) -> dict[str, Any]:
    return {
        "network": args.network,
        "method": method,
        "seed": args.seed if method.startswith(("search", "pipeline")) else 0,
        "target": target,
        **data_key(args),
        "finetune_epochs": args.finetune_epochs,
    }


def data_key(args: argparse.Namespace) -> dict[str, Any]:
    """What every row shares with its base: the data and its split."""
    return {"data": args.data, "train_limit": args.train_limit, "val_fraction": args.val_fraction}


def best_within(rows: list[dict[str, Any]], budget: float) -> float | None:
    """The largest MAC reduction among rows within ``budget`` test points."""
    ok = [r["macs_ratio"] for r in rows if r.get("test_drop") is not None and r["test_drop"] <= budget]
    return max(ok, default=None)


def run_speed(args: argparse.Namespace) -> None:
    """Every uniform and Torch-Pruning row's network, and this search's finalized trials and
    pipeline, timed again in one sitting beside the base: ``--rounds`` interleaved rounds, each
    backend's median over them (a speed-up against a base timed in another sitting moves with
    the machine: the same base read 0.35 and 0.57 ms in two). Weights do not change the time,
    so uniform and Torch-Pruning networks are pruned again without fine-tuning (the same widths)."""
    inputs, base = base_of(args)
    shape, example = inputs.splits.input_shape, torch.zeros(1, *inputs.splits.input_shape)
    models: dict[str, tuple[dict[str, Any], nn.Module]] = {
        "base": ({"method": "base"}, inputs.base),
        "base again": ({"method": "base"}, copy.deepcopy(inputs.base)),  # the timing's own noise
    }
    spec = study_spec(args, seed=args.seed, objective=args.objective)
    label = method_label(args)
    study = None  # loaded once, at the first search row
    for r in read_rows(args.results):
        if r["network"] != args.network or not matches(r, data_key(args)):
            continue
        if r["method"] == "uniform":
            model = copy.deepcopy(inputs.base)
            prune_filters_(model, FilterPruneConfig(default=r["target"]), example)
            models[f"uniform {r['target']}"] = (r, model)
        elif r["method"] == "torch-pruning":
            models[f"torch-pruning {r['target']}x"] = (r, tp_pruned(inputs.base, example, r["tp_ratio"]))
        elif r.get("seed") != args.seed or not r.get("macs_ratio"):
            continue
        elif r["method"] == f"search ({label})":
            study = study or optuna.load_study(study_name=spec.study.name, storage=spec.study.storage)
            trial = study.trials[r["trial"]]
            models[f"search trial {r['trial']}"] = (r, finalized_model(trial, spec, inputs, args))
        elif r["method"] == f"pipeline ({label})":
            path = pipeline_path(spec, r, args.db)
            norms, epochs = (r.get(k, ROW_DEFAULTS[k]) for k in ("norms", "quant_epochs"))
            what = f"pipeline on trial {r['pick']}, quality {r['quality']:g}, {r['conv_bits']} bits, {norms}"
            what += f", {epochs} epochs of trained quantization" if epochs != 1 else ""
            models[what] = (r, load_packed(path, model=args.network)[0])
    before = cpu_sample()
    times: dict[str, list[dict[str, float]]] = {k: [] for k in models}
    for _ in range(args.rounds):
        for name, (_, model) in models.items():
            times[name].append(backend_latencies(model, shape, args.latency_repeats))
    load = other_load(before, cpu_sample())
    medians = {k: {b: statistics.median(t[b] for t in runs) for b in runs[0]} for k, runs in times.items()}
    out = args.results.with_suffix(".speed.json")
    stored = json.loads(out.read_text()) if out.exists() else {}
    stored[f"{args.network} {label} seed {args.seed}"] = {
        "other_load": load,
        "rounds": args.rounds,
        "rows": [
            {
                "what": name,
                "method": row["method"],
                "macs_ratio": row.get("macs_ratio", 1.0),
                "test_drop": row.get("test_drop", 0.0),
                "latency_ms": medians[name],
                "speedup_b1": best_speedup(medians["base"], medians[name], "b1"),
                "speedup_b32": best_speedup(medians["base"], medians[name], "b32"),
            }
            for name, (row, _) in models.items()
        ],
    }
    out.write_text(json.dumps(stored, indent=1) + "\n")
    for r in stored[f"{args.network} {label} seed {args.seed}"]["rows"]:
        print(
            json.dumps(
                {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items() if k != "latency_ms"}
            )
        )


def run_report(args: argparse.Namespace) -> None:
    rows = [  # a pipeline's candidates are its choice's working, not a method
        r
        for r in read_rows(args.results)
        if r["method"] != "base" and r.get("macs_ratio") and not r["method"].startswith("pipeline candidate")
    ]
    summary = []
    for network in sorted({r["network"] for r in rows}):
        for method in sorted({r["method"] for r in rows if r["network"] == network}):
            mine = [r for r in rows if r["network"] == network and r["method"] == method]
            seeds = sorted({r["seed"] for r in mine})
            line: dict[str, Any] = {"network": network, "method": method, "seeds": len(seeds)}
            for budget in BUDGETS:  # the median over seeds of each seed's best within the budget; a
                # seed with none there counts as the base itself (1x), not as a seed left out
                per_seed = [best_within([r for r in mine if r["seed"] == s], budget) or 1.0 for s in seeds]
                line[f"macs_ratio_within_{budget}"] = statistics.median(per_seed)
            summary.append(line)
    out = args.results.with_suffix(".summary.json")
    out.write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    figure(rows, args.results.with_suffix(".png"))


def figure(rows: list[dict[str, Any]], path: Path) -> None:
    networks = sorted({r["network"] for r in rows})
    if not networks:
        return
    fig = Figure(figsize=(6 * len(networks), 4.5))
    axes = fig.subplots(1, len(networks), squeeze=False)[0]
    for ax, network in zip(axes, networks):
        for method in sorted({r["method"] for r in rows if r["network"] == network}):
            mine = sorted(
                (r for r in rows if r["network"] == network and r["method"] == method),
                key=lambda r: r["macs_ratio"],
            )
            ax.plot(
                [r["macs_ratio"] for r in mine],
                [r["test_drop"] for r in mine],
                "o-"
                if method.startswith(("uniform", "torch-pruning"))
                else ("s" if method.startswith("pipeline") else "o"),
                label=method,
            )
        for budget in BUDGETS:
            ax.axhline(budget, linestyle="--", color="grey", linewidth=0.8)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(ScalarFormatter())
        ax.set_xlabel("MAC reduction (x, log)")
        ax.set_ylabel("test drop (points)")
        ax.set_title(network)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("stage", choices=["base", "uniform", "tp", "search", "pipeline", "speed", "report"])
    parser.add_argument("--network", default="resnet20")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--train-limit", type=int, default=0, help="first N training images (0: all)")
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=ROW_DEFAULTS["val_fraction"],
        help="share of the training images held out for validation",
    )
    parser.add_argument("--base-epochs", type=int, default=30)
    parser.add_argument("--base-lr", type=float, default=0.1)
    parser.add_argument("--finetune-epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--distill",
        type=float,
        default=0.0,
        help="every method's fine-tuning distills the base at this weight (0: labels only)",
    )
    parser.add_argument(
        "--reconstruct",
        type=int,
        default=0,
        help="every method's layers after removed filters are refitted to the base's outputs on "
        "this many training images (0: not refitted)",
    )
    parser.add_argument("--trial-epochs", type=int, default=1, help="fine-tuning epochs of a search trial")
    parser.add_argument("--trial-batches", type=int, default=100, help="batch cap per trial epoch (0: none)")
    parser.add_argument("--max-ratio", type=float, default=0.8)
    parser.add_argument(
        "--round-to", type=int, default=1, help="the search's filters kept in multiples of this"
    )
    parser.add_argument(
        "--criterion",
        choices=CRITERIA,
        default="l1",
        help="which filters the search removes: each filter's own norm, or Torch-Pruning's group "
        "L1 (every weight the channel's removal takes)",
    )
    parser.add_argument(
        "--structured",
        choices=["per_layer", "ranked"],
        default="per_layer",
        help="the search's filter space: a ratio per conv, or one share ranked across the network",
    )
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.35, 0.5, 0.65])
    parser.add_argument("--targets", type=float, nargs="+", default=[1.5, 2.0, 3.0, 4.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("-k", type=int, default=3, help="search trials to finalize")
    parser.add_argument(
        "--slack", type=float, default=2.0, help="finalize the best within 1, ..., 1 + slack points"
    )
    parser.add_argument(
        "--warm-start",
        type=float,
        nargs="*",
        default=[],
        help="the search's first trials: sensitivity proposals at these multiples of the 1-point budget",
    )
    parser.add_argument(
        "--ranked-start",
        type=int,
        default=0,
        help="a ranked search's first trials at shares evenly spaced in MAC reduction (space.ranked_start)",
    )
    parser.add_argument("--objective", choices=["macs", "latency"], default="macs")
    parser.add_argument(
        "--pick",
        choices=["judged", "point"],
        default="judged",
        help="pipeline: the search's picks and the pipeline's candidates within 1 point as the study "
        "judges it (the drop's upper bound) or on the validation drop itself",
    )
    parser.add_argument(
        "--qualities",
        type=float,
        nargs="+",
        default=[0.0, 0.5, 0.75, 1.0],
        help="pipeline: magnitude thresholds / std to try (0: no magnitude pruning)",
    )
    parser.add_argument(
        "--conv-bits", type=int, nargs="+", default=[4, 5, 6], help="pipeline: conv sharing widths to try"
    )
    parser.add_argument(
        "--quant-epochs",
        type=int,
        default=1,
        help="pipeline: epochs of trained quantization (fine-tuning the shared values)",
    )
    parser.add_argument(
        "--norms",
        choices=["stats", "affine", "fold"],
        default="stats",
        help="pipeline: batch norm as trained, as its scale and shift, or folded into the convs "
        "(the last two with float16 biases: files for inference)",
    )
    parser.add_argument("--latency-repeats", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="speed: interleaved rounds of timing")
    parser.add_argument("--db", type=Path, default=Path("bench/results/real_nets.db"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("-q", "--quiet", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = main_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    np.seterr(all="ignore")
    {
        "base": base_of,
        "uniform": run_uniform,
        "tp": run_tp,
        "search": run_search,
        "pipeline": run_pipeline,
        "speed": run_speed,
        "report": run_report,
    }[args.stage](args)


if __name__ == "__main__":
    main()
