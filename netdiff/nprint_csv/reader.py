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
from netdiff.bits.fields import (FIELDS, FIXED_BYTES, PROTO_SECTIONS, SECTION_VERSIONS, TOTAL_LENGTH,
                                 VERSION_SECTIONS, read_field, total_length)
from netdiff.bits.layout import SECTION_ORDER, SECTIONS, Layout
from netdiff.errors import NetdiffError
from netdiff.io.pcap import LINKTYPE_ETHERNET, LINKTYPE_RAW, PacketBatch, write_pcap

MAX_PACKET = 65535 + FIXED_BYTES["eth"]     # the largest IP packet, in an Ethernet frame


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


def table_to_batch(t: NprintTable) -> PacketBatch:
    layout = t.layout
    ip_secs = [sec for sec in VERSION_SECTIONS.values() if sec in layout.sections]
    if not ip_secs:
        raise NetdiffError("the CSV has no IPv4 or IPv6 section: packets cannot be rebuilt")
    vals, covered = bits_to_bytes(full_bits(t.bits, layout))
    n = len(vals)
    secs = layout.section_bytes
    rows = np.arange(n)

    def covered_prefix(sec: str) -> np.ndarray:
        """Bytes of a section before its first fill byte, per row."""
        if sec not in secs:
            return np.zeros(n, dtype=np.int64)
        c0, budget = secs[sec]
        cov = covered[:, c0:c0 + budget]
        return np.where(cov.all(axis=1), budget, np.argmin(cov, axis=1)).astype(np.int64)

    def first_present(candidates: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Per row, the first column of the first candidate section it holds bytes of, and how
        many (0 when none)."""
        col = np.zeros(n, dtype=np.int64)
        nbytes = np.zeros(n, dtype=np.int64)
        for sec in candidates:
            k = covered_prefix(sec)
            take = (nbytes == 0) & (k > 0)
            if sec in secs:
                col[take] = secs[sec][0]
            nbytes[take] = k[take]
        return col, nbytes

    ip_col, ip_len = first_present(ip_secs)
    missing = np.flatnonzero(ip_len == 0)
    if len(missing):
        raise NetdiffError(f"row {missing[0] + 1} has neither an IPv4 nor an IPv6 header")
    l4_col, l4_len = first_present(list(PROTO_SECTIONS.values()))
    pay_col, pay_len = first_present(["payload"])
    eth = "eth" in secs
    eth_len = FIXED_BYTES["eth"] if eth else 0
    # The packet is as long as its IP header says. That header's bytes are whichever IP section
    # the row holds, and its version nibble (not the section) says how to read the length, as
    # any reader of the rebuilt packet will.
    width = vals.shape[1]

    def ip(j: int) -> np.ndarray:
        return np.where(j < ip_len, vals[rows, np.minimum(ip_col + j, width - 1)], 0).astype(np.int64)

    ver = read_field(ip, "ipv4_ver")
    pkt_len = eth_len + ip_len + l4_len + pay_len
    total = pkt_len
    for sec in VERSION_SECTIONS.values():
        known = (ver == SECTION_VERSIONS[sec]) & (ip_len >= FIELDS[TOTAL_LENGTH[sec][0]].end_byte)
        total = np.where(known, total_length(ip, sec) + eth_len, total)
    length = np.maximum(pkt_len, np.minimum(np.maximum(total, pkt_len), MAX_PACKET))
    offset = np.zeros(n, dtype=np.int64)
    if n:
        offset[1:] = np.cumsum(length)[:-1]
    data = np.zeros(int(length.sum()), dtype=np.uint8)
    pos = offset.copy()

    def put(col: np.ndarray, count: np.ndarray, budget: int) -> None:
        r, j = np.nonzero(np.arange(budget) < count[:, None])
        data[pos[r] + j] = vals[r, col[r] + j]
        pos[:] += count

    if eth:
        put(np.full(n, secs["eth"][0]), covered_prefix("eth"), secs["eth"][1])
        pos[:] = offset + eth_len          # bytes the CSV lacks stay zero
    put(ip_col, ip_len, max(secs[sec][1] for sec in ip_secs))
    put(l4_col, l4_len, max([secs[sec][1] for sec in PROTO_SECTIONS.values() if sec in secs], default=0))
    put(pay_col, pay_len, secs["payload"][1] if "payload" in secs else 0)
    if t.tv_sec is not None:
        sec, nsec = t.tv_sec, (t.tv_usec if t.tv_usec is not None else np.zeros(n, np.int64)) * 1000
    elif t.rts is not None:
        us = np.cumsum(t.rts)
        sec, nsec = us // 1_000_000, (us % 1_000_000) * 1000
    else:
        sec, nsec = np.zeros(n, np.int64), np.zeros(n, np.int64)
    linktype = LINKTYPE_ETHERNET if eth else LINKTYPE_RAW
    return PacketBatch(data, offset, length, length.copy(), np.asarray(sec, np.int64),
                       np.asarray(nsec, np.int64), np.full(n, linktype, dtype=np.int32),
                       np.arange(n, dtype=np.int64))


def csv_to_pcap(csv_path, pcap_path) -> int:
    batch = table_to_batch(read_csv(csv_path))
    write_pcap(pcap_path, batch, nanosecond=False)
    return len(batch)
