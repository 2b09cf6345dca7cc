"""Where training, evaluation and timing run: the CPU, a CUDA GPU or Apple's MPS.

A command resolves the device the user asked for once, before any work (one line when it is
not there), and sets it for the process (:func:`use_device`); training and evaluation move
the model there and each batch with it, and bring the model back to the CPU when they end, so
that every transform, k-means, Huffman coding and packing stays NumPy on the CPU, and a base
model or packed file is saved from CPU tensors whatever trained it. Workers of a search on
several GPUs see one GPU each (``CUDA_VISIBLE_DEVICES``, set before CUDA starts in them).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator

import torch
from torch import nn

from autoprune.errors import AutoPruneError

DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
_current = torch.device("cpu")


class DeviceError(AutoPruneError):
    """A device that is not there, or a name that is not a device."""


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``;
    a device this machine does not have is an error that says what it has."""
    name = name.strip().lower()
    if name == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise DeviceError(f"device 'mps' is not available here; {_available()}")
        return torch.device("mps")
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if match is None:
        raise DeviceError(f"device {name!r} should be one of {', '.join(DEVICES)}")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(match.group(1) or 0)
    if index >= count:
        raise DeviceError(f"device {name!r} is not available here; {_available()}")
    return torch.device(f"cuda:{index}" if match.group(1) else "cuda")


def _available() -> str:
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = f"{count} CUDA device(s) (cuda:0..cuda:{count - 1})" if count else "no CUDA device"
    return (
        f"this machine has {gpus}"
        + (f" with CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else "")
        + ("; use --device cpu" if not count else "")
    )


def current_device() -> torch.device:
    """The device set for this process (the CPU unless a command set another)."""
    return _current


def set_device(device: torch.device | str) -> torch.device:
    global _current
    _current = torch.device(device) if not isinstance(device, torch.device) else device
    return _current


@contextlib.contextmanager
def use_device(device: torch.device | str) -> Iterator[torch.device]:
    """Run a block with ``device`` as the process's device."""
    before = _current
    try:
        yield set_device(device)
    finally:
        set_device(before)


def model_device(model: nn.Module) -> torch.device:
    """Where the model's weights are (the CPU for a model without any)."""
    for parameter in model.parameters():
        return parameter.device
    for buffer in model.buffers():
        return buffer.device
    return torch.device("cpu")


def describe(device: torch.device) -> str:
    """The device as a trial records it: ``cpu``, ``cuda:0 (NVIDIA H200)``."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return device.type


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a GPU runs asynchronously: time only after this)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
