"""``autoprune compress`` (one fixed recipe) and ``autoprune eval`` (a packed file)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from autoprune.cli._common import (
    add_data_options,
    add_model_data_options,
    add_output_options,
    grid,
    int_in,
    latency_text,
    output_path,
    table,
)
from autoprune.cli._train import add_train_options, base_request
from autoprune.workflow import CALIBRATION_IMAGES, MAX_BATCH, compress_recipe, evaluate_file


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compress",
        help="run one fixed compression recipe and write the packed file",
        description="Apply one recipe (structured ratios, magnitude thresholds, bits, init, fine-tuning) "
        "to the base model, write the packed file, and report accuracy, size, MACs and latency. "
        "Shipped recipes: studies/recipes/*.toml.",
    )
    p.add_argument("--recipe", type=Path, required=True, metavar="FILE.toml", help="the recipe to apply")
    p.add_argument("--out", type=Path, required=True, metavar="OUT", help="where to write the packed file")
    add_model_data_options(p)
    add_train_options(p, epochs_help="base training epochs when no --checkpoint is given")
    add_latency_options(p)
    add_output_options(p)
    p.set_defaults(run=run_compress, format=format_compress)

    e = sub.add_parser(
        "eval",
        help="measure a packed file (or an exported ONNX file) and report its accuracy and size",
        description="Decode a packed file, measure it on its dataset (the one recorded in the file "
        "unless --dataset is given), and print the per-layer size breakdown; --onnx writes the file "
        "to deploy. An .onnx file written so is measured with ONNX Runtime on raw [0, 1] images.",
    )
    e.add_argument(
        "file",
        type=Path,
        metavar="FILE",
        help="a packed file written by compress or export, or an .onnx file written by --onnx",
    )
    g = add_data_options(e, default=None, reading=False)
    g.add_argument(
        "--model",
        metavar="M",
        help="the model factory a file made from your own network needs (file.py:factory); "
        "a packed file never makes autoprune import code by itself",
    )
    e.set_defaults(seed=None, val_fraction=None)
    e.add_argument(
        "--torchscript", type=Path, metavar="PATH", help="also write the decoded network as TorchScript"
    )
    e.add_argument(
        "--onnx",
        type=Path,
        metavar="PATH",
        help="also write the network to deploy as ONNX: raw [0, 1] images in (the normalisation "
        "folded in), mean, std, class names and the file's metrics in its metadata; batch size free",
    )
    e.add_argument(
        "--int8",
        action="store_true",
        help="make the --onnx file ONNX Runtime's static int8 (QDQ) model, calibrated on "
        f"{CALIBRATION_IMAGES} training images",
    )
    add_latency_options(e)
    add_output_options(e)
    e.set_defaults(run=run_eval, format=format_eval)


def add_latency_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("latency")
    g.add_argument(
        "--no-latency",
        action="store_true",
        help="take no timing (accuracy, size and MACs only): for large networks on a busy machine",
    )
    g.add_argument(
        "--latency-batch",
        type=int_in(1, MAX_BATCH),
        default=64,
        metavar="N",
        help="the second timed batch size, beside batch 1 (default: 64)",
    )


def run_compress(args: argparse.Namespace) -> dict[str, Any]:
    output_path(args.out, "--out")
    return compress_recipe(
        base_request(args),
        args.recipe,
        args.out,
        latency=not args.no_latency,
        latency_batch=args.latency_batch,
        threads=args.threads,
        progress=not args.quiet,
    )


def run_eval(args: argparse.Namespace) -> dict[str, Any]:
    output_path(args.torchscript, "--torchscript")
    output_path(args.onnx, "--onnx")
    return evaluate_file(
        args.file,
        model=args.model,
        dataset=args.dataset,
        data_dir=args.data_dir,
        val_fraction=args.val_fraction,
        seed=args.seed,
        latency=not args.no_latency,
        latency_batch=args.latency_batch,
        threads=args.threads,
        torchscript=args.torchscript,
        onnx=args.onnx,
        int8=args.int8,
    )


def _layer_table(layers: list[dict[str, Any]]) -> str:
    rows = [
        [
            layer["layer"],
            f"{layer['weights']:,}",
            f"{100 * layer['density']:.1f}%",
            layer["shared_values"] or "fp32",
            f"{layer['bits_per_index']:.2f}",
            f"{layer['bits_per_position']:.2f}",
            layer["codebook_bytes"],
            f"{100 * layer['huffman_saving']:.1f}%",
            f"{layer['bytes']:,}",
        ]
        for layer in layers
    ]
    header = [
        "layer",
        "weights",
        "kept",
        "shared",
        "bits/index",
        "bits/position",
        "codebook B",
        "huffman saves",
        "bytes",
    ]
    return grid(header, rows)


def _summary(r: dict[str, Any], base_acc: float | None, base_bytes: int | None) -> list[tuple[str, str]]:
    acc = f"{r['accuracy']:.2f}% val, {r['test_accuracy']:.2f}% test"
    if base_acc is not None:
        acc += f" (base {base_acc:.2f}% val, drop {r['acc_drop']:.2f} points)"
    size = f"{r['packed_bytes'] / 1024:.1f} KB packed"
    if base_bytes:
        size = f"{base_bytes / 1024:.1f} KB dense -> {size} ({r['compression_ratio']:.1f}x)"
    return [
        ("accuracy", acc),
        ("params", f"{r['params']:,} ({r['nonzero_params']:,} non-zero)"),
        ("MACs", f"{r['macs']:,}"),
        ("size", size),
        ("latency", latency_text(r)),
    ]


def _timed(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _ms(value: Any) -> str:
    return f", {value:.3f} ms" if _timed(value) else ""


def format_compress(r: dict[str, Any]) -> str:
    rows = [("recipe", f"{r['recipe']}: {r['model']} on {r['dataset']}")]
    rows += _summary(r, r["base"]["accuracy"], r["base"]["dense_bytes"])
    rows += [
        (
            "base",
            f"{r['base']['params']:,} params, {r['base']['macs']:,} MACs" + _ms(r["base"]["latency_ms"]),
        ),
        (
            "speed-up",
            (f"{r['speedup']:.2f}x measured at batch 1, " if _timed(r["speedup"]) else "not measured, ")
            + f"{r['mac_ratio']:.2f}x fewer MACs",
        ),
        (
            "time",
            f"prune {r['prune_s']:.1f} s, fine-tune {r['finetune_s']:.1f} s, quantize "
            f"{r['quantize_s']:.1f} s, "
            f"pack {r['pack_s']:.2f} s, eval {r['eval_s']:.1f} s",
        ),
        ("written", r["out"]),
    ]
    return table(rows) + "\n\n" + _layer_table(r["layers"])


def format_eval(r: dict[str, Any]) -> str:
    if r.get("format") == "onnx":
        return format_onnx(r)
    made = (
        f"{r['recipe']} of {r['study']}"
        if r.get("study")
        else f"recipe {r['recipe']}"
        if r["recipe"]
        else "unrecorded"
    )
    rows = [("file", f"{r['file']}: {r['model']} on {r['dataset']} ({made})")]
    if r.get("settings"):
        items = [f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["settings"].items()]
        rows += [("settings" if i == 0 else "", ", ".join(items[i : i + 4])) for i in range(0, len(items), 4)]
    rows += _summary(
        r,
        None if r["acc_drop"] is None else r["accuracy"] + r["acc_drop"],
        None if r["compression_ratio"] is None else round(r["compression_ratio"] * r["packed_bytes"]),
    )
    rows += [("torchscript", r["torchscript"])] if r.get("torchscript") else []
    if r.get("onnx"):
        rows.append(("onnx", f"{r['onnx']}{' (int8)' if r['onnx_int8'] else ''}: {deployed_text(r)}"))
    return table(rows) + "\n\n" + _layer_table(r["layers"])


def deployed_text(r: dict[str, Any]) -> str:
    return (
        f"{r['onnx_bytes'] / 1024:.1f} KB, {r['onnx_accuracy']:.2f}% val, "
        f"{r['onnx_test_accuracy']:.2f}% test in ONNX Runtime on raw [0, 1] images"
    )


def format_onnx(r: dict[str, Any]) -> str:
    made = ", ".join(f"{k} {r['metadata'][k]}" for k in ("study", "recipe", "source") if r["metadata"].get(k))
    rows = [
        (
            "file",
            f"{r['file']}: ONNX{' int8' if r['int8'] else ''} on {r['dataset']}"
            + (f" ({made})" if made else ""),
        ),
        (
            "accuracy",
            f"{r['accuracy']:.2f}% val, {r['test_accuracy']:.2f}% test (ONNX Runtime, raw [0, 1] images)",
        ),
        ("size", f"{r['onnx_bytes'] / 1024:.1f} KB on disk"),
        ("latency", latency_text(r)),
    ]
    return table(rows)
