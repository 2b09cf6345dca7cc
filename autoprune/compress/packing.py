"""The packed file (Deep Compression stage 3): a versioned, self-describing binary format.

Layout::

    b"APRUNE" | version (u8) | header length (u32 LE) | zlib(JSON header) | blobs | crc32 (u32 LE)

The header holds the architecture as a shape specification (the model's name or factory, its
input spec, and the channel counts that pruning changed), never a pickle of the module, and
one entry per state_dict tensor. Conv and linear weights are stored sparse: the positions of
the non-zero weights as relative indices (with fillers) and their values either as indices
into a codebook of shared weights or as float32. Each index stream is Huffman-coded when that
is smaller than fixed width. Everything else (biases, batch norm) is plain float32, or float16
when the config says ``float16`` (encoding ``half``: decoded to float32, rounded). With
``affine_norms`` a batch norm is stored as what it does in inference, a scale and a shift per
channel (``weight`` and ``bias``; the header's ``norms`` names them), without its running
statistics: the decoded one has mean 0 and variance 1 - eps, the same map up to rounding.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from autoprune.compress._layers import RecipeError, layer_kind, norm_affine, weight_layers
from autoprune.compress.stage import STAGES, Run, Stage, ordered_stages, register
from autoprune.errors import AutoPruneError, ModelError, UnknownNameError
from autoprune.models import ModelSpec, canonical_name, create_model, factory_source_hash, is_user_model
from autoprune.ops.huffman import HuffmanCode, pack_fixed, unpack_fixed
from autoprune.ops.sparse import decode_relative, encode_relative

MAGIC = b"APRUNE"
VERSION = 1
NORM_STATS = ("running_mean", "running_var", "num_batches_tracked")  # what affine_norms leaves out
SHAPE_ATTRS = ("in_channels", "out_channels", "groups", "in_features", "out_features", "num_features")
_DTYPES = {
    name: np.dtype(name) for name in ("float32", "float64", "float16", "int64", "int32", "uint8", "bool")
}
MAX_HEADER = 64 << 20  # bytes a header may inflate to
MAX_RATIO = 4096  # the dense network may be at most this many times the file (plus 64 MiB)

log = logging.getLogger(__name__)


class PackError(AutoPruneError):
    """A packed file that is truncated, corrupt, or of an unknown version."""


@dataclass(frozen=True)
class PackConfig:
    conv_index_bits: int = 8  # relative-index width for conv layers (Deep Compression: 8)
    fc_index_bits: int = 5  # and for fully connected layers (5)
    huffman: bool = True  # Huffman-code the index streams (when smaller than fixed width)
    float16: bool = False  # store the float32 tensors kept whole (biases, batch norm) as float16:
    #                        half their bytes, rounded (what decodes is what is measured)
    affine_norms: bool = False  # each batch norm as its inference scale and shift: 2 values a
    #                             channel, not 4 and a counter (the file is for inference)

    def __post_init__(self) -> None:
        for key in ("conv_index_bits", "fc_index_bits"):
            value = getattr(self, key)
            if not 1 <= value <= 16:
                raise RecipeError(f"pack {key}={value} should be an integer in 1..16")


@dataclass(frozen=True)
class LayerReport:
    """One weight layer's line of the size breakdown (the paper's Tables 2 and 3)."""

    layer: str
    weights: int
    nonzero: int
    shared_values: int  # codebook size, 0 when values are stored as float32
    bits_per_index: float  # bits per stored value (cluster index or float32)
    bits_per_position: float  # bits per non-zero weight spent on its position, fillers included
    codebook_bytes: int
    huffman_saving: float  # share of the fixed-width index bits that Huffman coding saved
    bytes: int

    @property
    def density(self) -> float:
        return self.nonzero / max(self.weights, 1)


@dataclass(frozen=True)
class PackReport:
    path: Path
    packed_bytes: int  # size of the file on disk
    layers: list[LayerReport]


class _Writer:
    def __init__(self) -> None:
        self.buffer = io.BytesIO()

    def add(self, data: bytes) -> list[int]:
        offset = self.buffer.tell()
        self.buffer.write(data)
        return [offset, len(data)]


def _write_stream(w: _Writer, symbols: np.ndarray, width: int, huffman: bool) -> dict[str, Any]:
    """Encode ``symbols`` fixed-width or Huffman-coded, whichever is smaller."""
    entry: dict[str, Any] = {"count": int(symbols.size), "width": width}
    if huffman and symbols.size:
        code = HuffmanCode.fit(symbols, 1 << width)
        table = code.lengths[: int(symbols.max()) + 1].astype(np.uint8).tobytes()
        if code.encoded_bits(symbols) + 8 * len(table) < width * symbols.size:
            entry.update(coder="huffman", lengths=w.add(table), data=w.add(code.encode(symbols)))
            return entry
    entry.update(coder="fixed", data=w.add(pack_fixed(symbols, width)))
    return entry


def _stream_bits(entry: dict[str, Any]) -> tuple[int, int]:
    """(bits the stream takes in the file, bits it would take at fixed width)."""
    stored = 8 * (entry["data"][1] + (entry["lengths"][1] if "lengths" in entry else 0))
    fixed = 32 * entry["count"] if entry["coder"] == "float32" else entry["width"] * entry["count"]
    return stored, fixed


def breakdown(header: dict[str, Any]) -> list[LayerReport]:
    """The per-layer size breakdown of a packed file, read from its header."""
    reports = []
    for entry in header["tensors"]:
        if entry["encoding"] != "sparse":
            continue
        pos_bits, pos_fixed = _stream_bits(entry["positions"]) if "positions" in entry else (0, 0)
        val_bits, val_fixed = _stream_bits(entry["values"])
        codebook_bytes = entry["codebook"][1] if "codebook" in entry else 0
        n = max(entry["values"]["count"], 1)
        index_fixed = pos_fixed + (val_fixed if "codebook" in entry else 0)
        index_bits = pos_bits + (val_bits if "codebook" in entry else 0)
        reports.append(
            LayerReport(
                layer=entry["name"].removesuffix(".weight"),
                weights=int(np.prod(entry["shape"])),
                nonzero=entry["values"]["count"],
                shared_values=codebook_bytes // 4,
                bits_per_index=val_bits / n,
                bits_per_position=pos_bits / n,
                codebook_bytes=codebook_bytes,
                huffman_saving=1.0 - index_bits / index_fixed if index_fixed else 0.0,
                bytes=(pos_bits + val_bits) // 8 + codebook_bytes,
            )
        )
    return reports


def is_affine_norm(m: nn.Module) -> bool:
    """A batch norm that infers with running statistics and has a scale and shift to hold it."""
    return isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine and m.track_running_stats


def _unit_stats(name: str, norm: nn.Module, channels: int) -> dict[str, torch.Tensor]:
    """The running statistics a batch norm stored as scale and shift decodes with."""
    if not is_affine_norm(norm):
        raise ValueError(f"norms names {name[:80]!r}, not a batch norm with running statistics")
    eps = cast(nn.modules.batchnorm._BatchNorm, norm).eps
    return {
        f"{name}.running_mean": torch.zeros(channels),
        f"{name}.running_var": torch.full((channels,), 1.0 - eps),
        f"{name}.num_batches_tracked": torch.tensor(0),
    }


def _halves(t: torch.Tensor) -> bool:
    """Whether ``t`` is float32 with every finite value inside float16's range."""
    return t.dtype == torch.float32 and bool((t.half().isfinite() | ~t.isfinite()).all())


