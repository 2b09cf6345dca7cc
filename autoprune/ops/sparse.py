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
