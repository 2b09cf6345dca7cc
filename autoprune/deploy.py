"""The file a user deploys: the compressed network as ONNX, its input normalisation inside the
graph, and what running it needs recorded in the file's metadata (mean, std, class names,
input shape, where it came from and what it measured), optionally as a static int8 (QDQ)
model calibrated on training images; and such a file measured back with ONNX Runtime on raw
images with pixel values in [0, 1], as a deployment would feed it.

An ONNX file arriving as data is a graph of operators, never code; one that refers to weights
in other files (ONNX's external data) is refused, so it cannot make autoprune read a path.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autoprune.data import AnySplit, DataSplits
from autoprune.errors import AutoPruneError
from autoprune.runtime import INPUT, onnx_bytes, ort_session, run_session

METADATA_KEY = "autoprune"  # one JSON document in the ONNX metadata_props, beside plain keys
MAX_METADATA = 1 << 20  # bytes of metadata read back: a file cannot make us parse more
MAX_ONNX = 1 << 31  # protobuf's own limit on one file
CALIBRATION_IMAGES = 256  # training images the int8 model's activation ranges are taken from
EXTERNAL = 1  # onnx.TensorProto.EXTERNAL: a tensor's data kept in another file
INPUT_RANGE = "float32 NCHW, pixel values in [0, 1]; the normalisation is in the graph"


class DeployError(AutoPruneError):
    """An ONNX file autoprune cannot write or will not read."""


class Normalised(nn.Module):
    """``model`` taking raw images in [0, 1]: the dataset's normalisation as its first step."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def deployment_metadata(splits: DataSplits, **info: Any) -> dict[str, Any]:
    """What a runtime needs to feed the network (and where it came from: ``info``)."""
    return {
        "input": INPUT_RANGE,
        "input_shape": list(splits.input_shape),
        "mean": list(splits.mean),
        "std": list(splits.std),
        "class_names": list(splits.classes) or [str(i) for i in range(splits.num_classes)],
        "dataset": splits.name,
        **info,
    }


def deployment_onnx(model: nn.Module, splits: DataSplits, metadata: dict[str, Any]) -> bytes:
    """``model`` as ONNX taking raw [0, 1] images (the normalisation folded in as its first
    operators), with ``metadata`` in the file."""
    if not splits.mean:
        raise DeployError("this dataset records no normalisation (your own task's data): nothing to fold in")
    graph = onnx_bytes(Normalised(model, splits.mean, splits.std).eval(), splits.input_shape)
    return with_metadata(graph, metadata)


def parse_onnx(graph: bytes) -> Any:
    """An ONNX ModelProto. The onnx package is imported here, when a file is written or read:
    at the top it would add 0.7 s to every command's start (measured: 3.0 -> 3.75 s)."""
    import onnx

    return onnx.load_from_string(graph)


def with_metadata(graph: bytes, metadata: dict[str, Any]) -> bytes:
    """``graph`` with ``metadata`` as its metadata_props: every key as JSON, and the whole
    under ``autoprune``, so other tools read the keys and autoprune the document."""
    proto = parse_onnx(graph)
    del proto.metadata_props[:]
    for key, value in {**metadata, METADATA_KEY: metadata}.items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, json.dumps(value)
    return proto.SerializeToString()


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol over batches of raw images."""

    def __init__(self, images: np.ndarray, batch_size: int = 32):
        self._batches = iter([{INPUT: images[i : i + batch_size]} for i in range(0, len(images), batch_size)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def int8_onnx(graph: bytes, calibration: np.ndarray) -> bytes:
    """ONNX Runtime's static int8 quantization of ``graph`` in QDQ form (per-channel int8
    weights in 7-bit range, uint8 activations whose ranges are the min and max seen on ``calibration``, raw
    images); the metadata is kept."""
    # deferred as onnx is (see parse_onnx): it imports onnx and more
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    metadata = read_metadata(parse_onnx(graph))
    with tempfile.TemporaryDirectory() as folder:
        src, prepared, out = (Path(folder) / f"{n}.onnx" for n in ("float", "prepared", "int8"))
        src.write_bytes(graph)
        try:
            # shape inference and graph optimisation first, as ONNX Runtime's guide asks
            quant_pre_process(str(src), str(prepared))
            quantize_static(
                str(prepared),
                str(out),
                _Calibration(calibration.astype(np.float32)),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                # 7-bit weights: a CPU without VNNI (AVX2 only) multiplies uint8 by int8 in 16-bit
                # pairs that saturate at full range (1.4 test points lost on a digits LeNet-5 on
                # such a host); the file may run on either kind
                reduce_range=True,
                calibrate_method=CalibrationMethod.MinMax,
            )
        except Exception as e:  # onnxruntime raises its own types for a graph it cannot quantize
            raise DeployError(
                f"ONNX Runtime cannot quantize this network to int8: {str(e).splitlines()[0]}"
            ) from e
        quantized = out.read_bytes()
    return with_metadata(
        quantized, {**metadata, "int8": "static QDQ, per-channel 7-bit-range weights, MinMax calibration"}
    )


def raw_images(
    split: AnySplit, splits: DataSplits, *, limit: int | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(raw [0, 1] images, labels) batches of a normalised split: the normalisation undone."""
    mean = torch.tensor(splits.mean).view(1, -1, 1, 1)
    std = torch.tensor(splits.std).view(1, -1, 1, 1)
    seen = 0
    for x, y in split.batches(256):
        if limit is not None and seen >= limit:
            return
        yield (x * std + mean).numpy(), y.numpy()
        seen += len(y)


