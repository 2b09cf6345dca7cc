"""``autoprune train``: train (or load from the cache) a base model and measure it; ``autoprune
init``: a commented study spec for a model and dataset."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from autoprune.cli._common import (
    add_model_data_options,
    add_output_options,
    data_options,
    int_in,
    latency_text,
    output_path,
    positive_float,
    table,
)
from autoprune.workflow import (
    DEFAULT_STORAGE,
    MAX_BATCH,
    MAX_EPOCHS,
    MAX_TRIALS,
    BaseRequest,
    TrainConfig,
    command_prefix,
    init_spec,
    train,
)


def add_train_options(p: argparse.ArgumentParser, *, epochs_help: str = "training epochs") -> None:
    t = p.add_argument_group("base training")
    t.add_argument(
        "--epochs", type=int_in(1, MAX_EPOCHS), default=15, help=f"{epochs_help} (default: %(default)s)"
    )
    t.add_argument(
        "--lr", type=positive_float, default=1e-3, help="peak learning rate (default: %(default)s)"
    )
    t.add_argument("--batch-size", type=int_in(1, MAX_BATCH), default=64, help="(default: %(default)s)")
    t.add_argument("--optimizer", choices=("adam", "sgd"), default="adam", help="(default: %(default)s)")
    t.add_argument("--no-cache", action="store_true", help="train again even when a cached model exists")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train (or load from the cache) a base model and measure it",
        description="Train a base model, measure it (accuracy, params, MACs, bytes, latency), and "
        "cache it so later commands train it at most once. With --checkpoint, training starts from it.",
    )
    add_model_data_options(p)
    add_train_options(p)
    p.add_argument("--out", type=Path, metavar="PATH", help="also write the trained state_dict here")
    add_output_options(p)
    p.set_defaults(run=run, format=format_result)

    i = sub.add_parser(
        "init",
        help="write a commented study spec for your model and dataset",
        description="Write a study spec for a model and dataset (the flags of train), listing the "
        "network's layers: their position, outputs, weights and share of the MACs. The dataset is read "
        "once for its image size and classes; nothing is trained.",
    )
    i.add_argument("spec", type=Path, metavar="SPEC.toml", help="where to write it (never overwritten)")
    add_model_data_options(i)
    add_train_options(i, epochs_help="base training epochs written into [train]")
    i.add_argument("--storage", default=DEFAULT_STORAGE, metavar="URL", help="(default: %(default)s)")
    i.add_argument("--trials", type=int_in(1, MAX_TRIALS), default=30, help="(default: %(default)s)")
    i.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    i.set_defaults(run=run_init, format=format_init, quiet=True, threads=None, device="auto")


def base_request(args: argparse.Namespace) -> BaseRequest:
    """The base model the flags ask for (``train`` and ``compress`` alike)."""
    return BaseRequest(
        model=args.model,
        dataset=args.dataset,
        data_dir=args.data_dir,
        val_fraction=args.val_fraction,
        seed=args.seed,
        options=data_options(args),
        train=TrainConfig(
            epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, optimizer=args.optimizer
        ),
        checkpoint=args.checkpoint,
        use_cache=not args.no_cache,
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    output_path(args.out, "--out")
    return train(base_request(args), out=args.out, threads=args.threads, progress=not args.quiet)


def format_result(r: dict[str, Any]) -> str:
    rows = [
        ("model", f"{r['model']} on {r['dataset']} {tuple(r['input_shape'])}, {r['num_classes']} classes"),
        ("splits", "train {train} / val {val} / test {test}".format(**r["split_sizes"])),
        ("base model", ("loaded from cache " if r["cached"] else "trained, cached at ") + r["cache_path"]),
        ("val accuracy", f"{r['accuracy']:.2f}%"),
        ("test accuracy", f"{r['test_accuracy']:.2f}%"),
        ("params", f"{r['params']:,}"),
        ("MACs", f"{r['macs']:,}"),
        ("dense size", f"{r['dense_bytes'] / 1024:.1f} KB"),
        ("latency", latency_text(r)),
        ("time", f"{r['seconds']:.1f} s"),
    ]
    if r["out"]:
        rows.append(("written", r["out"]))
    return table(rows)


def run_init(args: argparse.Namespace) -> dict[str, Any]:
    output_path(args.spec, "SPEC")
    return init_spec(base_request(args), args.spec, storage=args.storage, trials=args.trials)


def format_init(r: dict[str, Any]) -> str:
    pruned = sum(1 for layer in r["layers"] if layer["filters_pruned"])
    return (
        f"wrote {r['out']}: study {r['study']}, {r['model']} on {r['dataset']}, "
        f"{len(r['layers'])} weight layers ({pruned} convs whose filters the search prunes); "
        f"run it with: {command_prefix()} search {r['out']}"
    )
