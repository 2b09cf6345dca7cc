"""Deployment export of a decoded network."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from autoprune.runtime import export_onnx

__all__ = ["export_onnx", "export_torchscript"]


def export_torchscript(model: nn.Module, input_shape: tuple[int, ...], path: str | Path) -> Path:
    """Trace ``model`` to TorchScript and save it; the file runs without autoprune installed.

    TorchScript is deprecated in recent torch releases but is still what most C++ and mobile
    runtimes load; tracing (not scripting) works for any user network.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(model, torch.zeros(1, *input_shape))
        traced.save(str(path))
    return path
