"""Packets <-> nPrint bit matrices, vectorised over whole batches.

Encoding follows nPrint 1.2.1: a header present in the packet is copied byte for byte (MSB
first) up to its own length (IHL, doff), the rest of the section's budget is fill; a header not
in the packet is all fill. Packets nPrint gives no row (not IPv4/IPv6 with TCP/UDP/ICMP) are
returned with the reason they were left out.

Decoding is the inverse for one row: a byte is "covered" by the matrix when none of its 8 bits
is fill; covered bytes are written over a base packet at the offsets the row's own IHL/doff give.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from netdiff.bits.layout import SECTION_BYTES, Layout
from netdiff.io import pcap as P

# Why a packet gets no row (index = code); 0 means it was encoded.
SKIP_REASONS = (
    "",
    "empty packet (0 bytes captured)",
    "not IPv4 or IPv6 (link-layer protocol)",
    "IP version is neither 4 nor 6",
    "truncated IP header",
    "IPv4 header length below 20 bytes",
    "IP fragment after the first (holds no transport header)",
    "IPv4 payload is not TCP, UDP or ICMP",
    "ICMPv6 (nPrint has no ICMPv6 section)",
    "IPv6 extension header before the transport header",
    "IPv6 payload is not TCP, UDP or ICMP",
    "802.1Q/QinQ-tagged frame (nPrint reads no VLAN tags)",
)
(OK, R_EMPTY, R_NONIP, R_VERSION, R_TRUNC_IP, R_IHL, R_FRAG, R_PROTO4, R_ICMP6, R_EXT6,
 R_PROTO6, R_VLAN) = range(len(SKIP_REASONS))
IPV6_EXTENSIONS = (0, 43, 44, 50, 51, 60, 135, 139, 140, 253, 254)
VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)
TRANSPORT_PROTOS = {6: "tcp", 17: "udp", 1: "icmp"}

_FILL_CODE = 256


def _bit_lut(fill: int) -> np.ndarray:
    lut = np.empty((257, 8), dtype=np.int8)
    lut[:256] = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1)
    lut[256] = fill
    return lut


_LUTS: dict[int, np.ndarray] = {}


def bit_lut(fill: int) -> np.ndarray:
    """(257,) int64 whose 8 bytes are the 8 int8 bit values of each byte code: one ``take``
    expands a whole byte matrix to bits."""
    if fill not in _LUTS:
        _LUTS[fill] = np.ascontiguousarray(_bit_lut(fill)).view(np.int64).reshape(257)
    return _LUTS[fill]


@dataclass
class Parsed:
    """Per-packet header offsets and types for a batch (arrays of the batch's length)."""

    reason: np.ndarray      # int8 code, 0 = encodable
    eth: np.ndarray         # bool, Ethernet header present
    l3: np.ndarray          # int64, offset of the IP header
    version: np.ndarray     # 4 / 6 / 0
    ip_hlen: np.ndarray     # IP header bytes (IHL * 4, or 40)
    proto: np.ndarray       # 6 / 17 / 1 (0 when skipped)
    l4: np.ndarray          # offset of the transport header
    l4_hlen: np.ndarray     # transport header bytes declared (doff * 4, 8, 8)
    payload_len: np.ndarray # payload bytes by the IP lengths (>= 0)
    window: np.ndarray = field(repr=False, default=None)   # gathered bytes (N, W)


def _be16(g: np.ndarray, rows: np.ndarray, at: np.ndarray) -> np.ndarray:
    return (g[rows, at].astype(np.int64) << 8) | g[rows, at + 1]


def gather_window(batch: P.PacketBatch, width: int) -> np.ndarray:
    """(N, width) uint8: each packet's first ``width`` bytes, zero beyond its captured length."""
    n = len(batch)
    if n == 0:
        return np.zeros((0, width), dtype=np.uint8)
    data = batch.data
    if len(data) < int(batch.offset.max()) + width:
        data = np.concatenate([data, np.zeros(width, dtype=np.uint8)])
    # Row gather over a strided view of the buffer: one contiguous copy per packet.
    windows = np.lib.stride_tricks.as_strided(data, shape=(len(data) - width + 1, width),
                                              strides=(data.strides[0], data.strides[0]), writeable=False)
    g = windows[batch.offset]
    short = np.flatnonzero(batch.caplen < width)
    if len(short):
        g[short] *= (np.arange(width) < batch.caplen[short, None])
    return g


def parse(batch: P.PacketBatch, payload_bytes: int = 0, fragments: str = "skip",
          vlan: bool = True) -> Parsed:
    """Find every packet's IP and transport headers.

    ``fragments``: "skip" later fragments, or "nprint" to read them as nPrint does (their first
    payload bytes taken as a transport header). ``vlan=False`` gives tagged frames no row, as
    nPrint (which reads no 802.1Q tags) does."""
    n = len(batch)
    width = 26 + 60 + 60 + payload_bytes
    g = gather_window(batch, width)
    rows = np.arange(n)
    cap = batch.caplen
    reason = np.zeros(n, dtype=np.int8)
    l3 = np.zeros(n, dtype=np.int64)
    eth = np.zeros(n, dtype=bool)
    is_ip = np.zeros(n, dtype=bool)
    lt = batch.linktype

    m = lt == P.LINKTYPE_ETHERNET
    if m.any():
        r = rows[m]
        et = _be16(g, r, np.full(len(r), 12))
        off = np.full(len(r), 14, dtype=np.int64)
        vlan_tagged = np.isin(et, VLAN_TPIDS)
        for _ in range(3 if vlan else 0):   # 802.1Q / QinQ tags
            tagged = np.isin(et, VLAN_TPIDS)
            if not tagged.any():
                break
            et = np.where(tagged, _be16(g, r, off + 2), et)
            off = off + 4 * tagged
        l3[r] = off
        is_ip[r] = np.isin(et, (0x0800, 0x86DD)) & (cap[r] >= off)
        eth[r] = is_ip[r]
        if not vlan:
            reason[r[vlan_tagged]] = R_VLAN
            is_ip[r[vlan_tagged]] = True   # keeps the reason above
    m = np.isin(lt, (*P.LINKTYPE_RAW_ALIASES, P.LINKTYPE_IPV4, P.LINKTYPE_IPV6))
    is_ip[m] = True
    for lts, hdr, at in (((P.LINKTYPE_LINUX_SLL,), 16, 14), ((P.LINKTYPE_LINUX_SLL2,), 20, 0)):
        m = np.isin(lt, lts)
        if m.any():
            r = rows[m]
            l3[r] = hdr
            is_ip[r] = np.isin(_be16(g, r, np.full(len(r), at)), (0x0800, 0x86DD))
    m = np.isin(lt, (P.LINKTYPE_NULL, P.LINKTYPE_LOOP))
    if m.any():
        r = rows[m]
        l3[r] = 4
        le = g[r, 0].astype(np.int64) | (g[r, 1].astype(np.int64) << 8) | \
            (g[r, 2].astype(np.int64) << 16) | (g[r, 3].astype(np.int64) << 24)
        be = (g[r, 0].astype(np.int64) << 24) | (g[r, 1].astype(np.int64) << 16) | \
            (g[r, 2].astype(np.int64) << 8) | g[r, 3]
        fam = np.where((lt[r] == P.LINKTYPE_NULL) & (le < 256), le, be)
        is_ip[r] = np.isin(fam, (2, 10, 24, 28, 30))

    reason[~is_ip & (reason == 0)] = R_NONIP
    reason[cap == 0] = R_EMPTY
    l3c = np.minimum(l3, width - 61)
    first = g[rows, l3c]
    version = (first >> 4).astype(np.int64)
    reason[(reason == 0) & (cap <= l3)] = R_TRUNC_IP
    reason[(reason == 0) & ~np.isin(version, (4, 6))] = R_VERSION

    v4 = (reason == 0) & (version == 4)
    v6 = (reason == 0) & (version == 6)
    ip_hlen = np.where(v4, (first & 15).astype(np.int64) * 4, np.where(v6, 40, 0))
    reason[v4 & (ip_hlen < 20)] = R_IHL
    reason[(reason == 0) & (cap < l3 + np.maximum(ip_hlen, 20))] = R_TRUNC_IP
    v4 &= reason == 0
    v6 &= reason == 0

    proto = np.zeros(n, dtype=np.int64)
    proto[v4] = g[rows[v4], l3c[v4] + 9]
    proto[v6] = g[rows[v6], l3c[v6] + 6]
    ip_total = np.zeros(n, dtype=np.int64)
    ip_total[v4] = _be16(g, rows[v4], l3c[v4] + 2)
    ip_total[v6] = _be16(g, rows[v6], l3c[v6] + 4) + 40
    if fragments == "skip":
        foff = np.zeros(n, dtype=np.int64)
        foff[v4] = _be16(g, rows[v4], l3c[v4] + 6) & 0x1FFF
        reason[v4 & (foff > 0)] = R_FRAG
    known = np.isin(proto, (6, 17, 1))
    reason[(reason == 0) & v4 & ~known] = R_PROTO4
    reason[(reason == 0) & v6 & (proto == 58)] = R_ICMP6
    reason[(reason == 0) & v6 & np.isin(proto, IPV6_EXTENSIONS)] = R_EXT6
    reason[(reason == 0) & v6 & ~known] = R_PROTO6
    ok = reason == 0
    proto[~ok] = 0
    version = np.where(ok, version, 0)

    l4 = l3 + ip_hlen
    l4c = np.minimum(l4, width - 61)
    l4_hlen = np.zeros(n, dtype=np.int64)
    tcp = proto == 6
    l4_hlen[tcp] = (g[rows[tcp], l4c[tcp] + 12] >> 4).astype(np.int64) * 4
    # A TCP header cut by the capture reads as the bytes that are there (zero beyond).
    l4_hlen[(proto == 17) | (proto == 1)] = 8
    payload_len = np.where(ok, np.maximum(ip_total - ip_hlen - l4_hlen, 0), 0)
    return Parsed(reason, eth & ok, l3, version, np.where(ok, ip_hlen, 0), proto, l4, l4_hlen,
                  payload_len, g)


def _section_bytes(p: Parsed, cap: np.ndarray, sec: str, payload_bytes: int):
    """(start offset, valid byte count, budget) of one section for every packet."""
    if sec == "eth":
        return np.zeros_like(p.l3), np.where(p.eth, 14, 0), 14
    if sec == "ipv4":
        return p.l3, np.where(p.version == 4, p.ip_hlen, 0), 60
    if sec == "ipv6":
        return p.l3, np.where(p.version == 6, 40, 0), 40
    if sec in ("tcp", "udp", "icmp"):
        num = {"tcp": 6, "udp": 17, "icmp": 1}[sec]
        return p.l4, np.where(p.proto == num, p.l4_hlen, 0), SECTION_BYTES[sec]
    start = p.l4 + p.l4_hlen
    return start, np.minimum(p.payload_len, payload_bytes), payload_bytes


@lru_cache(maxsize=64)
def kept_bytes(layout: Layout) -> np.ndarray | None:
    """Byte columns (of the full byte matrix) the layout keeps, or None if a dropped field is not
    byte-aligned (then whole bit columns are selected instead). Cached per layout: read-only."""
    keep = layout.keep
    if len(keep) % 8 or layout.full_width % 8:
        return None
    k = keep.reshape(-1, 8)
    if not (np.all(k[:, 0] % 8 == 0) and np.all(np.diff(k, axis=1) == 1)):
        return None
    out = k[:, 0] // 8
    out.setflags(write=False)
    return out


def _rows_at(g: np.ndarray, start: np.ndarray, budget: int, out: np.ndarray) -> None:
    """out[i, :] = g[i, start[i] : start[i] + budget] (zero past the window), by slicing per
    distinct start offset (a chunk has a handful: link header sizes, IHL and doff values)."""
    n, width = g.shape
    starts = np.unique(start)
    for s0 in starts.tolist():
        take = max(0, min(budget, width - s0))
        if len(starts) == 1:
            out[:, :take] = g[:, s0:s0 + take]
            out[:, take:] = 0
            return
        rows = np.flatnonzero(start == s0)
        out[rows, :take] = g[rows, s0:s0 + take]
        out[rows, take:] = 0


def byte_codes(batch: P.PacketBatch, p: Parsed, layout: Layout) -> np.ndarray:
    """(rows, full bytes) uint16: the byte value, or 256 where the section is fill."""
    ok = np.flatnonzero(p.reason == 0)
    g = p.window[ok] if len(ok) < len(p.reason) else p.window
    cap = batch.caplen[ok]
    budgets = [(sec, layout.payload_bytes if sec == "payload" else SECTION_BYTES[sec])
               for sec in layout.sections]
    codes = np.empty((len(ok), sum(b for _, b in budgets)), dtype=np.uint16)
    c0 = 0
    for sec, budget in budgets:
        if budget == 0:
            continue
        start, nvalid, _ = _section_bytes(p, batch.caplen, sec, layout.payload_bytes)
        start, nvalid = start[ok], nvalid[ok]
        block = codes[:, c0:c0 + budget]
        _rows_at(g, start, budget, block)
        limit = np.minimum(nvalid, np.maximum(cap - start, 0))
        np.copyto(block, _FILL_CODE, where=np.arange(budget) >= limit[:, None])
        c0 += budget
    return codes


def encode(batch: P.PacketBatch, layout: Layout, fill: int = -1, fragments: str = "skip",
           vlan: bool = True, parsed: Parsed | None = None) -> tuple[np.ndarray, Parsed]:
    """The int8 bit matrix (one row per encodable packet, ``layout.width`` columns) and the parse.

    Rows are the packets with ``parsed.reason == 0``, in order."""
    p = parsed if parsed is not None else parse(batch, layout.payload_bytes, fragments, vlan)
    codes = byte_codes(batch, p, layout)
    lut = bit_lut(fill)
    kb = kept_bytes(layout)
    n = len(codes)
    if kb is not None:
        return np.take(lut, codes[:, kb]).view(np.int8).reshape(n, layout.width), p
    return np.take(lut, codes).view(np.int8).reshape(n, layout.full_width)[:, layout.keep], p


def skipped_counts(p: Parsed) -> Counter:
    codes, counts = np.unique(p.reason[p.reason > 0], return_counts=True)
    return Counter({SKIP_REASONS[c]: int(k) for c, k in zip(codes, counts)})


# --- decoding -----------------------------------------------------------------------------------

def full_bits(bits: np.ndarray, layout: Layout, fill: int = -1) -> np.ndarray:
    """Kept columns back into the full-section matrix; dropped fields become fill."""
    if len(layout.keep) == layout.full_width:
        return bits
    out = np.full((len(bits), layout.full_width), fill, dtype=np.int8)
    out[:, layout.keep] = bits
    return out


_GATHER_BITS = np.uint64(sum(1 << (63 - 9 * k) for k in range(8)))


def bits_to_bytes(full: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, bytes) values and a mask of bytes whose 8 bits are all 0/1 (covered).

    Each group of 8 int8 values is read as one uint64: a byte is covered when no value has its
    sign bit set, and one multiply gathers the 8 low bits (MSB first) into the top byte."""
    n = len(full)
    v = np.ascontiguousarray(full, dtype=np.int8).reshape(n, -1, 8).view(np.uint64)[..., 0]
    covered = (v & np.uint64(0x8080808080808080)) == 0
    vals = ((v & np.uint64(0x0101010101010101)) * _GATHER_BITS) >> np.uint64(56)
    return vals.astype(np.uint8), covered


def overlay(base: P.PacketBatch, bits: np.ndarray, layout: Layout, l3: np.ndarray,
            fill: int = -1) -> P.PacketBatch:
    """Write each row's covered header bytes over the matching base packet.

    ``base`` holds the bytes the matrix does not (link header, addresses when dropped, payload);
    offsets come from the rows themselves, so a changed IHL or doff moves what follows it."""
    if kept_bytes(layout) is not None:
        return overlay_bytes(base, *bits_to_bytes(bits), layout, l3)
    return overlay_bytes(base, *bits_to_bytes(full_bits(bits, layout, fill)),
                         Layout(sections=layout.sections, payload_bytes=layout.payload_bytes), l3)


@lru_cache(maxsize=64)
def _byte_blocks(layout: Layout) -> tuple[dict, list]:
    """Where an image's byte columns land: {(section, byte): image column}, and per section its
    run of image columns (contiguous: kept columns keep nPrint's order) with their byte offsets."""
    kb = kept_bytes(layout)
    full = [(sec, j) for sec in layout.sections
            for j in range(layout.payload_bytes if sec == "payload" else SECTION_BYTES[sec])]
    where = {full[c]: i for i, c in enumerate(kb.tolist())}
    blocks = []
    for sec in layout.sections:
        cols = [i for (s, _), i in where.items() if s == sec]
        if cols:
            i0, i1 = min(cols), max(cols) + 1
            blocks.append((sec, i0, i1, np.array([full[c][1] for c in kb[i0:i1].tolist()])))
    return where, blocks


def overlay_bytes(base: P.PacketBatch, vals: np.ndarray, covered: np.ndarray, layout: Layout,
                  l3: np.ndarray) -> P.PacketBatch:
    """``overlay`` from the image's byte values and covered mask (``bits_to_bytes`` of its
    columns; the layout's dropped fields must be whole bytes)."""
    n = len(base)
    if kept_bytes(layout) is None:
        raise ValueError("overlay_bytes needs a layout whose dropped fields are whole bytes")
    where, blocks = _byte_blocks(layout)
    data = base.data.copy()

    def header_byte(secs: tuple[str, ...], j: int, off: np.ndarray) -> np.ndarray:
        """Byte j of a header: the row's own value where the image covers it, else the base's."""
        safe = np.minimum(off, np.maximum(base.caplen - 1, 0))
        out = np.where(off < base.caplen, data[base.offset + safe], 0).astype(np.int64)
        for sec in secs:
            c = where.get((sec, j))
            if c is not None:
                out = np.where(covered[:, c], vals[:, c], out)
        return out

    # Where each section starts in each packet, from the rows' own IHL / doff.
    first = header_byte(("ipv4", "ipv6"), 0, l3)
    ver = first >> 4
    l4 = l3 + np.where(ver == 4, (first & 15) * 4, 40)
    proto = np.where(ver == 4, header_byte(("ipv4",), 9, l3 + 9), header_byte(("ipv6",), 6, l3 + 6))
    doff = (header_byte(("tcp",), 12, l4 + 12) >> 4) * 4
    starts = {"eth": np.zeros(n, dtype=np.int64), "ipv4": l3, "ipv6": l3, "tcp": l4, "udp": l4,
              "icmp": l4, "payload": l4 + np.where(proto == 6, doff, 8)}
    # Per section, its block of columns at the rows' own offsets; a block no row covers (UDP in
    # a TCP capture) costs one test.
    dest = base.offset[:, None]
    room = base.caplen[:, None]
    for sec, i0, i1, offs in blocks:
        cov = covered[:, i0:i1]
        if not cov.any():
            continue
        at = starts[sec][:, None] + offs
        keep = cov & (at < room)
        data[(at + dest)[keep]] = vals[:, i0:i1][keep]
    return P.PacketBatch(data, base.offset, base.caplen, base.wirelen, base.ts_sec, base.ts_nsec,
                         base.linktype, base.number)


def address_words(g: np.ndarray, l3: np.ndarray, v4: np.ndarray, off4: int, off6: int) -> tuple[np.ndarray, np.ndarray]:
    """An address of every packet as two 64-bit words (the bytes in order, IPv4's 4 then zeros),
    a key flows can be sorted and hashed by. ``g``: (n, W) packet bytes; ``l3``: IP header start;
    ``off4``/``off6``: the address's offset in an IPv4/IPv6 header (12/8 source, 16/24 destination)."""
    n = len(g)
    rows = np.arange(n)
    at = np.where(v4, l3 + off4, l3 + off6)
    j = np.arange(16)
    b = g[rows[:, None], np.minimum(at[:, None] + j, g.shape[1] - 1)].astype(np.uint64)
    b[j >= np.where(v4, 4, 16)[:, None]] = 0
    hi = np.zeros(n, np.uint64)
    lo = np.zeros(n, np.uint64)
    for i in range(8):
        hi = (hi << np.uint64(8)) | b[:, i]
        lo = (lo << np.uint64(8)) | b[:, 8 + i]
    return hi, lo
