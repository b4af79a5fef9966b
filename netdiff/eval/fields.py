"""Header fields decoded from nPrint bit rows (integers, -1 where the field is absent).

Every value comes from the bit matrix through ``layout.fields``, so real pcaps and generated
images decode the same way. A field counts as absent in a row when any of its bits is fill.
"""
from __future__ import annotations

import numpy as np

from netdiff.bits.fields import IP_PROTOCOL, IP_TTL, IP_VERSION, PORTS, TOTAL_LENGTH
from netdiff.bits.layout import SECTIONS, Layout

ABSENT = -1
# Decoded fields compared between sets, and how: "cat" -> JSD over values, "num" -> EMD too.
FIELD_KINDS = {
    "protocol": "cat", "packet_length": "num", "ttl": "num", "sport": "cat", "dport": "cat",
    "tcp_flags": "cat", "tcp_window": "num", "ip_version": "cat",
}
# The one-bit fields of TCP, in wire order: NS .. FIN.
TCP_FLAG_FIELDS = tuple(name for name, width in SECTIONS["tcp"] if width == 1)
assert TCP_FLAG_FIELDS[0] == "tcp_ns" and TCP_FLAG_FIELDS[-1] == "tcp_fin"


def field_int(bits: np.ndarray, layout: Layout, name: str) -> np.ndarray:
    """One field as int64 per row, MSB first; ABSENT where any bit is fill or the layout lacks it."""
    sl = layout.fields.get(name)
    if sl is None:
        return np.full(len(bits), ABSENT, dtype=np.int64)
    return bits_int(bits[:, sl])


def bits_int(block: np.ndarray) -> np.ndarray:
    """(N, w <= 62) ternary block -> int64 per row, ABSENT where any bit is fill."""
    w = block.shape[1]
    if w > 62:
        raise ValueError(f"{w}-bit field does not fit an int64")
    weights = (np.int64(1) << np.arange(w - 1, -1, -1, dtype=np.int64))
    val = (block == 1).astype(np.int64) @ weights
    val[np.any(block < 0, axis=1)] = ABSENT
    return val


def _first_present(*cols: np.ndarray) -> np.ndarray:
    out = cols[0].copy()
    for c in cols[1:]:
        out = np.where(out == ABSENT, c, out)
    return out


def decode_fields(bits: np.ndarray, layout: Layout) -> dict[str, np.ndarray]:
    """The decoded header fields of FIELD_KINDS, one int64 array each."""
    f = lambda name: field_int(bits, layout, name)  # noqa: E731

    def total(sec: str) -> np.ndarray:
        name, extra = TOTAL_LENGTH[sec]
        v = f(name)
        return np.where(v == ABSENT, ABSENT, v + extra)

    # IPv4's value where the row holds one, else IPv6's (TCP's, else UDP's for ports).
    out = {
        "ip_version": _first_present(*map(f, IP_VERSION.values())),
        "protocol": _first_present(*map(f, IP_PROTOCOL.values())),
        "packet_length": _first_present(*map(total, TOTAL_LENGTH)),
        "ttl": _first_present(*map(f, IP_TTL.values())),
        "sport": _first_present(*(f(src) for src, _ in PORTS.values())),
        "dport": _first_present(*(f(dst) for _, dst in PORTS.values())),
        "tcp_window": f("tcp_wsize"),
    }
    if all(name in layout.fields for name in TCP_FLAG_FIELDS):
        first, last = layout.fields[TCP_FLAG_FIELDS[0]], layout.fields[TCP_FLAG_FIELDS[-1]]
        out["tcp_flags"] = bits_int(bits[:, first.start:last.stop])
    else:
        out["tcp_flags"] = np.full(len(bits), ABSENT, dtype=np.int64)
    return out


def field_bytes(bits: np.ndarray, layout: Layout, name: str) -> np.ndarray:
    """(N, width/8) uint8 of a byte-aligned field (fill bits read as 0); zeros if absent."""
    sl = layout.fields.get(name)
    if sl is None:
        return np.zeros((len(bits), 0), dtype=np.uint8)
    return np.packbits(bits[:, sl] == 1, axis=1)