def _read_stream(payload: memoryview, entry: dict) -> np.ndarray:
    def blob(ref: list[int]) -> bytes:
        offset, length = ref
        if offset + length > len(payload):
            raise ValueError("a blob lies past the end of the file")
        return bytes(payload[offset : offset + length])

    if entry["coder"] == "huffman":
        lengths = np.frombuffer(blob(entry["lengths"]), dtype=np.uint8).astype(np.int64)
        return HuffmanCode(lengths).decode(blob(entry["data"]), entry["count"])
    return unpack_fixed(blob(entry["data"]), entry["width"], entry["count"])


def save_packed(
    model: nn.Module,
    spec: ModelSpec,
    path: str | Path,
    *,
    bits: dict[str, int] | None = None,
    config: PackConfig = PackConfig(),
    meta: dict[str, Any] | None = None,
) -> PackReport:
    """Write ``model`` to ``path``. ``bits`` names, per layer, the shared-weight width (None:
    the layer's values are stored as float32)."""
    bits = bits or {}
    layers = weight_layers(model)
    weights = {f"{name}.weight": name for name in layers}
    records = {s.name: r for s in ordered_stages() if (r := s.record(model)) is not None}
    fresh = create_model(spec)
    _rebuild_(fresh, records)  # what a stage made that pruning alone cannot (a factorised layer)
    shapes = {
        name: {a: getattr(m, a) for a in SHAPE_ATTRS if hasattr(m, a)}
        for (name, m), (_, f) in zip(model.named_modules(), fresh.named_modules())
        if any(getattr(m, a, None) != getattr(f, a, None) for a in SHAPE_ATTRS)
    }
    w = _Writer()
    tensors = []
    state = model.state_dict()
    norms = [n for n, m in model.named_modules() if is_affine_norm(m)] if config.affine_norms else []
    for name in norms:  # the inference map as weight and bias, on running mean 0, variance 1 - eps
        scale, shift = norm_affine(cast(nn.modules.batchnorm._BatchNorm, model.get_submodule(name)))
        state.update({f"{name}.weight": scale, f"{name}.bias": shift})
        for stat in NORM_STATS:
            del state[f"{name}.{stat}"]
    for key, tensor in state.items():
        t = tensor.detach().cpu().contiguous()
        entry: dict[str, Any] = {"name": key, "shape": list(t.shape)}
        if key not in weights or t.dtype != torch.float32:
            if config.float16 and _halves(t):
                entry.update(encoding="half", data=w.add(t.half().numpy().tobytes()))
            else:
                entry.update(encoding="raw", dtype=str(t.dtype).removeprefix("torch."))
                entry["data"] = w.add(t.numpy().tobytes())
            tensors.append(entry)
            continue
        layer = weights[key]
        flat = t.flatten().numpy()
        positions = np.flatnonzero(flat)
        values = flat[positions]
        index_bits = config.conv_index_bits if layer_kind(layers[layer]) == "conv" else config.fc_index_bits
        entry.update(encoding="sparse", index_bits=index_bits)
        if positions.size < flat.size:  # a layer with nothing pruned needs no positions
            entry["positions"] = _write_stream(
                w, encode_relative(positions, index_bits), index_bits, config.huffman
            )
        if layer in bits:
            codebook, labels = np.unique(values, return_inverse=True)
            if codebook.size > 1 << bits[layer]:
                raise PackError(
                    f"layer {layer} has {codebook.size} distinct values, more than 2**{bits[layer]}"
                )
            entry["codebook"] = w.add(codebook.astype(np.float32).tobytes())
            entry["values"] = _write_stream(w, labels, bits[layer], config.huffman)
        else:
            entry["values"] = {"coder": "float32", "count": int(values.size), "data": w.add(values.tobytes())}
        tensors.append(entry)
    meta = dict(meta or {})
    if (source := factory_source_hash(spec.name)) is not None:
        meta["model_source"] = source  # a later load can tell whether the factory it is given changed
    model_dict = {**spec.to_dict(), "name": canonical_name(spec.name)}  # loads from any folder
    header = {"format": VERSION, "model": model_dict, "shapes": shapes, "tensors": tensors, "meta": meta}
    if records:
        header["stages"] = records
    if norms:
        header["norms"] = norms
    header_bytes = zlib.compress(json.dumps(header, separators=(",", ":")).encode(), 9)
    body = MAGIC + struct.pack("<BI", VERSION, len(header_bytes)) + header_bytes + w.buffer.getvalue()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body + struct.pack("<I", zlib.crc32(body)))
    return PackReport(path, path.stat().st_size, breakdown(header))


