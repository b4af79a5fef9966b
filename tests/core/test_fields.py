"""bits/fields.py: every field of the field table, read from parsed packet bytes, equals what
scapy dissects from the same packets (IPv4/IPv6 x TCP/UDP/ICMP, options, odd flag bits)."""
from __future__ import annotations

import numpy as np
import pytest
from scapy.layers.inet import IPOption_RR

from netdiff.bits import codec
from netdiff.bits.fields import (FIELDS, FIXED_BYTES, PROTO_SECTIONS, SECTION_PROTOS,
                                 SECTION_VERSIONS, VERSION_SECTIONS, cached, header_bytes,
                                 header_length, per_section, read_field, read_field_bytes,
                                 total_length)
from netdiff.bits.layout import SECTIONS, Layout
from netdiff.io.pcap import LINKTYPE_RAW, PacketBatch

from pcapgen import ICMP, IP, TCP, UDP, Ether, IPv6, Raw

TCP_OPTIONS = [[], [("MSS", 1460)], [("NOP", None), ("WScale", 7), ("SAckOK", b"")],
               [("MSS", 536), ("NOP", None), ("NOP", None), ("Timestamp", (123456, 654321))],
               [("SAck", (1, 2)), ("NOP", None), ("NOP", None), ("Timestamp", (7, 8))]]


