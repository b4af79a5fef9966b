"""Hand-built capture files for reader tests (every byte spelled out, no library in between)."""
from __future__ import annotations

import struct

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop, ICMPv6EchoRequest
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw


def ip_tcp(payload=b"hello"):
    return bytes(IP(src="10.0.0.1", dst="10.0.0.2", id=7) / TCP(sport=1234, dport=80, flags="PA",
                 options=[("MSS", 1460), ("NOP", None), ("WScale", 7)]) / Raw(payload))


def ip_udp():
    return bytes(IP(src="10.0.0.3", dst="10.0.0.4") / UDP(sport=5000, dport=53) / Raw(b"q" * 12))


def ip6_udp():
    return bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=5000, dport=53) / Raw(b"x" * 9))


def eth(l3: bytes, ethertype=0x0800) -> bytes:
    return bytes.fromhex("020000000001020000000002") + struct.pack(">H", ethertype) + l3


def pcap(records, linktype=1, endian="<", nano=False, snaplen=65535) -> bytes:
    """records: list of packet bytes, or (bytes, sec, frac, caplen, wirelen) tuples."""
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for i, r in enumerate(records):
        if isinstance(r, bytes):
            r = (r, 1_600_000_000 + i, 123 * i, len(r), len(r))
        data, sec, frac, cap, wire = r
        out.append(struct.pack(endian + "IIII", sec, frac, cap, wire) + data)
    return b"".join(out)


def pcapng(packets, linktypes=(1,), tsresol=6, endian="<", spb=False) -> bytes:
    """packets: list of (iface, bytes, ts_units)."""
    def block(btype, body):
        pad = (-len(body)) % 4
        blen = 12 + len(body) + pad
        return struct.pack(endian + "II", btype, blen) + body + b"\0" * pad + struct.pack(endian + "I", blen)

    out = [block(0x0A0D0D0A, struct.pack(endian + "IHHq", 0x1A2B3C4D, 1, 0, -1))]
    for lt in linktypes:
        opts = struct.pack(endian + "HHB3x", 9, 1, tsresol) + struct.pack(endian + "HH", 0, 0)
        out.append(block(1, struct.pack(endian + "HHI", lt, 0, 65535) + opts))
    for iface, data, ts in packets:
        if spb:
            out.append(block(3, struct.pack(endian + "I", len(data)) + data))
        else:
            out.append(block(6, struct.pack(endian + "IIIII", iface, ts >> 32, ts & 0xFFFFFFFF,
                                            len(data), len(data)) + data))
    return b"".join(out)


__all__ = ["ip_tcp", "ip_udp", "ip6_udp", "eth", "pcap", "pcapng", "ARP", "Dot1Q", "Ether", "IP",
           "IPv6", "IPv6ExtHdrHopByHop", "ICMPv6EchoRequest", "ICMP", "TCP", "UDP", "Raw"]
