"""RFC 1071 Internet checksums for whole batches at once.

Packets are rows of a zero-padded (N, L) uint8 matrix; a region is given per row by a start
column and a byte count. Zero padding beyond a region is exactly RFC 1071's rule for an odd
length (pad with one zero byte), so regions can be summed as big-endian 16-bit words without a
per-packet loop. Pseudo-headers (RFC 793/768 for IPv4, RFC 8200 section 8.1 for IPv6) are added
as word sums.
"""
from __future__ import annotations

import numpy as np


def fold(total: np.ndarray) -> np.ndarray:
    """Fold 64-bit sums of 16-bit words into 16 bits (end-around carry)."""
    total = np.asarray(total, dtype=np.int64)
    for _ in range(3):
        total = (total & 0xFFFF) + (total >> 16)
    return total


def region_sum(mat: np.ndarray, start: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Sum of the big-endian 16-bit words of ``mat[i, start[i]:start[i] + length[i]]`` per row.

    Regions start at even columns in every use here (IP and transport headers are 4-byte
    aligned), which keeps the words aligned with the matrix's own pairs."""
    n, width = mat.shape
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if width % 2:
        mat = np.concatenate([mat, np.zeros((n, 1), mat.dtype)], axis=1)
        width += 1
    start = np.asarray(start, dtype=np.int64)
    length = np.asarray(length, dtype=np.int64)
    if np.any(start % 2):
        raise ValueError("checksum regions must start at an even byte offset")
    w = np.ascontiguousarray(mat, dtype=np.uint8).view(">u2").astype(np.int64)
    # Zero the odd byte after an odd-length region, then sum word ranges by prefix sums.
    end = start + length
    odd = (length % 2).astype(bool) & (end < width)
    if odd.any():
        r = np.flatnonzero(odd)
        w[r, end[r] // 2] &= 0xFF00
    cs = np.zeros((n, w.shape[1] + 1), dtype=np.int64)
    np.cumsum(w, axis=1, out=cs[:, 1:])
    rows = np.arange(n)
    hi = np.minimum((end + 1) // 2, w.shape[1])
    return cs[rows, hi] - cs[rows, np.minimum(start // 2, hi)]

def words(values: np.ndarray, nbytes: int) -> np.ndarray:
    """Sum of the 16-bit words of unsigned integers ``nbytes`` wide (addresses, lengths)."""
    v = np.asarray(values, dtype=np.uint64)
    total = np.zeros(v.shape, dtype=np.int64)
    for k in range(nbytes // 2):
        total += ((v >> np.uint64(16 * k)) & np.uint64(0xFFFF)).astype(np.int64)
    return total


def address_words(addr_bytes: np.ndarray) -> np.ndarray:
    """Word sum of (N, 4) or (N, 16) uint8 address rows."""
    a = addr_bytes.astype(np.int64)
    return (a[:, 0::2] << 8).sum(axis=1) + a[:, 1::2].sum(axis=1)


def pseudo_header_sum(src: np.ndarray, dst: np.ndarray, proto: np.ndarray,
                      length: np.ndarray) -> np.ndarray:
    """Word sum of the IPv4 or IPv6 pseudo-header (the two differ only in field widths, which
    do not change a ones'-complement sum of the same values)."""
    return address_words(src) + address_words(dst) + np.asarray(proto, np.int64) + \
        words(length, 4)


def checksum(total: np.ndarray) -> np.ndarray:
    """The value to store: ones' complement of the folded sum."""
    return (~fold(total)) & 0xFFFF


def verify(total_including_field: np.ndarray) -> np.ndarray:
    """True where a region summed with its stored checksum folds to 0xFFFF (RFC 1071 4.1)."""
    return fold(total_including_field) == 0xFFFF


def rule_checksum(rule: dict, header: np.ndarray, header_len: np.ndarray, body_sum: np.ndarray,
                  body_len: np.ndarray, src: np.ndarray, dst: np.ndarray,
                  proto: np.ndarray) -> np.ndarray:
    """The value a protocol file's ``checksum`` rule puts in its field, for rows of one header.

    ``header``: (N, L) header bytes with the checksum field zero, ``header_len`` long;
    ``body_sum``/``body_len``: word sum (``region_sum``) and length of the bytes after it;
    ``src``/``dst`` (N, 4 or 16) and ``proto``: the IP layer's, for a pseudo-header.
    ``covers: segment`` adds the body (headers are 4-byte aligned, so the two sums join as one),
    ``pseudo_header: true`` the pseudo-header over the segment, ``zero_becomes`` replaces a
    computed 0 (UDP's 0xFFFF: 0 means "no checksum")."""
    total = region_sum(header, np.zeros(len(header), np.int64), header_len)
    length = np.asarray(header_len, np.int64)
    if rule.get("covers", "header") == "segment":
        total = total + body_sum
        length = length + body_len
    if rule.get("pseudo_header"):
        total = total + pseudo_header_sum(src, dst, proto, length)
    value = checksum(total)
    if rule.get("zero_becomes") is not None:
        value = np.where(value == 0, int(rule["zero_becomes"]), value)
    return value


# --- a protocol's checksum as its rule file declares it (``checksum:`` block) ------------------

def covered_sums(mat: np.ndarray, rules, start: np.ndarray, header_len: np.ndarray,
                 total_len: np.ndarray, src: np.ndarray | None = None,
                 dst: np.ndarray | None = None) -> np.ndarray:
    """Word sums that protocol ``rules``' checksum covers in each row of ``mat``.

    From ``start``: ``header_len`` bytes where the file's ``covers`` is ``header``, ``total_len``
    (the header and all it carries) where it is ``segment``; plus, where ``pseudo_header``, the
    pseudo-header of (N, 16) address rows ``src``/``dst``, the protocol's number and
    ``total_len``. Repair stores ``stored_value`` of it; validation checks ``verify`` of it (the
    stored field included)."""
    ck = rules.checksum
    total = region_sum(mat, start, header_len if ck["covers"] == "header" else total_len)
    if ck["pseudo_header"]:
        total = total + pseudo_header_sum(src, dst, np.full(len(mat), rules.number, np.int64),
                                          total_len)
    return total


def stored_value(rules, total: np.ndarray) -> np.ndarray:
    """The checksum field's value for sums ``total`` (``zero_becomes`` applied)."""
    v = checksum(total)
    zb = rules.checksum.get("zero_becomes")
    return v if zb is None else np.where(v == 0, int(zb), v)


def field_byte(rules) -> int:
    """Byte offset of the checksum field within its header."""
    return rules.field(rules.checksum["field"]).offset // 8
