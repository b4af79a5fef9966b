"""The odd-capture corpus for nPrint compatibility (issue 18): every link type the issue lists and
the awkward cases real captures hold, built with scapy and hand-packed bytes; no captured traffic.

    python tests/core/nprintcorpus.py OUT_DIR        # writes OUT_DIR/<name>.pcap / .pcapng

``corpus()`` maps a file name to its bytes. The same files feed the CI tests
(tests/core/test_nprint_corpus.py) and the benchmark against the nPrint tool
(benchmarks/nprint_corpus.py), together with tests/core/linkcorpus.py's encapsulation corpus.
"""
from __future__ import annotations

import struct
import sys
from pathlib import Path

from scapy.layers.dot11 import Dot11, Dot11Ack, Dot11Beacon, Dot11Elt, RadioTap
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (ICMPv6EchoRequest, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,
                                 IPv6ExtHdrHopByHop, IPv6ExtHdrRouting)
from scapy.layers.l2 import ARP, LLC, SNAP, STP, Dot1AD, Dot1Q, Dot3, Ether
from scapy.packet import Raw

sys.path.insert(0, str(Path(__file__).parent))
from pcapgen import eth, ip6_udp, ip_tcp, ip_udp, pcap, pcapng  # noqa: E402

MAC = dict(src="02:00:00:00:00:02", dst="02:00:00:00:00:01")
T0 = 1_600_000_000


def icmp4() -> bytes:
    return bytes(IP(src="10.0.0.5", dst="10.0.0.6") / ICMP(id=3, seq=1) / Raw(b"ping" * 4))


def ip6_tcp(payload: bytes = b"sixpayload" * 3) -> bytes:
    return bytes(IPv6(src="2001:db8::5", dst="2001:db8::6") / TCP(sport=443, dport=50000, flags="PA",
                 options=[("NOP", None), ("NOP", None), ("Timestamp", (1, 2))]) / Raw(payload))


IP_MIX = [ip_tcp(), ip_udp(), ip6_udp(), icmp4(), ip6_tcp()]


def etype(ip: bytes) -> int:
    return 0x86DD if ip[0] >> 4 == 6 else 0x0800


def ether(ip: bytes) -> bytes:
    return eth(ip, etype(ip))


