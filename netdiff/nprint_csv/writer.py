"""pcap -> nPrint CSV, byte-identical to the nPrint tool (``netdiff nprint -P ... -W ...``).

Formatting is vectorised: every value becomes a fixed 3-byte cell ("-1,", "0,", "1,"), the
unused byte is dropped with one boolean mask, and only the short per-row prefix (index and
timestamps) is formatted in Python.
"""
from __future__ import annotations

from collections import Counter
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from netdiff.bits.codec import SKIP_REASONS, Parsed, bit_lut, byte_reader, encode, skipped_counts
from netdiff.bits.fields import (ADDRESSES, PORTED_SECTIONS, PORTS, SECTION_PROTOS,
                                 SECTION_VERSIONS, header_bytes, per_section, read_field,
                                 read_field_bytes)
from netdiff.bits.layout import Layout
from netdiff.errors import NetdiffError
from netdiff.io.atomic import atomic_open
from netdiff.io.pcap import CaptureReader, PacketBatch

# nPrint's -O index column names.
INDEX_NAMES = {0: "src_ip", 1: "dst_ip", 2: "src_prt", 3: "dst_prt", 4: "flow", 5: "tx_mac"}

_OCTET = [str(i) for i in range(256)]

# nPrint's wireless sections (-r, -w), written before eth in this order. They exist only in the
# CSV: images and the model never hold them, so they stay out of bits/layout.py's table.
WIRELESS_SECTIONS: dict[str, tuple[tuple[str, int], ...]] = {
    "radiotap": (("radiotap_reversion", 8), ("radiotap_pad0", 8), ("radiotap_len", 16),
                 ("radiotap_present", 96), ("radiotap_mactimestamp", 64), ("radiotap_flags", 8),
                 ("radiotap_rate", 8), ("radiotap_channel", 16), ("radiotap_channelflags", 16),
                 ("radiotap_antennasignal", 8), ("radiotap_pad1", 8), ("radiotap_rxflags", 16),
                 ("radiotap_pad2", 48), ("radiotap_timestamp", 96), ("radiotap_antennas", 32)),
    "wlan": (("wlan_type", 8), ("wlan_flag", 8), ("wlan_duration", 16), ("wlan_rx_addr", 48)),
}
WIRELESS_BYTES = {sec: sum(w for _, w in f) // 8 for sec, f in WIRELESS_SECTIONS.items()}
assert WIRELESS_BYTES == {"radiotap": 56, "wlan": 10}
WLAN_NO_TRANSMITTER = (0xC4, 0xD4, 0xE4)   # CTS, ACK, CF-End carry no transmitter address


def wireless_columns(wireless: tuple[str, ...]) -> list[str]:
    return [f"{name}_{i}" for sec in WIRELESS_SECTIONS if sec in wireless
            for name, width in WIRELESS_SECTIONS[sec] for i in range(width)]


def header_line(layout: Layout, index: int = 0, relative: bool = False, absolute: bool = False,
                wireless: tuple[str, ...] = ()) -> bytes:
    cols = [INDEX_NAMES[index]]
    if relative:
        cols.append("rts")
    if absolute:
        cols += ["tv_sec", "tv_usec"]
    return (",".join(cols + wireless_columns(wireless) + layout.columns) + "\n").encode()


def wlan_offset(batch: PacketBatch) -> np.ndarray:
    """Where each packet's 802.11 header starts: after the radiotap header's own length."""
    rows = np.arange(len(batch))
    b = byte_reader(batch)
    return b(rows, 2) | (b(rows, 3) << 8)


def wireless_bits(batch: PacketBatch, p: Parsed, wireless: tuple[str, ...], fill: int = -1) -> np.ndarray:
    """The -r/-w columns of the encoded rows: radiotap's first 56 bytes and the 802.11 header's
    first 10 for radiotap packets (bytes beyond the capture are fill), all fill for the others."""
    ok = np.flatnonzero(p.reason == 0)
    sub = batch.take(ok)
    radio = p.wireless[ok]
    blocks = []
    for sec in WIRELESS_SECTIONS:
        if sec not in wireless:
            continue
        width = WIRELESS_BYTES[sec]
        start = np.zeros(len(sub), dtype=np.int64) if sec == "radiotap" else wlan_offset(sub)
        at = start[:, None] + np.arange(width)
        rows = np.repeat(np.arange(len(sub)), width)
        codes = byte_reader(sub)(rows, at.ravel()).reshape(len(sub), width).astype(np.uint16)
        codes[~radio[:, None] | (at >= sub.caplen[:, None])] = 256
        blocks.append(np.take(bit_lut(fill), codes).view(np.int8).reshape(len(sub), 8 * width))
    return np.concatenate(blocks, axis=1) if blocks else np.zeros((len(ok), 0), np.int8)


def format_bits(bits: np.ndarray) -> list[bytes]:
    """One CSV fragment per row ("v,v,...,v\\n"), without any prefix.

    Rows with the same pattern of fill (-1) columns have the same text length and the same
    positions for their 0/1 digits, and a capture has few such patterns (section presence, IHL,
    doff). Per pattern, one template row is tiled and the digits written in one 2-D assignment:
    no per-value Python work and no variable-width packing."""
    n, n_cols = bits.shape
    out: list[bytes] = [b""] * n
    if n == 0:
        return out
    fill = bits == -1
    packed = np.packbits(fill, axis=1)
    packed = np.pad(packed, ((0, 0), (0, (-packed.shape[1]) % 8))).view(np.uint64)
    mult = np.random.default_rng(0).integers(1, 2 ** 63, packed.shape[1], dtype=np.uint64) | np.uint64(1)
    key = (packed * mult).sum(axis=1)                  # a hash of the fill pattern, wrapping
    _, inverse = np.unique(key, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.flatnonzero(np.diff(inverse[order])) + 1
    groups = list(np.split(order, bounds))
    while groups:
        rows = groups.pop()
        f = fill[rows[0]]
        same = (fill[rows] == f).all(axis=1)
        if not same.all():                             # a hash collision: split it off
            groups.append(rows[~same])
            rows = rows[same]
        width = np.where(f, 3, 2)                   # "-1," or "d,"
        start = np.concatenate([[0], np.cumsum(width)[:-1]])
        template = np.empty(int(width.sum()), dtype=np.uint8)
        template[start] = ord("0")
        template[start[f]] = ord("-")
        template[start[f] + 1] = ord("1")
        template[start + width - 1] = ord(",")
        template[-1] = ord("\n")
        digits = np.flatnonzero(~f)
        block = np.empty((len(rows), len(template)), dtype=np.uint8)
        block[:] = template
        if len(digits):
            block[:, start[digits]] = ord("0") + bits[rows][:, digits].astype(np.uint8)
        buf = block.tobytes()
        step = len(template)
        for k, r in enumerate(rows.tolist()):
            out[r] = buf[k * step:(k + 1) * step]
    return out


def _ipv4_text(q: np.ndarray) -> list[str]:
    o = _OCTET
    return [f"{o[a]}.{o[b]}.{o[c]}.{o[d]}" for a, b, c, d in q.tolist()]


def _ipv6_text(q: np.ndarray) -> list[str]:
    import ipaddress
    return [str(ipaddress.IPv6Address(bytes(r))) for r in q]


_ADDRESS_TEXT = {"ipv4": _ipv4_text, "ipv6": _ipv6_text}


def index_values(batch: PacketBatch, p: Parsed, index: int) -> list[str]:
    """The index column of every encoded row, as nPrint prints it."""
    ok = np.flatnonzero(p.reason == 0)
    g = p.window
    version = p.version[ok]
    proto = p.proto[ok]

    def addrs(end: int) -> list[str]:
        res = ["NULL"] * len(ok)             # nPrint's text for a row with no IP (radiotap)
        for sec, text in _ADDRESS_TEXT.items():
            i = np.flatnonzero(version == SECTION_VERSIONS[sec])
            if len(i):
                q = read_field_bytes(header_bytes(g, p.l3[ok[i]], rows=ok[i]), ADDRESSES[sec][end])
                for k, t in zip(i.tolist(), text(q)):
                    res[k] = t
        return res

    def ports(end: int) -> list[str]:
        l4 = header_bytes(g, p.l4[ok], rows=ok)
        val = per_section(proto, PORTED_SECTIONS, lambda sec: read_field(l4, PORTS[sec][end]))
        # nPrint 1.2.1 prints TCP ports without ntohs (host byte order on x86); kept for
        # compatibility. ICMP has no ports.
        swapped = ((val & 0xFF) << 8) | (val >> 8)
        val = np.where(proto == SECTION_PROTOS["tcp"], swapped, val)
        return [str(v) if pr in PORTED_SECTIONS else "NULL" for v, pr in zip(val.tolist(), proto.tolist())]

    if index == 0:
        return addrs(0)
    if index == 1:
        return addrs(1)
    if index == 2:
        return ports(0)
    if index == 3:
        return ports(1)
    if index == 4:
        kind = {num: sec.upper() for num, sec in PORTED_SECTIONS.items()}
        return [f"{a}_{b}_{c}_{d}_{kind.get(x, 'NULL')}" for a, b, c, d, x in
                zip(addrs(0), addrs(1), ports(0), ports(1), proto.tolist())]
    if index == 5:
        # nPrint's "wlan tx mac": only 802.11 frames have one; every other row is NULL
        out = ["NULL"] * len(ok)
        radio = np.flatnonzero(p.wireless[ok])
        if len(radio):
            # 802.11 transmitter address (addr2, bytes 10-15 of the 802.11 header)
            sub = batch.take(ok[radio])
            at = wlan_offset(sub)[:, None] + np.array([0, *range(10, 16)])
            b = byte_reader(sub)(np.repeat(np.arange(len(sub)), 7), at.ravel()).reshape(-1, 7)
            for i, row in zip(radio.tolist(), b.tolist()):
                out[i] = "None" if row[0] in WLAN_NO_TRANSMITTER else ":".join(f"{x:02x}" for x in row[1:])
        return out
    raise NetdiffError(f"-O must be 0..5 (got {index})")


class RelativeClock:
    """nPrint's ``rts``: microseconds since the previous *written* row, 0 for the first."""

    def __init__(self):
        self.prev_sec = 0
        self.prev_usec = 0

    def __call__(self, sec: np.ndarray, usec: np.ndarray) -> np.ndarray:
        if len(sec) == 0:                  # a chunk (or capture) that wrote no row
            return np.zeros(0, dtype=np.int64)
        ps = np.concatenate([[self.prev_sec], sec[:-1]])
        pu = np.concatenate([[self.prev_usec], usec[:-1]])
        rts = (sec - ps) * 1_000_000 + usec - pu
        rts[ps == 0] = 0
        self.prev_sec, self.prev_usec = int(sec[-1]), int(usec[-1])
        return rts


def format_rows(bits: np.ndarray, prefixes: list[list[str]]) -> bytes:
    body = format_bits(bits)
    if not prefixes:
        return b"".join(body)
    pre = [(",".join(cols) + ",").encode() for cols in zip(*prefixes)]
    return b"".join(x for pair in zip(pre, body) for x in pair)


def skipped_summary(counts) -> str:
    return ", ".join(f"{v} {k}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


__all__ = ["WIRELESS_SECTIONS", "wireless_columns", "wireless_bits", "header_line", "format_bits",
           "format_rows", "index_values", "RelativeClock", "SKIP_REASONS", "skipped_summary", "pcap_to_csv"]


def pcap_to_csv(path, out, layout: Layout, index: int = 0, relative: bool = False,
                absolute: bool = False, count: int = 0, fill: int = -1,
                fragments: str = "nprint", wireless: tuple[str, ...] = ()) -> dict:
    """nPrint's pcap -> CSV. ``count`` limits packets *read* (parsed or not), like nPrint's -c.
    ``wireless``: nPrint's -r/-w sections ("radiotap", "wlan"). ``out`` is a path (written
    atomically) or a binary stream. Returns a summary dict."""
    reader = CaptureReader(path)
    clock = RelativeClock()
    skipped: Counter = Counter()
    rows = read = radio_rows = 0
    own = not hasattr(out, "write")
    if own:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out) if own else nullcontext(out) as stream:
        stream.write(header_line(layout, index, relative, absolute, wireless))
        for batch in reader:
            if count and read + len(batch) > count:
                batch = batch.take(np.arange(count - read))
            read += len(batch)
            bits, p = encode(batch, layout, fill=fill, fragments=fragments, vlan=False, links="nprint")
            if wireless:
                bits = np.concatenate([wireless_bits(batch, p, wireless, fill), bits], axis=1)
            skipped += skipped_counts(p)
            radio_rows += int(p.wireless.sum())
            ok = p.reason == 0
            prefixes = [index_values(batch, p, index)]
            sec = batch.ts_sec[ok]
            usec = batch.ts_nsec[ok] // 1000
            if relative:
                prefixes.append([str(v) for v in clock(sec, usec).tolist()])
            if absolute:
                prefixes.append([str(v) for v in sec.tolist()])
                prefixes.append([str(v) for v in usec.tolist()])
            stream.write(format_rows(bits, prefixes))
            rows += len(bits)
            if count and read >= count:
                break
    return {"packets_read": read, "rows": rows, "skipped": dict(skipped),
            "stopped": reader.info.stopped, "radiotap_rows": radio_rows}
