"""Field values in their three states: ternary bits (-1/0/1, MSB first), integers, and the
legal value nearest to what a model generated.

Everything works on whole columns of rows; a field's bits are a (N, width) slice of a matrix.
"""
from __future__ import annotations

import numpy as np


def to_int(bits: np.ndarray) -> np.ndarray:
    """(N, w) ternary bits -> int64 values, fill (-1) read as 0. Fields up to 63 bits."""
    w = bits.shape[1]
    if w == 0:
        return np.zeros(len(bits), dtype=np.int64)
    if w > 63:
        raise ValueError("fields wider than 63 bits are handled as bytes")
    weights = np.left_shift(np.int64(1), np.arange(w - 1, -1, -1, dtype=np.int64))
    return (bits == 1).astype(np.int64) @ weights


def to_bits(values: np.ndarray, width: int) -> np.ndarray:
    """int values -> (N, width) int8 0/1 bits, MSB first."""
    v = np.asarray(values, dtype=np.int64)
    shifts = np.arange(width - 1, -1, -1, dtype=np.int64)
    return ((v[:, None] >> shifts) & 1).astype(np.int8)


def present(bits: np.ndarray) -> np.ndarray:
    """Share of a field's bits that are not fill, per row (the model's "this is here")."""
    if bits.shape[1] == 0:
        return np.zeros(len(bits))
    return (bits != -1).mean(axis=1)


def bytes_of(bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 8k) ternary bits -> (N, k) uint8 values (fill as 0) and the share of non-fill bits
    of each byte."""
    n = len(bits)
    b = bits.reshape(n, bits.shape[1] // 8, 8)
    vals = np.packbits(b == 1, axis=2).reshape(n, b.shape[1])
    return vals, (b != -1).mean(axis=2)


def nearest(bits: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Index of the candidate value nearest to each row's bits in Hamming distance over the
    bits that are not fill (ties: the earliest candidate)."""
    w = bits.shape[1]
    cand = to_bits(np.asarray(candidates, dtype=np.int64), w)      # (k, w)
    # distance = known bits that disagree; computed as two matrix products, no (N, k, w) array
    ones = (bits == 1).astype(np.int32)
    zeros = (bits == 0).astype(np.int32)
    dist = ones @ (1 - cand.T).astype(np.int32) + zeros @ cand.T.astype(np.int32)
    return np.argmin(dist, axis=1)


def snap_values(bits: np.ndarray, values: list[int]) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)[nearest(bits, values)]


def clamp(values: np.ndarray, lo: int, hi: int) -> np.ndarray:
    return np.clip(values, lo, hi)


def kept_share(before: np.ndarray, after: np.ndarray) -> float:
    """Share of positions whose value survived (fill included: fill kept where it should be)."""
    if before.size == 0:
        return 1.0
    return float((before == after).mean())


def packed_ints(packed: np.ndarray, start: int, width: int) -> np.ndarray:
    """Values of the ``width``-bit field at bit ``start`` of every row of an
    ``np.packbits(bits == 1, axis=1)`` matrix (fill read as 0): a few byte operations per field
    instead of one pass over its bits."""
    b0, b1 = start // 8, (start + width - 1) // 8
    v = np.zeros(len(packed), dtype=np.int64)
    for k in range(b0, b1 + 1):
        v = (v << 8) | packed[:, k]
    shift = (b1 - b0 + 1) * 8 - (start - 8 * b0) - width
    return (v >> shift) & ((1 << width) - 1)


_POP8 = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(axis=1)


def packed_bytes(bits: np.ndarray, packed: np.ndarray, sl: slice) -> tuple[np.ndarray, np.ndarray]:
    """``bytes_of`` for a byte-aligned field, reusing the packed matrix: (values, share of
    non-fill bits per byte)."""
    if sl.start % 8 or sl.stop % 8:
        return bytes_of(bits[:, sl])
    vals = packed[:, sl.start // 8:sl.stop // 8]
    filled = np.packbits(bits[:, sl] != -1, axis=1)
    return np.ascontiguousarray(vals), _POP8[filled] / 8.0