def timed(frames, step_us: int = 250_000, t0: int = T0) -> list:
    """(bytes, sec, usec, caplen, wirelen) records at a fixed spacing."""
    out = []
    for i, f in enumerate(frames):
        t = t0 * 1_000_000 + i * step_us
        out.append((f, t // 1_000_000, t % 1_000_000, len(f), len(f)))
    return out


def cut(frames, snap: int, t0: int = T0) -> list:
    """Records cut to ``snap`` captured bytes, with their full wire length (a snaplen)."""
    return [(f[:snap], t0 + i, 1000 * i, min(snap, len(f)), len(f)) for i, f in enumerate(frames)]


def with_ihl(ihl: int, l4) -> bytes:
    """IPv4 with IHL ``ihl`` (options of NOPs and an EOL), or a bare IHL < 5 header."""
    if ihl >= 5:
        opts = b"\x01" * (4 * (ihl - 5) - 1) + b"\x00" if ihl > 5 else b""
        return bytes(IP(src="10.1.0.1", dst="10.1.0.2", options=[]) / l4) if ihl == 5 else \
            bytes(IP(src="10.1.0.1", dst="10.1.0.2", ihl=ihl, options=Raw(opts)) / l4)
    pkt = bytearray(bytes(IP(src="10.1.0.1", dst="10.1.0.2") / l4))
    pkt[0] = 0x40 | ihl
    return bytes(pkt)


def fragments() -> list[bytes]:
    big = IP(src="10.2.0.1", dst="10.2.0.2", id=99) / UDP(sport=7000, dport=7001) / Raw(bytes(range(256)) * 4)
    tcp = IP(src="10.2.0.3", dst="10.2.0.4", id=98) / TCP(sport=1, dport=2) / Raw(b"t" * 600)
    from scapy.layers.inet import fragment
    return [bytes(f) for f in fragment(big, fragsize=400)] + [bytes(f) for f in fragment(tcp, fragsize=256)]


def ipv6_extensions() -> list[bytes]:
    base = dict(src="2001:db8::a", dst="2001:db8::b")
    u = UDP(sport=1000, dport=2000) / Raw(b"e" * 10)
    return [bytes(IPv6(**base) / IPv6ExtHdrHopByHop() / u),
            bytes(IPv6(**base) / IPv6ExtHdrRouting(addresses=["2001:db8::c"]) / u),
            bytes(IPv6(**base) / IPv6ExtHdrFragment(m=1, id=5) / u),
            bytes(IPv6(**base) / IPv6ExtHdrDestOpt() / TCP(sport=5, dport=6)),
            bytes(IPv6(**base) / ICMPv6EchoRequest(id=1, seq=2, data=b"v6ping")),
            bytes(IPv6(**base, nh=1) / ICMP(type=8) / Raw(b"icmp4-in-v6")),      # ICMP (1) over IPv6
            ip6_udp()]


def icmp_kinds() -> list[bytes]:
    a = dict(src="10.3.0.1", dst="10.3.0.2")
    inner = bytes(IP(src="10.3.0.2", dst="10.3.0.1") / UDP(sport=33434, dport=33435))
    return [bytes(IP(**a) / ICMP(type=8, id=1, seq=1) / Raw(b"x" * 56)),
            bytes(IP(**a) / ICMP(type=0, id=1, seq=1) / Raw(b"x" * 56)),
            bytes(IP(**a) / ICMP(type=3, code=3) / Raw(inner)),
            bytes(IP(**a) / ICMP(type=11, code=0) / Raw(inner)),
            bytes(IP(**a) / ICMP(type=13)),
            bytes(IP(**a, proto=1) / Raw(b"\x08\x00"))]                  # ICMP cut to 2 bytes by IP length


def non_ip() -> list[bytes]:
    bcast = "ff:ff:ff:ff:ff:ff"
    return [bytes(Ether(dst=bcast, src=MAC["src"]) / ARP(psrc="10.0.0.1", pdst="10.0.0.2")),
            bytes(Ether(dst=MAC["dst"], src=MAC["src"]) / ARP(op=2, psrc="10.0.0.2", pdst="10.0.0.1")),
            bytes(Dot3(dst="01:80:c2:00:00:00", src=MAC["src"]) / LLC(dsap=0x42, ssap=0x42, ctrl=3) / STP()),
            bytes(Dot3(dst="01:00:0c:cc:cc:cc", src=MAC["src"]) / LLC(dsap=0xAA, ssap=0xAA, ctrl=3)
                  / SNAP(OUI=0x00000C, code=0x2000) / Raw(b"\x02\xb4\x00\x00" + b"cdp-tlvs" * 4)),
            bytes(Ether(dst="01:80:c2:00:00:0e", src=MAC["src"], type=0x88CC) / Raw(bytes(30))),  # LLDP
            bytes(Ether(dst=MAC["dst"], src=MAC["src"], type=0x8863) / Raw(bytes(20))),           # PPPoE discovery
            ]


def garbage_row_frames() -> list[bytes]:
    """Non-IP Ethernet frames whose first byte reads as an IP version (nPrint's rule 3): a
    destination MAC starting 0x45/0x46/0x60, with byte 9 (a source-MAC byte) 6, 17 or 1."""
    return [bytes(Ether(dst="46:00:00:00:00:01", src="02:00:00:06:00:02") / ARP()),
            bytes(Ether(dst="45:00:00:00:00:01", src="02:00:00:11:00:02", type=0x88CC) / Raw(bytes(40))),
            bytes(Ether(dst="60:00:00:00:00:01", src="02:00:00:00:00:02", type=0x9000) / Raw(bytes(50))),
            bytes(Ether(dst="4f:00:00:00:00:01", src="02:00:00:01:00:02") / Dot1Q(vlan=5) / IP(src="10.9.0.1") / UDP())]


def vlans() -> list[bytes]:
    ip = IP(src="10.4.0.1", dst="10.4.0.2") / UDP(sport=1, dport=2) / Raw(b"v" * 20)
    return [bytes(Ether(**MAC) / Dot1Q(vlan=10) / ip),
            bytes(Ether(**MAC) / Dot1AD(vlan=20) / Dot1Q(vlan=30) / ip),
            bytes(Ether(**MAC) / Dot1Q(vlan=10) / Dot1Q(vlan=11) / ip),
            bytes(Ether(**MAC) / Dot1Q(vlan=10) / IPv6(src="2001:db8::1") / UDP()),
            bytes(Ether(**MAC) / ip)]


def radiotap(extra_present: bool = False) -> bytes:
    if extra_present:   # TSFT, flags, rate, channel, dBm signal, antenna, RX flags: a 30+ byte header
        return bytes(RadioTap(present="TSFT+Flags+Rate+Channel+dBm_AntSignal+Antenna+RXFlags",
                              mac_timestamp=123456789, Flags=0x10, Rate=12, ChannelFrequency=5180,
                              ChannelFlags=0x140, dBm_AntSignal=-40, Antenna=1, RXFlags=0))
    return bytes(RadioTap(present="Flags+Rate+Channel", Flags=0, Rate=2, ChannelFrequency=2437))


def dot11_data(ip: bytes) -> bytes:
    return bytes(Dot11(type=2, subtype=0, FCfield=0x01, addr1="02:00:00:00:00:01", addr2="02:00:00:00:00:02",
                       addr3="02:00:00:00:00:03") / LLC() / SNAP(code=etype(ip))) + ip


def radiotap_frames() -> list[bytes]:
    out = []
    for long in (False, True):
        rt = radiotap(long)
        out += [rt + dot11_data(x) for x in IP_MIX[:3]]
        out += [rt + bytes(Dot11(type=0, subtype=8, addr1="ff:ff:ff:ff:ff:ff", addr2="02:00:00:00:00:09",
                                 addr3="02:00:00:00:00:09") / Dot11Beacon() / Dot11Elt(ID=0, info=b"odd" * 20))]
    # control frames shorter than nPrint's 56-byte radiotap window
    rt = radiotap()
    out += [rt + bytes(Dot11(type=1, subtype=13, addr1="02:00:00:00:00:01") / Dot11Ack()),      # ACK
            rt + bytes(Dot11(type=1, subtype=12, addr1="02:00:00:00:00:01"))]                   # CTS
    return out


def unknown_link_frames(hdr: bytes) -> list[bytes]:
    """Frames of a link type nPrint has no entry for: a link header then IP, raw IP, and frames
    whose bytes 12-13 read 0x0800 / 0x86DD (nPrint then reads them as Ethernet)."""
    return ([hdr + x for x in IP_MIX[:4]] + list(IP_MIX[:2])
            + [bytes(12) + b"\x08\x00" + ip_udp(), bytes(12) + b"\x86\xdd" + ip6_udp()])


# Link type -> a plausible link header for the link types of issue 18 netdiff has no table for.
UNKNOWN_LINKS = {
    123: b"\x00\x00\x00\x20" + b"\xaa\xaa\x03\x00\x00\x00\x08\x00",     # SunATM + LLC/SNAP
    129: b"\x01\x02\xf0\x00\x00\x00",                                   # ARCNET (Linux)
    132: b"MGC\x01\x00\x00\x04\x00",                                   # Juniper (magic, flags, ext len)
    137: b"MGC\x01\x00\x00\x04\x00\x00\x00\x00\x00",                   # Juniper ATM1
    149: b"\x00\x00\x08\x00",                                           # DLT_USER2
    178: b"MGC\x00",                                                    # Juniper
    182: b"\x18\x41\x03\xcc",                                           # MFR (FRF.16.1)
    195: b"\x41\x88\x01\xcd\xab\xff\xff\x01\x00",                       # 802.15.4 data frame header
    284: b"\x00\x01\x00\x00",
    285: b"\x00\x00\x00\x00\x00\x00\x00\x00",
}


def corpus() -> dict[str, bytes]:
    """file name -> capture bytes."""
    c: dict[str, bytes] = {}
    for lt, hdr in UNKNOWN_LINKS.items():
        c[f"link{lt}.pcap"] = pcap(timed(unknown_link_frames(hdr)), linktype=lt)
    # the listed link types netdiff has a table entry for, with IP in the ways real files hold it
    c["link9_ppp.pcap"] = pcap(timed([b"\xff\x03\x00\x21" + x for x in IP_MIX[:2]] + [b"\x00\x21" + ip_udp()]
                                     + [b"\xff\x03\xc0\x21\x01\x01\x00\x04"] + list(IP_MIX[:2])), linktype=9)
    c["link50_ppp_serial.pcap"] = pcap(timed([b"\xff\x03\x00\x21" + ip_tcp(), b"\x0f\x00\x08\x00" + ip_udp(),
                                              b"\x8f\x00\x80\x35" + bytes(18)]), linktype=50)
    c["link8_slip.pcap"] = pcap(timed([b"\x00" + bytes(15) + x for x in IP_MIX[:4]] + list(IP_MIX[:2])), linktype=8)
    c["link104_chdlc.pcap"] = pcap(timed([b"\x0f\x00" + struct.pack(">H", etype(x)) + x for x in IP_MIX]
                                         + [b"\x8f\x00\x80\x35" + bytes(18)]), linktype=104)
    c["link107_frelay.pcap"] = pcap(timed([b"\x18\x41\x03\xcc" + ip_tcp(), b"\x18\x41\x03\x8e" + ip6_udp(),
                                           b"\x18\x41\x03\x00\x80\x00\x00\x00\x08\x00" + ip_udp(),
                                           b"\x18\x41\x03\x08\x00\x75\x95"]), linktype=107)
    c["link105_80211.pcap"] = pcap(timed([dot11_data(x) for x in IP_MIX[:3]]), linktype=105)
    c["link127_radiotap.pcap"] = pcap(timed(radiotap_frames()), linktype=127)
    c["link113_sll.pcap"] = pcap(timed([b"\0\0\0\1\0\6" + b"\2" * 8 + struct.pack(">H", etype(x)) + x for x in IP_MIX]
                                       + [b"\0\4\0\1\0\6" + b"\2" * 8 + b"\x08\x06" + bytes(28)]), linktype=113)
    c["link276_sll2.pcap"] = pcap(timed([struct.pack(">HHIHBB", etype(x), 0, 2, 1, 0, 6) + b"\2" * 8 + x
                                         for x in IP_MIX]), linktype=276)
    c["link0_null.pcap"] = pcap(timed([struct.pack("<I", 2 if x[0] >> 4 == 4 else 30) + x for x in IP_MIX]), linktype=0)
    c["link108_loop.pcap"] = pcap(timed([struct.pack(">I", 2 if x[0] >> 4 == 4 else 24) + x for x in IP_MIX]),
                                  linktype=108)
    for lt in (12, 14, 101, 228, 229):
        c[f"link{lt}_raw.pcap"] = pcap(timed(IP_MIX), linktype=lt)
    c["raw_src_8_0.pcap"] = pcap(timed([bytes(IP(src="8.0.1.2", dst="10.0.0.1") / UDP() / Raw(bytes(40))),
                                        bytes(IP(src="134.221.1.1", dst="10.0.0.1") / TCP())]), linktype=101)
    # --- truncation -----------------------------------------------------------------------------
    frames = [ether(x) for x in IP_MIX]
    for snap in (14, 20, 24, 34, 40, 54, 60, 68):
        c[f"snaplen{snap}.pcap"] = pcap(cut(frames, snap), snaplen=snap)
    c["snaplen96_payload.pcap"] = pcap(cut([ether(ip_tcp(b"p" * 200)), ether(ip6_tcp(b"q" * 200))], 96), snaplen=96)
    c["empty_records.pcap"] = pcap([(b"", T0, 0, 0, 60), (ether(ip_udp()), T0 + 1, 0, 54, 54),
                                    (b"\x02\x00", T0 + 2, 0, 2, 60), (ether(ip_tcp()), T0 + 3, 0, 73, 73)])
    c["truncated_file.pcap"] = pcap(timed([ether(x) for x in IP_MIX[:3]]))[:-10]
    # --- header oddities ------------------------------------------------------------------------
    c["ipv4_options.pcap"] = pcap(timed([ether(with_ihl(h, l4)) for h in (6, 8, 15)
                                         for l4 in (TCP(sport=1, dport=2), UDP(sport=3, dport=4) / Raw(b"u" * 8),
                                                    ICMP() / Raw(b"i" * 8))]))
    c["ipv4_short_ihl.pcap"] = pcap(timed([ether(with_ihl(h, UDP(sport=9, dport=10) / Raw(b"s" * 40)))
                                           for h in (0, 3, 4)]))
    c["tcp_doff.pcap"] = pcap(timed([ether(bytes(IP(src="10.5.0.1", dst="10.5.0.2") / TCP(dataofs=d) / Raw(b"d" * 64)))
                                     for d in (0, 2, 5, 15)] + [ether(bytes(IP(src="10.5.0.1", dst="10.5.0.2") /
                                     TCP(options=[("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None),
                                                  ("WScale", 14)] + [("NOP", None)] * 18)))]))
    c["ipv4_fragments.pcap"] = pcap(timed([ether(f) for f in fragments()]))
    c["ipv6_extensions.pcap"] = pcap(timed([ether(x) for x in ipv6_extensions()]))
    c["icmp.pcap"] = pcap(timed([ether(x) for x in icmp_kinds()]))
    c["non_ip.pcap"] = pcap(timed(non_ip()))
    c["non_ip_garbage_rows.pcap"] = pcap(timed(garbage_row_frames()))
    c["vlan_qinq.pcap"] = pcap(timed(vlans()))
    c["eth_padding.pcap"] = pcap(timed([ether(bytes(IP(src="10.6.0.1", dst="10.6.0.2") / UDP(sport=1, dport=2)))
                                        + bytes(18), ether(bytes(IP(src="10.6.0.1", dst="10.6.0.2") / TCP(flags="A")))
                                        + b"\xee" * 6]))
    long_tl = bytearray(ip_udp())
    long_tl[2:4] = struct.pack(">H", 1400)                 # IP total length past the frame's end
    short_tl = bytearray(ip_tcp())
    short_tl[2:4] = struct.pack(">H", 20)                  # IP total length shorter than the headers
    c["ip_length_mismatch.pcap"] = pcap(timed([ether(bytes(long_tl)), ether(bytes(short_tl)), ether(ip_udp())]))
    # --- files and timestamps ---------------------------------------------------------------------
    c["empty.pcap"] = pcap([])
    c["zero_bytes.pcap"] = b""                             # not a capture: nPrint crashes, netdiff refuses
    c["not_a_capture.pcap"] = b"hello, not a capture file\n"
    c["one_packet.pcap"] = pcap(timed([ether(ip_tcp())]))
    c["after_2038.pcap"] = pcap(timed(frames, t0=2_177_452_800))
    c["across_2038.pcap"] = pcap(timed(frames, step_us=30 * 1_000_000, t0=2 ** 31 - 60))
    c["epoch_zero.pcap"] = pcap(timed(frames[:3], t0=0) + timed(frames[3:], t0=5))
    c["time_backwards.pcap"] = pcap([(f, T0 + 10 - 3 * i, 999_999 - i, len(f), len(f)) for i, f in enumerate(frames)])
    c["usec_overflow.pcap"] = pcap([(f, T0, 1_500_000 + i, len(f), len(f)) for i, f in enumerate(frames)])
    c["nanosecond.pcap"] = pcap([(f, T0 + i, 123_456_789 + i, len(f), len(f)) for i, f in enumerate(frames)], nano=True)
    c["big_endian.pcap"] = pcap(timed(frames), endian=">")
    c["big_endian_nano.pcap"] = pcap([(f, T0, 999_999_999 - i, len(f), len(f)) for i, f in enumerate(frames)],
                                     endian=">", nano=True)
    us = [(0, f, (T0 * 1_000_000 + 17 * i)) for i, f in enumerate(frames)]
    c["pcapng.pcapng"] = pcapng(us)
    c["pcapng_big_endian.pcapng"] = pcapng(us, endian=">")
    c["pcapng_nanosecond.pcapng"] = pcapng([(0, f, T0 * 10 ** 9 + 1001 * i) for i, f in enumerate(frames)], tsresol=9)
    c["pcapng_two_interfaces.pcapng"] = pcapng([(i % 2, f, T0 * 1_000_000 + i) for i, f in enumerate(frames)],
                                               linktypes=(1, 1))
    c["pcapng_two_link_types.pcapng"] = pcapng([(0, ether(ip_tcp()), T0 * 1_000_000), (1, ip_udp(), T0 * 1_000_000 + 5),
                                                (0, ether(ip6_udp()), T0 * 1_000_000 + 9)], linktypes=(1, 101))
    c["pcapng_simple_blocks.pcapng"] = pcapng([(0, f, 0) for f in frames], spb=True)
    c["big_capture.pcap"] = pcap(timed([ether(IP_MIX[i % len(IP_MIX)]) for i in range(3000)], step_us=1000))
    return c


def write_corpus(out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, data in corpus().items():
        p = out / name
        p.write_bytes(data)
        paths[name] = p
    return paths


if __name__ == "__main__":
    for path in write_corpus(Path(sys.argv[1])).values():
        print(path)
