"""Relative-index encoding of sparse positions (Deep Compression, Figure 2).

Each entry stores the gap to the previous non-zero weight in ``index_bits`` bits. The largest
symbol, ``FILLER = 2**index_bits - 1``, is a filler entry: it advances the position by
``FILLER`` without a weight, for gaps beyond the range. Unlike the paper's filler zero, ours
lives only in the position stream, so the value stream holds exactly one entry per weight.
"""

from __future__ import annotations

import numpy as np


def _filler(index_bits: int) -> int:
    if not 1 <= index_bits <= 16:
        raise ValueError(f"index_bits={index_bits} should be in 1..16")
    return (1 << index_bits) - 1


def encode_relative(positions: np.ndarray, index_bits: int) -> np.ndarray:
    """Gap symbols for sorted unique flat ``positions``, fillers included.

    A weight at p after one at q (q = -1 at the start) has gap p - q - 1, written as
    ``gap // FILLER`` filler symbols followed by ``gap % FILLER``.
    """
    filler = _filler(index_bits)
    positions = np.asarray(positions, dtype=np.int64)
    if positions.size and (positions[0] < 0 or np.any(np.diff(positions) <= 0)):
        raise ValueError("positions must be sorted, unique and non-negative")
    gaps = np.diff(positions, prepend=-1) - 1
    fillers = gaps // filler
    out = np.full(positions.size + int(fillers.sum()), filler, dtype=np.int64)
    out[np.cumsum(fillers + 1) - 1] = gaps % filler
    return out


def decode_relative(symbols: np.ndarray, index_bits: int) -> np.ndarray:
    """Flat positions of the weights that ``symbols`` encode."""
    filler = _filler(index_bits)
    symbols = np.asarray(symbols, dtype=np.int64)
    is_filler = symbols == filler
    steps = np.where(is_filler, filler, symbols + 1)
    return (np.cumsum(steps) - 1)[~is_filler]


def expected_gap_counts(numel: int, nonzero: int, index_bits: int) -> np.ndarray:
    """Expected counts of each gap symbol (0 .. FILLER) when ``nonzero`` of ``numel`` positions
    are kept independently at random: gaps are geometric with the density p, the remainder
    r = gap mod FILLER has P(r) = p (1-p)^r / (1 - (1-p)^FILLER), and a weight is preceded by
    (1-p)^FILLER / (1 - (1-p)^FILLER) fillers on average."""
    filler = _filler(index_bits)
    counts = np.zeros(filler + 1)
    if nonzero <= 0:
        return counts
    p = min(nonzero / max(numel, 1), 1.0)
    q = 1.0 - p
    tail = q**filler
    r = np.arange(filler)
    counts[:filler] = nonzero * p * q**r / (1.0 - tail) if tail < 1 else nonzero / filler
    counts[filler] = nonzero * tail / (1.0 - tail) if tail < 1 else 0.0
    return counts
