"""What every command shares: one-line usage errors, argument types, common options."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, overload

from autoprune.errors import AutoPruneError
from autoprune.workflow import (
    BUSY,
    DataOptions,
    DeviceError,
    bad_study_name,
    list_datasets,
    list_models,
    resolve_device,
)

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (plus a pointer to --help), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def int_in(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer in ``low..high`` (every count a flag takes is bounded)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer in {low}..{high}, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected an integer in {low}..{high}, got {value}")
        return value

    parse.__name__ = "integer"  # argparse names the type in its messages
    return parse


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def multiples(text: str) -> list[float]:
    """Budget multiples, such as 1,2,4,8,16: up to 64 numbers in (0, 1000]."""
    try:
        values = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        values = []
    if not values or len(values) > 64 or not all(0 < v <= 1000 for v in values):
        raise argparse.ArgumentTypeError(
            f"expected up to 64 multiples in (0, 1000], such as 1,2,4,8,16, got {text!r}"
        )
    return values


def port(text: str) -> int:
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port in 1..65535, got {value}")
    return value


def study_name(text: str) -> str:
    problem = bad_study_name(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


@overload
def output_path(path: Path, flag: str) -> Path: ...
@overload
def output_path(path: None, flag: str) -> None: ...
def output_path(path: Path | None, flag: str) -> Path | None:
    """Check, before any work, that a file can be written at ``path`` (its folder exists and is
    writable, and it is not itself a folder). No folder is created for it."""
    if path is None:
        return None
    folder = path.parent
    if path.is_dir():
        raise AutoPruneError(f"{flag} {path} is a folder; give a file name")
    if not folder.is_dir():
        raise AutoPruneError(f"{flag} {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise AutoPruneError(f"{flag} {path}: permission denied")
    return path


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text}")
    return value


def add_data_options(
    p: argparse.ArgumentParser, *, default: str | None = "digits", reading: bool = True
) -> argparse._ArgumentGroup:

    g = p.add_argument_group("model and data")
    g.add_argument(
        "--dataset",
        default=default,
        metavar="D",
        help=f"one of {', '.join(list_datasets())} (default: {default or 'the one stored in the file'})",
    )
    g.add_argument(
        "--data-dir",
        type=Path,
        metavar="PATH",
        help="where the dataset's files are (fashion-mnist defaults to /usr/share/datasets/fashion-mnist; "
        "for npz, the .npz file)",
    )
    g.add_argument(
        "--val-fraction",
        type=fraction,
        default=0.1,
        metavar="F",
        help="share of the training data held out for validation (default: %(default)s)",
    )
    g.add_argument("--seed", type=int, default=0, help="seed for the split, initial weights and shuffling")
    if not reading:  # eval: a packed file's network says the input size
        return g
    g.add_argument(
        "--image-size",
        type=image_size,
        metavar="HxW",
        help="an image folder's input size: short side resized, centre crop (default: its most common size)",
    )
    g.add_argument(
        "--in-memory",
        choices=("auto", "yes", "no"),
        default="auto",
        help="hold the decoded images in memory, or stream them from the files per batch "
        "(default: auto, in memory under 1 GB)",
    )
    g.add_argument(
        "--augment",
        choices=("none", "crop-flip"),
        default="none",
        help="training-time augmentation: crop-flip is a random crop (padding 4) and a horizontal flip "
        "(default: %(default)s)",
    )
    return g


def image_size(text: str) -> tuple[int, int]:
    """An argparse type: HxW (or one number for a square)."""
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or not all(1 <= v <= 4096 for v in parts):
        raise argparse.ArgumentTypeError(f"expected HxW such as 224x224 (each in 1..4096), got {text!r}")
    return parts[0], parts[1]


def data_options(args: argparse.Namespace) -> Any:
    """The DataOptions of the data flags."""

    return DataOptions(args.image_size, args.in_memory, args.augment)


def add_model_data_options(p: argparse.ArgumentParser) -> None:

    g = add_data_options(p)
    g.add_argument(
        "--model",
        default="lenet5",
        metavar="M",
        help=f"built-in model ({', '.join(list_models())}) or your own as "
        "package.module:factory or path/to/file.py:factory (default: %(default)s)",
    )
    g.add_argument(
        "--checkpoint", type=Path, metavar="PATH", help="a trained state_dict (loaded with weights_only=True)"
    )


def device_name(text: str) -> str:
    """An argparse type: a device this machine has (checked now, before any work)."""

    try:
        resolve_device(text)
    except DeviceError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text.strip().lower()


def add_device_option(
    p: argparse.ArgumentParser | argparse._ArgumentGroup, default: str | None = "auto"
) -> None:
    shown = "the spec's study.device, else auto" if default is None else default
    p.add_argument(
        "--device",
        type=device_name,
        default=default,
        metavar="D",
        help=f"where to train, evaluate and time: auto (CUDA when available), cpu, cuda, cuda:N, "
        f"mps (default: {shown})",
    )


def add_output_options(p: argparse.ArgumentParser) -> None:
    add_device_option(p)
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.add_argument(
        "--threads",
        type=int_in(1, 1024),
        metavar="N",
        help="threads for latency measurement (default: torch's own setting)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def table(rows: list[tuple[str, str]]) -> str:
    """Two aligned columns of label and value."""
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def grid(header: list[str], rows: list[list[Any]]) -> str:
    """A plain text table; numbers right-aligned."""
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for j, r in enumerate(cells):
        lines.append(
            "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        )
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def timed_busy(r: dict[str, Any]) -> bool:
    """Whether a measured model's latency was timed while other processes used the CPU."""

    return (r.get("other_load") or 0.0) >= BUSY


def latency_text(r: dict[str, Any]) -> str:
    """A measured model's latency line, with a warning when other processes used the CPU."""
    if r.get("backend") == "not measured":
        return "not measured (--no-latency)"
    busy = f"; other processes kept {r['other_load']:.1f} cores busy: may read high" if timed_busy(r) else ""
    runs = (
        f", median of {r['latency_repeats']} runs +- {100 * r['latency_interval']:.0f}%"
        if r.get("latency_repeats")
        else ""
    )
    return (
        f"{r['latency_ms']:.3f} ms at batch 1, {r['latency_ms_batch']:.3f} ms at batch "
        f"{r.get('latency_batch', 64)} "
        f"({r['threads']} threads, {r['backend']}{runs}{busy})"
    )
