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
    b = bits.reshape(n, -1, 8)
    vals = np.packbits(b == 1, axis=2).reshape(n, -1)
    return vals, (b != -1).mean(axis=2)


def nearest(bits: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Index of the candidate value nearest to each row's bits in Hamming distance over the
    bits that are not fill (ties: the earliest candidate)."""
    w = bits.shape[1]
    cand = to_bits(np.asarray(candidates, dtype=np.int64), w)      # (k, w)
    known = bits != -1
    # distance = known bits that disagree; computed as two matrix products, no (N, k, w) array
    ones = (bits == 1).astype(np.int32)
    zeros = (bits == 0).astype(np.int32)
    dist = ones @ (1 - cand.T).astype(np.int32) + zeros @ cand.T.astype(np.int32)
    del known
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
