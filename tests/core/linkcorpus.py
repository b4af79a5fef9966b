"""netdiff's own regression corpus: the same inner IP packets under every link type and
encapsulation nPrint or netdiff meets in real captures, plus odd cases (timestamps past 2038,
truncated packets, non-TCP/UDP/ICMP only). Built with scapy into a folder; no captured traffic.

    python tests/core/linkcorpus.py OUT_DIR        # writes OUT_DIR/<name>.pcap

Each entry: name -> (link type, records, inner), ``inner`` being the IP packets netdiff must find
(in order) when it decapsulates; records are packet bytes or (bytes, sec, usec, caplen, wirelen).
"""
from __future__ import annotations

import struct
import sys
from pathlib import Path

from scapy.layers.dot11 import Dot11, Dot11Beacon, Dot11Elt, Dot11QoS, RadioTap
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import GRE, LLC, SNAP, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

sys.path.insert(0, str(Path(__file__).parent))
from pcapgen import eth, ip6_udp, ip_tcp, ip_udp, pcap  # noqa: E402

INNER = [ip_tcp(), ip_udp(), ip6_udp(),
         bytes(IP(src="10.0.0.5", dst="10.0.0.6") / ICMP(id=3, seq=1) / Raw(b"ping"))]
MAC = dict(src="02:00:00:00:00:02", dst="02:00:00:00:00:01")


def etype(ip: bytes) -> int:
    return 0x86DD if ip[0] >> 4 == 6 else 0x0800


def _radiotap() -> bytes:
    return bytes(RadioTap(present="Flags+Rate+Channel", Flags=0, Rate=2, ChannelFrequency=2437))


def dot11_data(ip: bytes, qos: bool = True, protected: bool = False) -> bytes:
    fc = 0x01 | (0x40 if protected else 0)          # to-DS
    hdr = Dot11(type=2, subtype=8 if qos else 0, FCfield=fc, addr1="02:00:00:00:00:01",
                addr2="02:00:00:00:00:02", addr3="02:00:00:00:00:03")
    if qos:
        hdr = hdr / Dot11QoS()
    return bytes(hdr / LLC() / SNAP(code=etype(ip))) + ip


def beacon() -> bytes:
    return bytes(Dot11(type=0, subtype=8, addr1="ff:ff:ff:ff:ff:ff", addr2="02:00:00:00:00:09",
                       addr3="02:00:00:00:00:09") / Dot11Beacon() / Dot11Elt(ID=0, info=b"corpus"))


def ppp(ip: bytes) -> bytes:
    return b"\xff\x03" + struct.pack(">H", 0x57 if ip[0] >> 4 == 6 else 0x21) + ip


def mpls(ip: bytes) -> bytes:
    labels = struct.pack(">II", (100 << 12) | 64, (200 << 12) | (1 << 8) | 64)   # bottom of stack
    return eth(labels + ip, 0x8847)


def frame_relay(ip: bytes, snap: bool = False) -> bytes:
    if snap:     # RFC 2427 SNAP with a pad byte: NLPID 0x80, OUI 0, then the ethertype
        return b"\x18\x41\x03\x00\x80\x00\x00\x00" + struct.pack(">H", etype(ip)) + ip
    return b"\x18\x41\x03" + (b"\x8e" if ip[0] >> 4 == 6 else b"\xcc") + ip


def outer(inner: bytes, proto: int) -> bytes:
    return bytes(IP(src="192.0.2.1", dst="192.0.2.2", proto=proto) / Raw(inner))


def gre(ip: bytes, key: bool = False) -> bytes:
    g = GRE(key_present=1, key=7, proto=etype(ip)) if key else GRE(proto=etype(ip))
    return eth(bytes(IP(src="192.0.2.1", dst="192.0.2.2") / g / Raw(ip)))


def vxlan(ip: bytes) -> bytes:
    return eth(bytes(IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=40000, dport=4789) / VXLAN(vni=42)
                     / Ether(**MAC, type=etype(ip)) / Raw(ip)))


def corpus() -> dict[str, tuple[int, list, list[bytes]]]:
    """name -> (link type, records, inner IP packets netdiff must find)."""
    rt = _radiotap()
    c = {
        "ethernet": (1, [eth(x, etype(x)) for x in INNER], INNER),
        "radiotap": (127, [rt + dot11_data(x) for x in INNER] + [rt + beacon(),
                     rt + dot11_data(INNER[0], protected=True)], INNER),
        "ieee802_11": (105, [dot11_data(x, qos=False) for x in INNER] + [beacon()], INNER),
        "ppi": (192, [struct.pack("<BBHI", 0, 0, 8, 105) + dot11_data(x) for x in INNER], INNER),
        "ppp": (9, [ppp(x) for x in INNER] + [b"\xff\x03\xc0\x21\x01\x01\x00\x04"], INNER),  # + LCP
        "ppp_serial": (50, [ppp(x) for x in INNER[:2]] +
                       [b"\x0f\x00" + struct.pack(">H", etype(x)) + x for x in INNER[2:]], INNER),
        "cisco_hdlc": (104, [b"\x0f\x00" + struct.pack(">H", etype(x)) + x for x in INNER] +
                       [b"\x8f\x00\x80\x35" + bytes(18)], INNER),                        # + SLARP
        "frame_relay": (107, [frame_relay(x, snap=i % 2 == 1) for i, x in enumerate(INNER)], INNER),
        "slip": (8, [b"\x00" + bytes(15) + x for x in INNER], INNER),
        "pppoe": (1, [eth(b"\x11\x00\x00\x01" + struct.pack(">H", len(x) + 2) + ppp(x)[2:], 0x8864)
                      for x in INNER], INNER),
        "mpls": (1, [mpls(x) for x in INNER], INNER),
        "gre": (1, [gre(x, key=i % 2 == 1) for i, x in enumerate(INNER)], INNER),
        "vxlan": (1, [vxlan(x) for x in INNER], INNER),
        "ipip": (1, [eth(outer(x, 4 if x[0] >> 4 == 4 else 41)) for x in INNER], INNER),
        # a link type netdiff has no table entry for (147, DLT_USER0) holding raw IP
        "user0_raw_ip": (147, list(INNER), INNER),
        # odd cases
        "after_2038": (1, [(eth(x, etype(x)), 2_177_452_800 + i, 250_000 * i, len(x) + 14, len(x) + 14)
                           for i, x in enumerate(INNER)], INNER),
        "truncated": (1, [(eth(INNER[0])[:26], 1_600_000_000, 0, 26, len(INNER[0]) + 14),
                          eth(INNER[1])], INNER[1:]),
        "esp_only": (1, [eth(bytes(IP(src="10.9.9.9", dst="10.9.9.8", proto=50) / Raw(b"s" * 24)))] * 3, []),
        "one_packet": (1, [eth(INNER[0])], INNER[:1]),
    }
    return c


def write_corpus(out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, (lt, records, _) in corpus().items():
        p = out / f"{name}.pcap"
        p.write_bytes(pcap(records, linktype=lt))
        paths[name] = p
    return paths


if __name__ == "__main__":
    for path in write_corpus(Path(sys.argv[1])).values():
        print(path)