def _packets(seed: int = 3, n: int = 90) -> list:
    """Scapy packets with random values in every field, each stack several times."""
    rng = np.random.default_rng(seed)
    r = lambda bits: int(rng.integers(0, 1 << bits))  # noqa: E731
    out = []
    for i in range(n):
        v6, kind = i % 2 == 1, ("tcp", "udp", "icmp")[(i // 2) % 3]
        if kind == "tcp":
            l4 = TCP(sport=r(16), dport=r(16), seq=r(32), ack=r(32), reserved=r(3), flags=r(9),
                     window=r(16), urgptr=r(16), options=TCP_OPTIONS[i % len(TCP_OPTIONS)])
        elif kind == "udp":
            l4 = UDP(sport=r(16), dport=r(16))
        else:
            l4 = ICMP(type=r(8), code=r(8), id=r(16), seq=r(16))
        nh = SECTION_PROTOS[kind]
        if v6:
            src, dst = (":".join(f"{r(16):x}" for _ in range(8)) for _ in range(2))
            ip = IPv6(tc=r(8), fl=r(20), nh=nh, hlim=r(8), src=src, dst=dst)
        else:
            src, dst = (".".join(str(r(8)) for _ in range(4)) for _ in range(2))
            opts = [IPOption_RR(routers=["10.0.0.1"] * (i % 9))] if i % 4 == 0 else []
            ip = IP(tos=r(8), id=r(16), flags=r(3), frag=r(13), ttl=r(8), proto=nh, src=src, dst=dst,
                    options=opts)
        mac = lambda: ":".join(f"{r(8):02x}" for _ in range(6))  # noqa: E731
        out.append(Ether(dst=mac(), src=mac()) / ip / l4 / Raw(bytes(r(8) for _ in range(i % 13))))
    # Dissected again, so lengths and checksums are filled in. Scapy leaves a fragment's and
    # ICMP-over-IPv6's transport header undissected: dissect it by the protocol number.
    pkts = [Ether(bytes(p)) for p in out]
    for x in pkts:
        ip = x[IP] if IP in x else x[IPv6]
        if isinstance(ip.payload, Raw):
            body = bytes(ip.payload)
            ip.remove_payload()
            ip.add_payload({"tcp": TCP, "udp": UDP, "icmp": ICMP}[PROTO_SECTIONS[nh_of(ip)]](body))
    return pkts


def nh_of(ip) -> int:
    return ip.proto if isinstance(ip, IP) else ip.nh


def _int(b: bytes) -> int:
    return int.from_bytes(b, "big")


def _mac(s: str) -> int:
    return int(s.replace(":", ""), 16)


def _ip4(s: str) -> int:
    return _int(bytes(int(x) for x in s.split(".")))


# What scapy says each field is: (layer, value of that layer).
SCAPY = {
    "eth_dhost": (Ether, lambda x: _mac(x.dst)), "eth_shost": (Ether, lambda x: _mac(x.src)),
    "eth_ethertype": (Ether, lambda x: x.type),
    "ipv4_ver": (IP, lambda x: x.version), "ipv4_hl": (IP, lambda x: x.ihl), "ipv4_tos": (IP, lambda x: x.tos),
    "ipv4_tl": (IP, lambda x: x.len), "ipv4_id": (IP, lambda x: x.id),
    "ipv4_rbit": (IP, lambda x: int(x.flags) >> 2 & 1), "ipv4_dfbit": (IP, lambda x: int(x.flags) >> 1 & 1),
    "ipv4_mfbit": (IP, lambda x: int(x.flags) & 1), "ipv4_foff": (IP, lambda x: x.frag),
    "ipv4_ttl": (IP, lambda x: x.ttl), "ipv4_proto": (IP, lambda x: x.proto), "ipv4_cksum": (IP, lambda x: x.chksum),
    "ipv4_src": (IP, lambda x: _ip4(x.src)), "ipv4_dst": (IP, lambda x: _ip4(x.dst)),
    "ipv4_opt": (IP, lambda x: bytes(x)[20:x.ihl * 4]),
    "ipv6_ver": (IPv6, lambda x: x.version), "ipv6_tc": (IPv6, lambda x: x.tc), "ipv6_fl": (IPv6, lambda x: x.fl),
    "ipv6_len": (IPv6, lambda x: x.plen), "ipv6_nh": (IPv6, lambda x: x.nh), "ipv6_hl": (IPv6, lambda x: x.hlim),
    "ipv6_src": (IPv6, lambda x: bytes(x)[8:24]), "ipv6_dst": (IPv6, lambda x: bytes(x)[24:40]),
    "tcp_sprt": (TCP, lambda x: x.sport), "tcp_dprt": (TCP, lambda x: x.dport), "tcp_seq": (TCP, lambda x: x.seq),
    "tcp_ackn": (TCP, lambda x: x.ack), "tcp_doff": (TCP, lambda x: x.dataofs),
    "tcp_res": (TCP, lambda x: x.reserved), "tcp_wsize": (TCP, lambda x: x.window),
    "tcp_cksum": (TCP, lambda x: x.chksum), "tcp_urp": (TCP, lambda x: x.urgptr),
    "tcp_opt": (TCP, lambda x: bytes(x)[20:x.dataofs * 4]),
    **{f"tcp_{name}": (TCP, lambda x, bit=bit: int(x.flags) >> bit & 1) for bit, name in
       enumerate(("fin", "syn", "rst", "psh", "ackf", "urg", "ece", "cwr", "ns"))},
    "udp_sport": (UDP, lambda x: x.sport), "udp_dport": (UDP, lambda x: x.dport), "udp_len": (UDP, lambda x: x.len),
    "udp_cksum": (UDP, lambda x: x.chksum),
    "icmp_type": (ICMP, lambda x: x.type), "icmp_code": (ICMP, lambda x: x.code),
    "icmp_cksum": (ICMP, lambda x: x.chksum), "icmp_roh": (ICMP, lambda x: _int(bytes(x)[4:8])),
}


@pytest.fixture(scope="module")
def parsed():
    pkts = _packets()
    batch = PacketBatch.from_packets([bytes(p) for p in pkts])
    p = codec.parse(batch, fragments="nprint")          # later fragments keep their row
    assert (p.reason == 0).all()
    return pkts, p


def test_field_table_is_layout_sections():
    assert set(SCAPY) == set(FIELDS)
    for sec, fields in SECTIONS.items():
        start = 0
        for name, width in fields:
            assert FIELDS[name] == (sec, start, width)
            start += width


def test_every_field_reads_as_scapy_dissects_it(parsed):
    pkts, p = parsed
    checked = 0
    for name, (layer, value) in SCAPY.items():
        f = FIELDS[name]
        has = np.array([layer in x for x in pkts])
        assert has.sum() >= 10, name
        if f.width > 56:
            got = read_field_bytes(p.header(f.section), name)
            want = [value(x[layer]) for x, h in zip(pkts, has) if h]
            # an option area holds the header's options, then whatever follows in the packet
            for row, w in zip(got[has], want):
                assert bytes(row[:len(w)]) == w, name
        else:
            got = p.read(name)
            want = np.array([value(x[layer]) for x, h in zip(pkts, has) if h])
            np.testing.assert_array_equal(got[has], want, err_msg=name)
        checked += int(has.sum())
    assert checked > 1000


def test_lengths_and_selection_by_version_and_protocol(parsed):
    pkts, p = parsed
    ip = p.header("ipv4")
    want_total = [x[IP].len if IP in x else x[IPv6].plen + 40 for x in pkts]
    got_total = per_section(p.version, VERSION_SECTIONS, lambda sec: total_length(ip, sec))
    np.testing.assert_array_equal(got_total, want_total)
    np.testing.assert_array_equal(p.ip_hlen, per_section(p.version, VERSION_SECTIONS,
                                                         lambda sec: header_length(ip, sec)))
    np.testing.assert_array_equal(p.ip_hlen, [x[IP].ihl * 4 if IP in x else 40 for x in pkts])
    want_l4 = [x[TCP].dataofs * 4 if TCP in x else 8 for x in pkts]
    np.testing.assert_array_equal(p.l4_hlen, want_l4)
    assert header_length(ip, "udp") == FIXED_BYTES["udp"] == 8
    assert [PROTO_SECTIONS[v] for v in p.proto] == [
        "tcp" if TCP in x else "udp" if UDP in x else "icmp" for x in pkts]
    assert {SECTION_VERSIONS[VERSION_SECTIONS[v]] for v in p.version} == {4, 6}


def test_byte_sources_agree_and_read_zero_outside():
    """A window source, a plain callable over the same bytes and mixed header offsets (Ethernet
    and raw IP in one batch, IPv4 options moving TCP) give the same values."""
    pkts = _packets(seed=11, n=24)
    eth = PacketBatch.from_packets([bytes(x) for x in pkts])
    raw = PacketBatch.from_packets([bytes(x)[14:] for x in pkts], linktype=LINKTYPE_RAW)
    both = PacketBatch.concat([eth, raw])
    p = codec.parse(both, fragments="nprint")
    assert set(p.l3.tolist()) == {0, 14}
    half = len(pkts)
    for name in ("ipv4_ttl", "ipv6_fl", "tcp_doff", "tcp_syn", "udp_len", "icmp_roh", "tcp_seq"):
        v = p.read(name)
        np.testing.assert_array_equal(v[:half], v[half:], err_msg=name)
        sec = FIELDS[name].section
        g, start = p.window, p.start(sec)
        rows = np.arange(len(g))
        plain = cached(lambda j: g[rows, start + j].astype(np.int64))
        np.testing.assert_array_equal(read_field(plain, name), v, err_msg=name)
        sub = np.arange(0, len(g), 3)
        np.testing.assert_array_equal(read_field(header_bytes(g, start[sub], rows=sub), name), v[sub])
    # past the window's end every byte reads 0, never another row's bytes
    far = header_bytes(p.window, np.full(len(p.window), p.window.shape[1] - 2))
    assert (read_field(far, "ipv4_tl") == 0).all() and (read_field(far, "ipv4_ver") >= 0).all()
    with pytest.raises(ValueError):
        read_field(far, "ipv6_src")


def test_layout_byte_map_matches_sections():
    lay = Layout(sections=("eth", "ipv4", "tcp"), payload_bytes=5)
    assert lay.section_bytes == {"eth": (0, 14), "ipv4": (14, 60), "tcp": (74, 60), "payload": (134, 5)}
    assert len(lay.byte_map) == lay.full_width // 8
    assert lay.byte_map[14] == ("ipv4", 0) and lay.byte_map[-1] == ("payload", 4)
