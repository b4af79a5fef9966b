"""Header fields read from packet bytes, by name, for whole batches at once.

Where a field sits (its section, first bit, width) comes from ``layout.SECTIONS``; this module
adds the few facts about the protocols that the field table cannot say by itself: which IP
protocol number and IP version select which section, which field gives a header's own length,
and which fields of different sections mean the same thing (ports, addresses, next protocol).
Every reader of header bytes (codec, CSV writer and reader, validate, repair priors, evaluation)
goes through here, so an offset is never typed twice.

Bytes come from a *byte source*: any callable ``src(j)`` giving byte ``j`` of the header as an
(N,) int64 array, one value per packet. ``header_bytes`` makes one from a window of packet bytes
((N, W) uint8, e.g. ``Parsed.window``) and each packet's header start; the codec builds others
over a capture's buffer or over an image's bytes.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from netdiff.bits.layout import SECTION_BYTES, SECTION_ORDER, field_table

ByteSource = Callable[[int], np.ndarray]


class Field(NamedTuple):
    """Where a field sits in its header."""

    section: str
    offset: int     # first bit, counted from the start of the section's header
    width: int      # bits

    @property
    def first_byte(self) -> int:
        return self.offset // 8

    @property
    def end_byte(self) -> int:
        """One past the last byte holding any of the field's bits."""
        return (self.offset + self.width + 7) // 8


# The tree's one table of where header fields sit on the wire: readers here, writers
# (codec.pack_fields / put_field, repair) and tests all look fields up in it.
FIELDS: dict[str, Field] = {name: Field(sec, start, width)
                            for sec, name, start, width in field_table(SECTION_ORDER)}

# IP protocol number <-> transport section, IP version <-> IP section.
PROTO_SECTIONS = {6: "tcp", 17: "udp", 1: "icmp"}
SECTION_PROTOS = {sec: num for num, sec in PROTO_SECTIONS.items()}
VERSION_SECTIONS = {4: "ipv4", 6: "ipv6"}
SECTION_VERSIONS = {sec: v for v, sec in VERSION_SECTIONS.items()}

# Headers that say their own length: (length field, bytes per unit, the options field that
# length covers beyond the fixed part). Every other header is as long as its section.
LENGTH_FIELDS = {"ipv4": ("ipv4_hl", 4, "ipv4_opt"), "tcp": ("tcp_doff", 4, "tcp_opt")}
FIXED_BYTES = {sec: SECTION_BYTES[sec] - (FIELDS[LENGTH_FIELDS[sec][2]].width // 8
                                          if sec in LENGTH_FIELDS else 0)
               for sec in SECTION_BYTES}
assert FIXED_BYTES == {"eth": 14, "ipv4": 20, "ipv6": 40, "tcp": 20, "udp": 8, "icmp": 8}

# The same quantity under each IP version or transport. An IP packet's total length is its
# length field plus the header bytes that field leaves out (IPv6 counts only the payload).
IP_VERSION = {"ipv4": "ipv4_ver", "ipv6": "ipv6_ver"}
IP_PROTOCOL = {"ipv4": "ipv4_proto", "ipv6": "ipv6_nh"}
IP_TTL = {"ipv4": "ipv4_ttl", "ipv6": "ipv6_hl"}
TOTAL_LENGTH = {"ipv4": ("ipv4_tl", 0), "ipv6": ("ipv6_len", FIXED_BYTES["ipv6"])}
ADDRESSES = {"ipv4": ("ipv4_src", "ipv4_dst"), "ipv6": ("ipv6_src", "ipv6_dst")}
PORTS = {"tcp": ("tcp_sprt", "tcp_dprt"), "udp": ("udp_sport", "udp_dport")}
PORTED_SECTIONS = {num: sec for num, sec in PROTO_SECTIONS.items() if sec in PORTS}
# Where the IPv4 header says the packet is a fragment (more fragments, offset).
FRAGMENT_FIELDS = ("ipv4_mfbit", "ipv4_foff")
# A misspelt name in the tables above would only fail when a packet reaches it.
assert {name for table in (IP_VERSION, IP_PROTOCOL, IP_TTL) for name in table.values()} | {
    name for table in (ADDRESSES, PORTS) for pair in table.values() for name in pair} | {
    TOTAL_LENGTH[s][0] for s in TOTAL_LENGTH} | set(FRAGMENT_FIELDS) <= set(FIELDS)


def field(name: str) -> Field:
    try:
        return FIELDS[name]
    except KeyError:
        raise KeyError(f"no header field {name!r} in the field table (bits/layout.py)") from None


def cached(src: ByteSource) -> ByteSource:
    """``src`` reading each byte once: fields sharing a byte (version and IHL, flag bits) gather
    it once."""
    memo: dict[int, np.ndarray] = {}

    def read(j: int) -> np.ndarray:
        v = memo.get(j)
        if v is None:
            v = memo[j] = src(j)
        return v

    return read