def calibration_images(splits: DataSplits, n: int = CALIBRATION_IMAGES) -> np.ndarray:
    """The first ``n`` training images, raw (training images: the test split is never used)."""
    return np.concatenate([x for x, _ in raw_images(splits.train, splits, limit=n)])[:n]


# ----------------------------------------------------------------------------- reading back


@dataclass(frozen=True)
class DeployedFile:
    graph: bytes
    metadata: dict[str, Any]  # the ``autoprune`` document, checked; {} when the file has none
    input_shape: tuple[int, ...]  # (C, H, W) from the graph's input
    outputs: int | None  # classes, when the graph says


def read_onnx(path: Path) -> DeployedFile:
    """An ONNX file's graph and metadata, read as data: bounded in size, no external data."""
    try:
        size = path.stat().st_size
        if size > MAX_ONNX:
            raise DeployError(f"{path} is {size:,} bytes, above ONNX's 2 GiB limit")
        graph = path.read_bytes()
    except OSError as e:
        raise DeployError(f"cannot read {path}: {e.strerror}") from None
    try:
        proto = parse_onnx(graph)
    except Exception:  # protobuf's DecodeError and friends
        raise DeployError(f"{path} is not an ONNX file (it does not parse)") from None
    external = [t.name for t in proto.graph.initializer if t.data_location == EXTERNAL]
    if external:
        raise DeployError(f"{path} keeps tensor {external[0]!r} in another file (external data): refused")
    inputs = [i for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
    if len(inputs) != 1 or inputs[0].name != INPUT:
        raise DeployError(f"{path} should have one input named {INPUT!r}, as autoprune writes it")
    dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or not all(0 < d <= 1 << 16 for d in dims[1:]):
        raise DeployError(f"{path}'s input should be (batch, channels, height, width), got {dims}")
    out_dims = (
        [d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim] if proto.graph.output else []
    )
    outputs = out_dims[1] if len(out_dims) == 2 and out_dims[1] > 0 else None
    return DeployedFile(graph, read_metadata(proto), tuple(dims[1:]), outputs)


def read_metadata(proto: Any) -> dict[str, Any]:
    """The ``autoprune`` metadata document of an ONNX model ({} when none), bounded and checked."""
    raw = next((p.value for p in proto.metadata_props if p.key == METADATA_KEY), None)
    if raw is None:
        return {}
    if len(raw) > MAX_METADATA:
        raise DeployError(f"the file's {METADATA_KEY} metadata is {len(raw):,} bytes, above {MAX_METADATA:,}")
    try:
        metadata = json.loads(raw)
    except ValueError:
        raise DeployError(f"the file's {METADATA_KEY} metadata is not JSON") from None
    if not isinstance(metadata, dict):
        raise DeployError(f"the file's {METADATA_KEY} metadata should be a JSON object")
    for key in ("mean", "std"):
        value = metadata.get(key)
        if value is not None and not (
            isinstance(value, list) and all(isinstance(v, (int, float)) and math.isfinite(v) for v in value)
        ):
            raise DeployError(f"the file's metadata {key}={value!r} should be a list of finite numbers")
    return metadata


@dataclass(frozen=True)
class OnnxAccuracy:
    accuracy: float  # validation top-1, percent
    test_accuracy: float


def onnx_accuracy(graph: bytes, splits: DataSplits, *, threads: int = 1) -> OnnxAccuracy:
    """Top-1 accuracy of a deployment graph on the raw [0, 1] validation and test images."""
    session = ort_session(graph, threads=threads)

    def top1(split: AnySplit) -> float:
        hits = [run_session(session, x).argmax(1) == y for x, y in raw_images(split, splits)]
        return 100.0 * float(np.concatenate(hits).mean()) if hits else math.nan

    return OnnxAccuracy(top1(splits.val), top1(splits.test))
