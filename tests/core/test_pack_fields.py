"""The serializer repair builds packets with (codec.pack_fields / put_field) writes every field
where the field table (layout.SECTIONS) puts it: packing the field values read from real packets
gives back their header bytes, and random values survive a pack and a read by bit columns."""
from __future__ import annotations

import numpy as np
import pytest

from netdiff.bits.codec import bits_to_bytes, encode, pack_fields, put_field
from netdiff.bits.fields import FIELDS
from netdiff.bits.layout import SECTION_BYTES, SECTIONS, named_layout
from netdiff.io.pcap import LINKTYPE_ETHERNET, PacketBatch
from netdiff.rules.fields import to_int

from pcapgen import ICMP, IP, TCP, IPv6, Raw, eth, ip6_udp, ip_tcp, ip_udp


def field_bits(block: np.ndarray, name: str) -> np.ndarray:
    start, width = FIELDS[name].offset, FIELDS[name].width
    return np.unpackbits(block, axis=1)[:, start:start + width].astype(np.int8)


def frames() -> list[bytes]:
    """Every section of the field table, options included."""
    return [eth(ip_tcp()), eth(ip_udp()), eth(ip6_udp(), 0x86DD),
            eth(bytes(IP(src="10.0.0.5", dst="10.0.0.6", tos=0xB8, ttl=3, flags="DF",
                         options=b"\x94\x04\x00\x00") / ICMP(type=8, id=9, seq=4) / Raw(b"ab"))),
            eth(bytes(IPv6(src="2001:db8::7", dst="2001:db8::8", tc=5, fl=0xABCDE, hlim=9) /
                      TCP(sport=443, dport=50000, seq=2 ** 32 - 1, ack=17, flags="SAEC", window=1,
                          urgptr=3, options=[("Timestamp", (1, 2)), ("NOP", None)])), 0x86DD)]


def test_packing_captured_field_values_gives_back_the_headers():
    layout = named_layout("full")
    batch = PacketBatch.from_packets(frames(), ts_sec=[0] * 5, ts_nsec=[0] * 5,
                                     linktype=LINKTYPE_ETHERNET)
    bits, parsed = encode(batch, layout)
    assert (parsed.reason == 0).all()
    vals, covered = bits_to_bytes(bits)
    for sec, fields in SECTIONS.items():
        c0 = layout.section_offsets[sec][0] // 8
        rows = np.flatnonzero(covered[:, c0])
        assert len(rows), sec
        values = {}
        for name, width in fields:
            b = bits[rows][:, layout.fields[name]]
            values[name] = bits_to_bytes(b)[0] if width > 63 else to_int(b)
        packed = pack_fields(sec, values, len(rows))
        want = vals[rows, c0:c0 + SECTION_BYTES[sec]]
        cov = covered[rows, c0:c0 + SECTION_BYTES[sec]]
        assert np.array_equal(np.where(cov, packed, 0), np.where(cov, want, 0)), sec


@pytest.mark.parametrize("section", list(SECTIONS))
def test_random_values_land_in_their_bit_columns(section):
    rng = np.random.default_rng(len(section))
    n = 64
    values, want = {}, {}
    for name, width in SECTIONS[section]:
        if width > 64:
            values[name] = rng.integers(0, 256, (n, width // 8), dtype=np.uint8)
            want[name] = np.unpackbits(values[name], axis=1)
        else:
            # values wider than the field: only the field's own bits may be written
            v = rng.integers(0, 2 ** 62, n, dtype=np.int64)
            values[name] = v
            want[name] = ((v[:, None] >> np.arange(width - 1, -1, -1)) & 1).astype(np.int8)
    block = pack_fields(section, values, n)
    assert block.shape == (n, SECTION_BYTES[section])
    for name, _ in SECTIONS[section]:
        assert np.array_equal(field_bits(block, name), want[name]), name
    # put_field rewrites one field and leaves the others' bits alone
    name = next(f for f, w in SECTIONS[section] if w <= 16)
    before = np.unpackbits(block, axis=1)
    put_field(block, name, np.arange(n))
    start, width = FIELDS[name].offset, FIELDS[name].width
    after = np.unpackbits(block, axis=1)
    outside = np.ones(before.shape[1], dtype=bool)
    outside[start:start + width] = False
    assert np.array_equal(before[:, outside], after[:, outside])
    assert np.array_equal(to_int(field_bits(block, name)), np.arange(n) & ((1 << width) - 1))


def test_a_field_given_as_bytes_must_fill_it():
    with pytest.raises(ValueError):
        pack_fields("ipv4", {"ipv4_src": np.zeros((2, 3), np.uint8)}, 2)
    with pytest.raises(ValueError):
        pack_fields("ipv6", {"ipv6_src": np.zeros(2, np.int64)}, 2)
