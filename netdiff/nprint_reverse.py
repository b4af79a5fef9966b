"""nPrint CSV -> packets (what nPrint's ``-N`` was meant to do, without its bugs).

Each row's covered bytes (no fill among their 8 bits) are laid out section after section at the
offsets the row's own IHL/doff give; bytes the CSV does not hold (payload beyond -p, addresses
when dropped) are zero, up to the IP total length. Timestamps come from tv_sec/tv_usec, or from
the running sum of rts.
"""
from __future__ import annotations

import numpy as np

from netdiff.bits.codec import bits_to_bytes, full_bits
from netdiff.bits.layout import SECTION_BYTES
from netdiff.errors import NetdiffError
from netdiff.io.pcap import LINKTYPE_ETHERNET, LINKTYPE_RAW, PacketBatch, write_pcap
from netdiff.nprint_csv import NprintTable, read_csv

MAX_PACKET = 65535 + 14


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
