"""nPrint CSV -> packets (``netdiff nprint -N ... -W ...``: what nPrint's ``-N`` was meant to
do, without its bugs).

Each row's covered bytes (no fill among their 8 bits) are laid out section after section at the
offsets the row's own IHL/doff give; bytes the CSV does not hold (payload beyond -p, addresses
when dropped) are zero, up to the IP total length. Timestamps come from tv_sec/tv_usec, or from
the running sum of rts.
"""
from __future__ import annotations

import gzip
from dataclasses import dataclass

import numpy as np

from netdiff.bits.codec import bits_to_bytes, full_bits
from netdiff.bits.layout import SECTION_BYTES, SECTION_ORDER, SECTIONS, Layout
from netdiff.errors import NetdiffError
from netdiff.io.pcap import LINKTYPE_ETHERNET, LINKTYPE_RAW, PacketBatch, write_pcap

MAX_PACKET = 65535 + 14


@dataclass
class NprintTable:
    layout: Layout
    index_name: str
    index: list[str]
    rts: np.ndarray | None
    tv_sec: np.ndarray | None
    tv_usec: np.ndarray | None
    bits: np.ndarray


def layout_from_columns(columns: list[str], path: str = "") -> Layout:
    """Recognise which sections (and payload size) a header row holds."""
    present = []
    payload = 0
    pos = 0
    for sec in SECTION_ORDER:
        if sec == "payload":
            rest = columns[pos:]
            payload = len(rest) // 8
            if rest != [f"payload_bit_{i}" for i in range(len(rest))] or len(rest) % 8:
                raise NetdiffError(f"{path}: unexpected columns after the headers: {rest[:3]}...")
            break
        names = [f"{f}_{i}" for f, w in SECTIONS[sec] for i in range(w)]
        if columns[pos:pos + len(names)] == names:
            present.append(sec)
            pos += len(names)
    layout = Layout(sections=tuple(present), payload_bytes=payload, name="nprint-csv")
    if layout.width != len(columns):
        raise NetdiffError(f"{path}: the header is not an nPrint header (unknown columns)")
    return layout


def read_csv(path) -> NprintTable:
    path = str(path)
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise NetdiffError(f"{path}: cannot read ({e})") from None
    if not raw.strip():
        raise NetdiffError(f"{path}: empty file, not an nPrint CSV")
    head, _, body = raw.partition(b"\n")
    cols = head.decode("ascii", "replace").strip().split(",")
    n_meta = 1 + sum(c in ("rts", "tv_sec", "tv_usec") for c in cols[1:4])
    meta_names = cols[:n_meta]
    layout = layout_from_columns(cols[n_meta:], path)
    lines = [ln for ln in body.split(b"\n") if ln.strip()]
    if not lines:
        return NprintTable(layout, meta_names[0], [], None, None, None,
                           np.zeros((0, layout.width), np.int8))
    meta = []
    bits = np.empty((len(lines), layout.width), dtype=np.int8)
    for i, ln in enumerate(lines):
        parts = ln.split(b",", n_meta)
        if len(parts) <= n_meta:
            raise NetdiffError(f"{path}: line {i + 2} has too few columns")
        meta.append(parts[:n_meta])
        try:
            row = np.array(parts[n_meta].split(b","), dtype=np.int8)
        except ValueError:
            raise NetdiffError(f"{path}: line {i + 2} holds a value that is not -1, 0 or 1") from None
        if row.shape[0] != layout.width:
            raise NetdiffError(f"{path}: line {i + 2} has {row.shape[0]} bit columns, "
                               f"expected {layout.width}")
        bits[i] = row
    if not np.isin(bits, (-1, 0, 1)).all():
        raise NetdiffError(f"{path}: values other than -1, 0, 1 in the bit columns")

    def col(name):
        if name not in meta_names:
            return None
        k = meta_names.index(name)
        return np.array([int(m[k]) for m in meta], dtype=np.int64)

    return NprintTable(layout, meta_names[0], [m[0].decode() for m in meta], col("rts"),
                       col("tv_sec"), col("tv_usec"), bits)


def _sections(layout):
    out, pos = {}, 0
    for sec in layout.sections:
        budget = layout.payload_bytes if sec == "payload" else SECTION_BYTES[sec]
        out[sec] = (pos, budget)
        pos += budget
    return out


def table_to_batch(t: NprintTable) -> PacketBatch:
    layout = t.layout
    if not any(s in layout.sections for s in ("ipv4", "ipv6")):
        raise NetdiffError("the CSV has no IPv4 or IPv6 section: packets cannot be rebuilt")
    vals, covered = bits_to_bytes(full_bits(t.bits, layout))
    secs = _sections(layout)
    packets = []
    eth = "eth" in secs
    for r in range(len(t.bits)):
        parts = []

        def take(sec):
            if sec not in secs:
                return b""
            c0, budget = secs[sec]
            cov = covered[r, c0:c0 + budget]
            n = int(np.argmin(cov)) if not cov.all() else budget
            return vals[r, c0:c0 + n].tobytes()

        if eth:
            parts.append(take("eth").ljust(14, b"\0"))
        ip = take("ipv4") or take("ipv6")
        if not ip:
            raise NetdiffError(f"row {r + 1} has neither an IPv4 nor an IPv6 header")
        parts.append(ip)
        l4 = take("tcp") or take("udp") or take("icmp")
        parts.append(l4)
        parts.append(take("payload"))
        pkt = b"".join(parts)
        ver = ip[0] >> 4
        if ver == 4 and len(ip) >= 4:
            total = int.from_bytes(ip[2:4], "big") + (14 if eth else 0)
        elif ver == 6 and len(ip) >= 6:
            total = int.from_bytes(ip[4:6], "big") + 40 + (14 if eth else 0)
        else:
            total = len(pkt)
        packets.append(pkt.ljust(min(max(total, len(pkt)), MAX_PACKET), b"\0"))
    n = len(packets)
    if t.tv_sec is not None:
        sec, nsec = t.tv_sec, (t.tv_usec if t.tv_usec is not None else np.zeros(n, np.int64)) * 1000
    elif t.rts is not None:
        us = np.cumsum(t.rts)
        sec, nsec = us // 1_000_000, (us % 1_000_000) * 1000
    else:
        sec, nsec = np.zeros(n, np.int64), np.zeros(n, np.int64)
    return PacketBatch.from_packets(packets, ts_sec=sec, ts_nsec=nsec,
                                    linktype=LINKTYPE_ETHERNET if eth else LINKTYPE_RAW)


def csv_to_pcap(csv_path, pcap_path) -> int:
    batch = table_to_batch(read_csv(csv_path))
    write_pcap(pcap_path, batch, nanosecond=False)
    return len(batch)
