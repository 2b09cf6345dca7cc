"""Mutated packed files, for the fuzz test (a short run) and bench/fuzz_packed.py (the long one).

A packed file ends with a CRC32 of everything before it, so most random damage is caught at
once; to reach the header and payload decoders, most mutants also get a valid checksum again,
and a third are made by rewriting one value of the JSON header (what a crafted file does).
Every mutant must either load to a network whose tensors have the shapes the header records,
or be refused with a :class:`PackError`; any other exception is a bug.
"""

from __future__ import annotations

import copy
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from autoprune.compress import PackError, load_packed

MAGIC_LEN = 6  # b"APRUNE", then a version byte and the header length

ODD_VALUES: list[Any] = [
    None,
    True,
    -1,
    0,
    1,
    2**31,
    2**63,
    -(2**63),
    10**30,
    1e308,
    -1e-308,
    float("nan"),
    "",
    "x" * 1000,
    "lenet5",
    "sys:exit",
    "../../etc/passwd",
    [],
    [0],
    [10**9, 10**9],
    {},
    {"a": 1},
    [[[[[]]]]],
]


def with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def split(data: bytes) -> tuple[dict[str, Any], bytes, bytes]:
    """(header, the bytes before the header, the payload) of a well-formed packed file."""
    (length,) = struct.unpack_from("<I", data, MAGIC_LEN + 1)
    start = MAGIC_LEN + 5
    return (
        json.loads(zlib.decompress(data[start : start + length])),
        data[: MAGIC_LEN + 1],
        data[start + length : -4],
    )


def _leaves(node: Any, path: tuple = ()) -> list[tuple]:
    if isinstance(node, dict):
        return [path] + [leaf for k, v in node.items() for leaf in _leaves(v, path + (k,))]
    if isinstance(node, list):
        return [path] + [leaf for i, v in enumerate(node) for leaf in _leaves(v, path + (i,))]
    return [path]


def _header_mutant(data: bytes, rng: np.random.Generator) -> bytes:
    header, prefix, payload = split(data)
    paths = _leaves(header)
    for _ in range(int(rng.integers(1, 4))):
        path = paths[int(rng.integers(len(paths)))]
        if not path:
            continue
        parent = header
        for key in path[:-1]:
            parent = parent[key]
        key, value = path[-1], copy.deepcopy(ODD_VALUES[int(rng.integers(len(ODD_VALUES)))])
        if isinstance(parent, dict) and rng.random() < 0.2:
            parent.pop(key, None)  # a missing key
        elif isinstance(parent[key], int) and not isinstance(parent[key], bool) and rng.random() < 0.5:
            parent[key] = parent[key] + int(rng.integers(-3, 4)) * (1 if rng.random() < 0.7 else 10**6)
        else:
            parent[key] = value
        paths = _leaves(header)
    packed = zlib.compress(json.dumps(header).encode())
    return with_crc(prefix + struct.pack("<I", len(packed)) + packed + payload)


def _byte_mutant(data: bytes, rng: np.random.Generator, *, fix_crc: bool) -> bytes:
    body = bytearray(data[:-4])
    for _ in range(int(rng.integers(1, 9))):
        kind = rng.random()
        at = int(rng.integers(len(body)))
        if kind < 0.5:
            body[at] ^= 1 << int(rng.integers(8))
        elif kind < 0.7:
            body[at] = int(rng.integers(256))
        elif kind < 0.8:
            del body[at : at + int(rng.integers(1, 64))]
        elif kind < 0.9:
            body[at:at] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
        else:
            del body[at:]  # truncated
            if not body:
                body = bytearray(b"A")
    return with_crc(bytes(body)) if fix_crc else bytes(body) + data[-4:]


def mutant(data: bytes, rng: np.random.Generator) -> bytes:
    """One mutant of the well-formed packed file ``data``."""
    draw = rng.random()
    if draw < 0.35:
        return _header_mutant(data, rng)
    return _byte_mutant(data, rng, fix_crc=draw < 0.9)


def check(path: Path) -> str:
    """'loaded' or 'refused'; raises when the file is neither loaded to its recorded shapes nor
    refused with a PackError."""
    try:
        net, header = load_packed(path)
    except PackError as e:
        assert "\n" not in str(e).strip(), str(e)
        return "refused"
    state = net.state_dict()
    for entry in header["tensors"]:
        assert tuple(state[entry["name"]].shape) == tuple(entry["shape"]), entry["name"]
    return "loaded"