class HeaderBytes:
    """Byte source over an (N, W) uint8 window: byte j of the header that starts at
    ``start[i]`` in row ``rows[i]`` (every row when ``rows`` is None), 0 outside the window (a
    header cut by the capture reads as the zeros the window holds past each packet's end).
    Bytes are cached, and ``span`` gathers a run of them (an address) in one indexing."""

    def __init__(self, window: np.ndarray, start: np.ndarray, rows: np.ndarray | None = None):
        self.window = window
        self.start = np.broadcast_to(np.asarray(start, dtype=np.int64),
                                     (len(window) if rows is None else len(rows),))
        self.subset = rows
        self.rows = np.arange(len(window)) if rows is None else np.asarray(rows)
        n = len(self.rows)
        self.lo = int(self.start.min()) if n else 0
        self.hi = int(self.start.max()) if n else 0
        self.memo: dict[int, np.ndarray] = {}

    def __call__(self, j: int) -> np.ndarray:
        v = self.memo.get(j)
        if v is None:
            v = self.memo[j] = self.span(j, j + 1)[:, 0].astype(np.int64)
        return v

    def span(self, j0: int, j1: int) -> np.ndarray:
        """(N, j1 - j0) uint8: bytes j0 .. j1-1 of every header."""
        g, width, n = self.window, self.window.shape[1], len(self.rows)
        if n == 0 or width == 0:
            return np.zeros((n, j1 - j0), dtype=np.uint8)
        if self.lo + j0 >= 0 and self.hi + j1 <= width:
            if self.lo == self.hi:              # one offset for all (one link type): a slice
                cols = slice(self.lo + j0, self.lo + j1)
                return g[:, cols] if self.subset is None else g[self.subset, cols]
            if j1 - j0 == 1:
                return g[self.rows, self.start + j0][:, None]
            return g[self.rows[:, None], self.start[:, None] + np.arange(j0, j1)]
        at = self.start[:, None] + np.arange(j0, j1)
        inside = (at >= 0) & (at < width)
        return np.where(inside, g[self.rows[:, None], np.clip(at, 0, width - 1)], 0).astype(np.uint8)


def header_bytes(window: np.ndarray, start: np.ndarray, rows: np.ndarray | None = None) -> HeaderBytes:
    """The byte source of the headers that start at ``start`` in each row of ``window`` (or in
    the chosen ``rows`` of it, ``start`` then one offset per chosen row), e.g. ``Parsed.l3``."""
    return HeaderBytes(window, start, rows)


def read_bits(src: ByteSource, bit_offset: int, width: int) -> np.ndarray:
    """(N,) int64: the ``width`` bits starting ``bit_offset`` bits into each header, MSB first."""
    first, last = bit_offset // 8, (bit_offset + width - 1) // 8
    if last - first >= 7:
        raise ValueError(f"a {width}-bit field at bit {bit_offset} does not fit an int64; "
                         "read it with read_field_bytes")
    v = src(first)
    for j in range(first + 1, last + 1):
        v = (v << 8) | src(j)
    shift = 8 * (last + 1) - bit_offset - width
    if shift:
        v = v >> shift
    if bit_offset % 8:
        v = v & ((1 << width) - 1)
    return v


def read_field(src: ByteSource, name: str) -> np.ndarray:
    """(N,) int64 value of one field (up to 56 bits) of the header ``src`` reads."""
    f = field(name)
    return read_bits(src, f.offset, f.width)


def read_field_bytes(src: ByteSource, name: str) -> np.ndarray:
    """(N, width / 8) uint8 bytes of a byte-aligned field (addresses, options)."""
    f = field(name)
    if f.offset % 8 or f.width % 8:
        raise ValueError(f"{name} is not whole bytes; read it with read_field")
    if isinstance(src, HeaderBytes):
        return src.span(f.first_byte, f.end_byte)
    return np.stack([src(j) for j in range(f.first_byte, f.end_byte)], axis=1).astype(np.uint8)


def header_length(src: ByteSource, section: str) -> np.ndarray:
    """(N,) int64 bytes the header declares (IPv4 IHL, TCP data offset); a header of fixed
    length gives that length as one int64, which broadcasts (its bytes are not read)."""
    if section in LENGTH_FIELDS:
        name, unit, _ = LENGTH_FIELDS[section]
        return read_field(src, name) * unit
    return np.int64(FIXED_BYTES[section])


def total_length(src: ByteSource, section: str) -> np.ndarray:
    """(N,) int64 IP packet bytes (header included) by the IP header's length field."""
    name, extra = TOTAL_LENGTH[section]
    v = read_field(src, name)
    return v + extra if extra else v


def per_section(key: np.ndarray, sections: dict[int, str], value: Callable[[str], np.ndarray],
                default: int = 0) -> np.ndarray:
    """(N,) int64: per packet, ``value(section)`` of the section its ``key`` selects
    (``sections``: PROTO_SECTIONS for an IP protocol number, VERSION_SECTIONS for an IP
    version), ``default`` where it selects none. ``value`` is called only for sections some
    packet has; with a cached byte source, sections whose fields share bytes read them once."""
    out = np.full(len(key), default, dtype=np.int64)
    for k, sec in sections.items():
        m = key == k
        if m.any():
            out = np.where(m, value(sec), out)
    return out