def read_header(path: str | Path) -> tuple[dict[str, Any], memoryview]:
    """Check and parse a packed file: its header and its blob payload.

    Nothing in the file is trusted: the header is inflated to at most ``MAX_HEADER`` bytes and
    every blob reference must lie inside the payload.
    """
    path = Path(path)
    if not path.is_file():
        raise PackError(f"packed file {path} does not exist")
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        raise PackError(f"{path} is not an autoprune packed file")
    if len(data) < len(MAGIC) + 9:
        raise PackError(f"{path} is truncated")
    version, header_len = struct.unpack_from("<BI", data, len(MAGIC))
    if version != VERSION:
        raise PackError(f"{path} has format version {version}; this autoprune reads version {VERSION}")
    body, (crc,) = data[:-4], struct.unpack("<I", data[-4:])
    if zlib.crc32(body) != crc:
        raise PackError(f"{path} is truncated or corrupt (checksum mismatch)")
    start = len(MAGIC) + 5
    try:
        inflater = zlib.decompressobj()
        text = inflater.decompress(body[start : start + header_len], MAX_HEADER)
        if inflater.unconsumed_tail:
            raise ValueError(f"the header inflates past {MAX_HEADER >> 20} MiB")
        header = json.loads(text)
        payload = memoryview(body)[start + header_len :]
        _check_header(header, len(payload))
    except (zlib.error, ValueError, TypeError, KeyError, RecursionError) as e:
        raise PackError(f"{path} has a corrupt header ({e})") from None
    return header, payload


