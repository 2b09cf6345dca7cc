"""Canonical Huffman coding of small-alphabet integer streams, and fixed-width bit packing.

A code is fully described by its code lengths (one byte per symbol), which is all a file
stores. Encoding and decoding are vectorised with NumPy, except the walk from one codeword to
the next while decoding, a tight loop over a precomputed table.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

MAX_CODE_LENGTH = 20  # keeps the decoding table at most 2**20 entries


def _huffman_lengths(counts: np.ndarray) -> np.ndarray:
    """Optimal code lengths for the symbols with a non-zero count (0 for the others)."""
    lengths = np.zeros(counts.size, dtype=np.int64)
    used = np.flatnonzero(counts)
    if used.size == 1:
        lengths[used] = 1
        return lengths
    # merge the two least frequent (ties: the lowest symbol below), remembering each node's
    # parent; a symbol's length is its leaf's depth. Nodes: the symbols, then the merges.
    heap = [(int(counts[s]), int(s), int(s)) for s in used]
    heapq.heapify(heap)
    parent = [0] * (counts.size + used.size)
    node = counts.size
    while len(heap) > 1:
        ca, ta, a = heapq.heappop(heap)
        cb, tb, b = heapq.heappop(heap)
        parent[a] = parent[b] = node
        heapq.heappush(heap, (ca + cb, min(ta, tb), node))
        node += 1
    depth = [0] * node  # the root, the last node made, has depth 0; a parent is made after its children
    for n in range(node - 2, counts.size - 1, -1):
        depth[n] = depth[parent[n]] + 1
    for s in used.tolist():
        lengths[s] = depth[parent[s]] + 1
    return lengths


def _limited_lengths(counts: np.ndarray, limit: int) -> np.ndarray:
    """Huffman lengths no longer than ``limit``: flatten the counts until they fit."""
    counts = counts.astype(np.int64)
    lengths = _huffman_lengths(counts)
    while lengths.max(initial=0) > limit:
        counts = np.where(counts > 0, (counts >> 1) + 1, 0)
        lengths = _huffman_lengths(counts)
    return lengths


def _canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical codewords: symbols sorted by (length, symbol) get consecutive codes."""
    codes = np.zeros(lengths.size, dtype=np.int64)
    code, previous = 0, 0
    for s in sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[s]) - previous
        codes[s] = code
        previous = int(lengths[s])
        code += 1
    return codes


def _pack_codes(codes: np.ndarray, lengths: np.ndarray) -> tuple[bytes, int]:
    """Concatenate variable-length codewords, most significant bit first."""
    total = int(lengths.sum())
    if total == 0:
        return b"", 0
    starts = np.cumsum(lengths) - lengths
    owner = np.repeat(np.arange(codes.size), lengths)
    shift = lengths[owner] - 1 - (np.arange(total) - starts[owner])
    bits = ((codes[owner] >> shift) & 1).astype(np.uint8)
    return np.packbits(bits).tobytes(), total


def pack_fixed(values: np.ndarray, width: int) -> bytes:
    """Each value in ``width`` bits, most significant bit first, zero-padded to a byte."""
    values = np.asarray(values, dtype=np.int64)
    if values.size and (values.min() < 0 or values.max() >= 1 << width):
        raise ValueError(f"values do not fit in {width} bits")
    return _pack_codes(values, np.full(values.size, width, dtype=np.int64))[0]


def unpack_fixed(data: bytes, width: int, count: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))[: width * count]
    if bits.size < width * count:
        raise ValueError("bit stream is shorter than its header says")
    weights = (1 << np.arange(width - 1, -1, -1)).astype(np.int64)
    return bits.reshape(count, width).astype(np.int64) @ weights


@dataclass(frozen=True)
class HuffmanCode:
    """A canonical Huffman code over symbols ``0 .. len(lengths) - 1``."""

    lengths: np.ndarray  # (alphabet,) code length of each symbol, 0 when unused

    @classmethod
    def fit(cls, symbols: np.ndarray, alphabet: int, *, limit: int = MAX_CODE_LENGTH) -> HuffmanCode:
        counts = np.bincount(np.asarray(symbols, dtype=np.int64), minlength=alphabet)
        if counts.size > alphabet:
            raise ValueError(f"symbols exceed the alphabet of {alphabet}")
        if (1 << limit) < np.count_nonzero(counts):
            raise ValueError(f"{np.count_nonzero(counts)} symbols cannot fit codes of {limit} bits")
        return cls(_limited_lengths(counts, limit))

    def encoded_bits(self, symbols: np.ndarray) -> int:
        return int(self.lengths[np.asarray(symbols, dtype=np.int64)].sum())

    def encode(self, symbols: np.ndarray) -> bytes:
        symbols = np.asarray(symbols, dtype=np.int64)
        lengths = self.lengths[symbols]
        if symbols.size and lengths.min() == 0:
            raise ValueError("a symbol has no code")
        return _pack_codes(_canonical_codes(self.lengths)[symbols], lengths)[0]

    def decode(self, data: bytes, count: int) -> np.ndarray:
        if count == 0:
            return np.zeros(0, dtype=np.int64)
        width = int(self.lengths.max(initial=0))
        if width == 0 or width > MAX_CODE_LENGTH:
            raise ValueError("invalid Huffman code lengths")
        # Table over every ``width``-bit window: the symbol it starts with and that code's length.
        codes = _canonical_codes(self.lengths)
        table_symbol = np.full(1 << width, -1, dtype=np.int64)
        table_length = np.zeros(1 << width, dtype=np.int64)
        for s in np.flatnonzero(self.lengths):
            span = 1 << (width - int(self.lengths[s]))
            start = int(codes[s]) * span
            table_symbol[start : start + span] = s
            table_length[start : start + span] = self.lengths[s]
        bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
        bits = np.concatenate([bits, np.zeros(width, dtype=np.uint8)]).astype(np.int64)
        # window[i] = the integer of bits[i : i + width], built with a running shift
        window = np.zeros(bits.size - width, dtype=np.int64)
        for j in range(width):
            window = (window << 1) | bits[j : j + window.size]
        symbol_at = table_symbol[window].tolist()
        length_at = table_length[window].tolist()
        out = [0] * count
        pos, limit = 0, len(symbol_at)
        for i in range(count):
            if pos >= limit or symbol_at[pos] < 0:
                raise ValueError("corrupt Huffman stream")
            out[i] = symbol_at[pos]
            pos += length_at[pos]
        if pos > bits.size - width:
            raise ValueError("Huffman stream is shorter than its header says")
        return np.asarray(out, dtype=np.int64)


def stream_bits(counts: np.ndarray, width: int, huffman: bool = True) -> int:
    """Bits a stream with these symbol ``counts`` takes in a packed file: Huffman-coded (its
    code-length table of one byte per symbol up to the largest used included) when that is
    smaller than ``width`` bits per symbol, else fixed width. ``counts`` may be expected
    (fractional) counts: the code is built on them rounded up."""
    counts = np.asarray(counts, dtype=np.float64)
    n = float(counts.sum())
    fixed = width * n
    used = np.flatnonzero(counts > 0)
    if not used.size or not huffman:
        return int(round(fixed))
    lengths = _limited_lengths(np.ceil(counts).astype(np.int64), MAX_CODE_LENGTH)
    coded = float((counts * lengths).sum()) + 8 * (int(used[-1]) + 1)
    return int(round(min(fixed, coded)))
