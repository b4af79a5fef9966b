"""Every capture format and link type the reader supports gives the same nPrint rows."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from netdiff.bits.codec import encode
from netdiff.bits.layout import NPRINT
from netdiff.io.pcap import CaptureReader, read_capture

from pcapgen import Dot1Q, Ether, IP, TCP, eth, ip6_udp, ip_tcp, ip_udp, pcap, pcapng

L3 = [ip_tcp(), ip_udp(), ip6_udp()]


def rows_of(path):
    batch, info = read_capture(path)
    bits, p = encode(batch, NPRINT)
    return bits, batch, info


@pytest.fixture
def expected(tmp_path):
    f = tmp_path / "ref.pcap"
    f.write_bytes(pcap([eth(x, 0x86DD if x[0] >> 4 == 6 else 0x0800) for x in L3]))
    bits, _, _ = rows_of(f)
    assert bits.shape == (3, 1408)
    return bits


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
def test_classic_pcap_byte_orders_and_precision(tmp_path, expected, endian, nano):
    f = tmp_path / "a.pcap"
    recs = [(eth(x, 0x86DD if x[0] >> 4 == 6 else 0x0800), 1_600_000_000, 999_999_999 if nano else 999_999,
             len(x) + 14, len(x) + 14) for x in L3]
    f.write_bytes(pcap(recs, endian=endian, nano=nano))
    bits, batch, info = rows_of(f)
    assert np.array_equal(bits, expected)
    assert info.ts_precision == ("ns" if nano else "us")
    assert batch.ts_nsec[0] == 999_999_999 if nano else batch.ts_nsec[0] == 999_999_000


@pytest.mark.parametrize("lt,wrap", [
    (101, lambda x: x), (12, lambda x: x), (14, lambda x: x),
    (228, lambda x: x), (229, lambda x: x),
    (113, lambda x: b"\0\0\0\1\0\6" + b"\2" * 8 + struct.pack(">H", 0x86DD if x[0] >> 4 == 6 else 0x0800) + x),
    (276, lambda x: struct.pack(">HHIHBB", 0x86DD if x[0] >> 4 == 6 else 0x0800, 0, 2, 1, 0, 6) + b"\2" * 8 + x),
    (0, lambda x: struct.pack("<I", 30 if x[0] >> 4 == 6 else 2) + x),
    (108, lambda x: struct.pack(">I", 24 if x[0] >> 4 == 6 else 2) + x),
])
def test_link_types(tmp_path, expected, lt, wrap):
    if lt == 228:
        pkts = [x for x in L3 if x[0] >> 4 == 4]
    elif lt == 229:
        pkts = [x for x in L3 if x[0] >> 4 == 6]
    else:
        pkts = L3
    f = tmp_path / "a.pcap"
    f.write_bytes(pcap([wrap(x) for x in pkts], linktype=lt))
    bits, _, _ = rows_of(f)
    want = expected[[i for i, x in enumerate(L3) if x in pkts]]
    assert np.array_equal(bits, want)


def test_vlan_and_qinq(tmp_path, expected):
    tagged = [bytes(Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01") / Dot1Q(vlan=5) / IP(ip_tcp())),
              bytes(Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01", type=0x88A8) / Dot1Q(vlan=5) /
                    Dot1Q(vlan=6) / IP(ip_udp()))]
    f = tmp_path / "v.pcap"
    f.write_bytes(pcap(tagged))
    bits, _, _ = rows_of(f)
    assert np.array_equal(bits, expected[:2])


@pytest.mark.parametrize("endian", ["<", ">"])
def test_pcapng_interfaces_and_resolutions(tmp_path, expected, endian):
    pk = [(0, eth(L3[0]), 1_600_000_000_123_456), (1, L3[1], 1_600_000_001_000_000_001 // 1000),
          (0, eth(L3[2], 0x86DD), 1_600_000_002_000_000)]
    f = tmp_path / "a.pcapng"
    f.write_bytes(pcapng(pk, linktypes=(1, 101), endian=endian))
    bits, batch, info = rows_of(f)
    assert np.array_equal(bits, expected)
    assert batch.linktype.tolist() == [1, 101, 1]
    assert (batch.ts_sec[0], batch.ts_nsec[0]) == (1_600_000_000, 123_456_000)
    f.write_bytes(pcapng([(0, eth(x, 0x86DD if x[0] >> 4 == 6 else 0x0800), 0) for x in L3], spb=True))
    bits, _, info = rows_of(f)
    assert np.array_equal(bits, expected) and info.format == "pcapng"


def test_nanosecond_pcapng(tmp_path):
    f = tmp_path / "n.pcapng"
    f.write_bytes(pcapng([(0, eth(L3[0]), 1_600_000_000_123_456_789)], tsresol=9))
    batch, info = read_capture(f)
    assert (batch.ts_sec[0], batch.ts_nsec[0]) == (1_600_000_000, 123_456_789)


def test_streaming_chunks_give_the_same_rows(tmp_path):
    """A capture read in tiny chunks (records straddling every boundary) gives the same rows."""
    pk = [eth(ip_tcp(bytes(i % 50))) for i in range(300)]
    f = tmp_path / "s.pcap"
    f.write_bytes(pcap(pk))
    whole = np.concatenate([encode(b, NPRINT)[0] for b in CaptureReader(f)])
    parts = np.concatenate([encode(b, NPRINT)[0] for b in CaptureReader(f, chunk_bytes=97)])
    assert np.array_equal(whole, parts) and len(whole) == 300