def load_packed(path: str | Path, *, model: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network from a packed file; returns the model (eval mode) and the header.

    A file never makes autoprune import code: a built-in model name recorded in the file is
    used as is, but a file made from your own factory (``file.py:factory``) loads only when
    you name that factory as ``model`` (the ``--model`` of the command line).
    """
    header, payload = read_header(path)
    return decode_packed(header, payload, path, model=model), header


def decode_packed(
    header: dict[str, Any], payload: memoryview, path: str | Path, *, model: str | None = None
) -> nn.Module:
    """The network of a header and payload :func:`read_header` returned (eval mode)."""
    spec = packed_model_spec(header, path, model=model)
    try:
        skeleton = _skeleton(spec)
    except UnknownNameError as e:
        raise PackError(f"{path} names a model autoprune does not have ({_one_line(e)[:200]})") from None
    except ModelError as e:  # the shapes it records cannot build the network it names
        raise PackError(f"{path} records a network that cannot be built ({_one_line(e)[:300]})") from None
    stages = header.get("stages", {})
    try:
        _rebuild_(skeleton, stages)
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise PackError(
            f"{path} records a stage that cannot rebuild its network ({_one_line(e)[:300]})"
        ) from None
    dense = sum(t.numel() * t.element_size() for t in skeleton.state_dict().values())
    size = Path(path).stat().st_size
    if dense > MAX_RATIO * size + (64 << 20):
        raise PackError(f"{path} declares a {dense:,}-byte network in a file of {size:,} bytes: corrupt")
    try:
        _check_tensors(header, skeleton)
        net = create_model(spec)
        _rebuild_(net, stages)
        state = {}
        for entry in header["tensors"]:
            state[entry["name"]] = _decode_tensor(payload, entry)
        for name in header.get("norms", []):
            state.update(_unit_stats(name, net.get_submodule(name), len(state[f"{name}.weight"])))
        for key, tensor in state.items():
            _resize_(net, key, tensor.shape)
        for name, attrs in header["shapes"].items():
            module = net.get_submodule(name)
            for attr, value in attrs.items():
                setattr(module, attr, value)
        net.load_state_dict(state)
    except (KeyError, IndexError, ValueError, TypeError, AttributeError, RuntimeError) as e:
        raise PackError(
            f"{path} does not decode to its model ({type(e).__name__}: {_one_line(e)[:300]})"
        ) from None
    net.eval()
    return net


def _rebuild_(model: nn.Module, records: dict[str, Any]) -> None:
    """Give a fresh network what the stages ``records`` names made of it, in pipeline order."""
    for stage in ordered_stages():
        if stage.name in records:
            stage.rebuild_(model, records[stage.name])


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def packed_model_spec(header: dict[str, Any], path: str | Path, *, model: str | None = None) -> ModelSpec:
    """The model a packed file needs, built only from what the caller trusts: a built-in name
    from the file, or the factory the caller names."""
    recorded = header["model"]["name"]
    if model is None and is_user_model(recorded):
        raise PackError(
            f"{path} was made with your own model factory {recorded!r}; autoprune never imports code "
            f"named by a file: pass the factory yourself (--model {recorded}, or load_packed(..., model=...))"
        )
    if model is not None and is_user_model(model):
        recorded_source, found = header.get("meta", {}).get("model_source"), factory_source_hash(model)
        if recorded_source is not None and recorded_source != found:
            log.warning(
                "%s was made by %s (source %s); the factory given, %s, has other source (%s): "
                "its weights load where the shapes match, but check it is the same network",
                path,
                recorded,
                recorded_source,
                canonical_name(model),
                found,
            )
    return dataclasses.replace(ModelSpec.from_dict(header["model"]), name=model or recorded)


def _skeleton(spec: ModelSpec) -> nn.Module:
    """The model's shapes without allocating its weights (the meta device), so a header that
    lies about its size is caught before memory is spent on it."""
    try:
        with torch.device("meta"):
            return create_model(spec)
    except ModelError:
        return create_model(spec)  # a factory that cannot build on the meta device; trusted code


def _check_header(header: Any, payload_len: int) -> None:
    """The header's layout and every size in it, against the payload's real length."""
    if not isinstance(header, dict) or header.get("format") != VERSION:
        raise ValueError("not a version-1 header")
    ModelSpec.from_dict(header["model"])
    if not isinstance(header["tensors"], list) or not isinstance(header["shapes"], dict):
        raise ValueError("tensors and shapes should be a list and a table")
    if not isinstance(header.get("meta", {}), dict):
        raise ValueError("meta should be a table")
    norms = header.get("norms", [])
    if not (isinstance(norms, list) and all(isinstance(n, str) for n in norms)):
        raise ValueError("norms should be a list of batch norm names")
    if len(set(norms)) != len(norms) or len(norms) > len(header["tensors"]):
        raise ValueError("norms names a batch norm twice, or more than the file has tensors")
    if not isinstance(stages := header.get("stages", {}), dict):
        raise ValueError("stages should be a table")
    for name in stages:
        if name not in STAGES:
            raise ValueError(f"it was made with a stage {str(name)[:50]!r} this autoprune does not have")

    def ref(r: Any, length: int | None = None) -> int:
        if not (isinstance(r, list) and len(r) == 2 and all(_is_count(v) for v in r)) or sum(r) > payload_len:
            raise ValueError(f"a blob reference {r!r} lies outside the file")
        if length is not None and r[1] != length:
            raise ValueError(f"a blob holds {r[1]} bytes where {length} are declared")
        return r[1]

    def stream(s: Any, numel: int) -> None:
        if not isinstance(s, dict) or not _is_count(s["count"]) or s["count"] > numel:
            raise ValueError("a stream declares more symbols than its tensor has weights")
        if s["coder"] == "float32":
            ref(s["data"], 4 * s["count"])
            return
        if s["coder"] not in ("fixed", "huffman") or not (_is_count(s["width"]) and 1 <= s["width"] <= 32):
            raise ValueError(f"unknown stream coding {s.get('coder')!r}")
        bits = 8 * ref(s["data"])
        if s["coder"] == "huffman":
            ref(s["lengths"])
        if bits < s["count"] * (s["width"] if s["coder"] == "fixed" else 1):
            raise ValueError("a stream is shorter than its symbol count")

    for entry in header["tensors"]:
        shape = entry["shape"]
        if not isinstance(entry["name"], str) or not (
            isinstance(shape, list) and all(_is_count(d) for d in shape)
        ):
            raise ValueError("a tensor entry without a name or shape")
        numel = math.prod(shape)
        if entry["encoding"] == "raw":
            if entry["dtype"] not in _DTYPES:
                raise ValueError(f"unsupported dtype {entry['dtype']!r}")
            ref(entry["data"], numel * _DTYPES[entry["dtype"]].itemsize)
        elif entry["encoding"] == "half":
            ref(entry["data"], numel * 2)
        elif entry["encoding"] == "sparse":
            if not (_is_count(entry["index_bits"]) and 1 <= entry["index_bits"] <= 16):
                raise ValueError("index_bits should be in 1..16")
            if "positions" in entry:
                stream(entry["positions"], numel)
            stream(entry["values"], numel)
            if "codebook" in entry:
                ref(entry["codebook"])
        else:
            raise ValueError(f"unknown encoding {entry['encoding']!r}")


def _check_tensors(header: dict[str, Any], skeleton: nn.Module) -> None:
    """Pruning only removes: every tensor and shape attribute in the file is at most as large
    as the fresh model's."""
    fresh = skeleton.state_dict()
    for entry in header["tensors"]:
        have = fresh.get(entry["name"])
        if have is None:
            raise KeyError(f"the model has no tensor {entry['name']!r}")
        if len(entry["shape"]) != have.dim() or any(d > h for d, h in zip(entry["shape"], have.shape)):
            raise ValueError(
                f"{entry['name']} is declared {entry['shape']}, larger than the model's {list(have.shape)}"
            )
    for name, attrs in header["shapes"].items():
        module = skeleton.get_submodule(name)
        for attr, value in attrs.items():
            if attr not in SHAPE_ATTRS or not _is_count(value) or value > getattr(module, attr):
                raise ValueError(f"{name}.{attr}={value!r} is not a pruned size of the model's")


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _decode_tensor(payload: memoryview, entry: dict) -> torch.Tensor:
    shape = tuple(entry["shape"])
    if entry["encoding"] == "raw":
        offset, length = entry["data"]
        array = np.frombuffer(bytes(payload[offset : offset + length]), dtype=_DTYPES[entry["dtype"]])
        return torch.from_numpy(array.copy()).reshape(shape)
    if entry["encoding"] == "half":
        offset, length = entry["data"]
        array = np.frombuffer(bytes(payload[offset : offset + length]), dtype=np.float16)
        return torch.from_numpy(array.astype(np.float32)).reshape(shape)
    size = int(np.prod(shape))
    if "positions" in entry:
        positions = decode_relative(_read_stream(payload, entry["positions"]), entry["index_bits"])
    else:
        positions = np.arange(size)
    values_entry = entry["values"]
    if values_entry["coder"] == "float32":
        offset, length = values_entry["data"]
        values = np.frombuffer(bytes(payload[offset : offset + length]), dtype=np.float32)
    else:
        offset, length = entry["codebook"]
        codebook = np.frombuffer(bytes(payload[offset : offset + length]), dtype=np.float32)
        values = codebook[_read_stream(payload, values_entry)]
    if positions.size != values.size or (positions.size and positions[-1] >= size):
        raise ValueError(f"{entry['name']}: positions and values disagree")
    flat = np.zeros(size, dtype=np.float32)
    flat[positions] = values
    return torch.from_numpy(flat).reshape(shape)


def _resize_(model: nn.Module, key: str, shape: torch.Size) -> None:
    """Give the fresh model's tensor ``key`` the packed shape, so load_state_dict fits."""
    module_name, _, attr = key.rpartition(".")
    module = model.get_submodule(module_name)
    current = getattr(module, attr)
    if current is None or current.shape == shape:
        return
    if isinstance(current, nn.Parameter):
        setattr(module, attr, nn.Parameter(torch.empty(shape, dtype=current.dtype)))
    else:
        module.register_buffer(attr, torch.empty(shape, dtype=current.dtype))


@register
class Coding(Stage):
    """The packed file: relative-index positions, shared-value indices, Huffman coding."""

    name = "pack"
    config = PackConfig
    order = 50
    label = "packing (Huffman coding)"
    timing = "pack_s"

    def apply_(self, model: nn.Module, config: PackConfig, run: Run) -> None:
        assert run.out is not None and run.spec is not None, "a run that packs names its file and model"
        run.report = save_packed(model, run.spec, run.out, bits=run.bits, config=config, meta=run.meta)
