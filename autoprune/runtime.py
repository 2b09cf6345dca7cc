"""Running a network outside eager PyTorch: ONNX export and an ONNX Runtime session.

Eager PyTorch pays a fixed cost per operator (dispatch, allocation, im2col) that does not
shrink with the channel count, so at batch 1 a small pruned network keeps only about half of
its MAC reduction as time. ONNX Runtime, the usual CPU deployment runtime for such networks,
costs a few microseconds per operator: there LeNet-5 with half its filters removed keeps
0.71-0.88 of its MAC reduction at batch 1 (BENCHMARKS.md, "Measured speed-up of filter
pruning").
"""

from __future__ import annotations

import io
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from autoprune._compat import onnx_log_to_stderr
from autoprune.errors import AutoPruneError

log = logging.getLogger(__name__)

INPUT, OUTPUT = "input", "output"


class ExportError(AutoPruneError):
    """The network could not be exported to ONNX (an operator ONNX does not have)."""


def onnx_bytes(model: nn.Module, input_shape: tuple[int, ...]) -> bytes:
    """The model as an ONNX graph (opset 17, batch size free), serialised.

    Uses torch's TorchScript-based exporter: it takes ~0.1 s where the torch.export-based one
    takes 1-2 s and an extra dependency (onnxscript), which matters when every search trial
    exports its network to time it.
    """
    buffer = io.BytesIO()
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad(), _quiet_exporter():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (torch.zeros(1, *input_shape),),
                buffer,  # type: ignore[arg-type]  # a file object works; the stub says a path
                dynamo=False,
                opset_version=17,
                input_names=[INPUT],
                output_names=[OUTPUT],
                dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
            )
    except Exception as e:  # the exporter raises many types for an unsupported operator
        raise ExportError(f"cannot export {type(model).__name__} to ONNX: {str(e).splitlines()[0]}") from e
    finally:
        model.train(was_training)
    return buffer.getvalue()


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Keep the exporter's C++ log off stdout (it would break ``--json``) and out of sight.

    On a failed export torch prints the whole graph through its ONNX log, which its own
    context manager leaves enabled (torch 2.13); the error itself still reaches the caller.
    """
    onnx_log_to_stderr()
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: str | Path) -> Path:
    """Write the model as an ONNX file that ONNX Runtime (or any ONNX runtime) loads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(onnx_bytes(model, input_shape))
    return path


def ort_session(graph: bytes | str | Path, *, threads: int = 1) -> Any:
    """An ONNX Runtime CPU session with every graph optimisation and ``threads`` intra-op threads."""

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    source = graph if isinstance(graph, bytes) else str(graph)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run_session(session: Any, x: np.ndarray) -> np.ndarray:
    return session.run(None, {INPUT: x})[0]


def checked_session(model: nn.Module, input_shape: tuple[int, ...], *, threads: int = 1) -> Any | None:
    """An ONNX Runtime session for ``model`` (in eval mode) whose outputs match the model's, or
    None (logged) when the model does not export or the runtime computes something else."""
    x = torch.randn(2, *input_shape)
    try:
        session = ort_session(onnx_bytes(model, input_shape), threads=threads)
        got = run_session(session, x.numpy())
    except ExportError as e:
        log.warning("%s; timing eager PyTorch only", e)
        return None
    except Exception as e:  # onnxruntime raises its own types for a graph it cannot load or run
        log.warning(
            "ONNX Runtime cannot run %s (%s); timing eager PyTorch only",
            type(model).__name__,
            str(e).splitlines()[0] if str(e) else type(e).__name__,
        )
        return None
    with torch.no_grad():
        expected = model(x).numpy()
    scale = float(np.abs(expected).max()) + 1.0
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-3, atol=1e-4 * scale):
        log.warning(
            "ONNX Runtime's outputs differ from PyTorch's for %s; timing eager PyTorch only",
            type(model).__name__,
        )
        return None
    return session
