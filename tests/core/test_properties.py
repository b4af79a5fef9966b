"""Property: random valid IPv4/IPv6 packets carrying TCP (with options), UDP or ICMP survive
pcap -> image + sidecar -> pcap bit for bit, in every layout."""
from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from netdiff.bits.layout import named_layout
from netdiff.pipeline.conversions import img2pcap, pcap2img
from netdiff.io.pcap import LINKTYPE_ETHERNET, LINKTYPE_RAW, PacketBatch, read_capture, write_pcap

from pcapgen import ICMP, IP, IPv6, Raw, TCP, UDP

u8, u16, u32 = st.integers(0, 255), st.integers(0, 65535), st.integers(0, 2 ** 32 - 1)
ipv4 = st.builds(lambda a: ".".join(str((a >> s) & 255) for s in (24, 16, 8, 0)), u32)
ipv6 = st.builds(lambda a: ":".join(f"{(a >> s) & 0xFFFF:x}" for s in range(112, -1, -16)),
                 st.integers(0, 2 ** 128 - 1))
tcp_options = st.lists(st.one_of(
    st.builds(lambda v: ("MSS", v), u16),
    st.builds(lambda v: ("WScale", v), st.integers(0, 14)),
    st.just(("SAckOK", b"")),
    st.builds(lambda a, b: ("Timestamp", (a, b)), u32, u32),
    st.builds(lambda a, b: ("SAck", (a, b)), u32, u32),
    st.just(("NOP", None)),
), max_size=4)


@st.composite
def packets(draw):
    payload = Raw(draw(st.binary(max_size=64)))
    kind = draw(st.sampled_from(["tcp", "udp", "icmp"]))
    if kind == "tcp":
        l4 = TCP(sport=draw(u16), dport=draw(u16), seq=draw(u32), ack=draw(u32),
                 flags=draw(st.integers(0, 511)), window=draw(u16), urgptr=draw(u16),
                 options=draw(tcp_options))
    elif kind == "udp":
        l4 = UDP(sport=draw(u16), dport=draw(u16))
    else:
        l4 = ICMP(type=draw(u8), code=draw(u8), id=draw(u16), seq=draw(u16))
    if draw(st.booleans()):
        opts = draw(st.binary(max_size=40).map(lambda b: b[: len(b) // 4 * 4]))
        ip = IP(src=draw(ipv4), dst=draw(ipv4), tos=draw(u8), id=draw(u16), ttl=draw(u8),
                flags=draw(st.integers(0, 3)), options=opts)
    else:
        ip = IPv6(src=draw(ipv6), dst=draw(ipv6), tc=draw(u8), fl=draw(st.integers(0, 2 ** 20 - 1)),
                  hlim=draw(u8))
        if kind == "icmp":
            ip.nh = 1   # nPrint reads protocol 1 after IPv6 as ICMP (ICMPv6 has no section)
    return bytes(ip / l4 / payload)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(packets(), min_size=1, max_size=12), st.sampled_from(["netdiffusion", "nprint", "full"]),
       st.integers(0, 24), st.booleans())
def test_round_trip_is_bit_exact(pkts, layout_name, payload_bytes, ethernet):
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        if ethernet:
            frames = [bytes.fromhex("0200000000010200000000020800" if p[0] >> 4 == 4 else
                                    "02000000000102000000000286dd") + p for p in pkts]
        else:
            frames = pkts
        batch = PacketBatch.from_packets(frames, ts_sec=list(range(len(frames))),
                                         ts_nsec=[i * 1000 for i in range(len(frames))],
                                         linktype=LINKTYPE_ETHERNET if ethernet else LINKTYPE_RAW)
        write_pcap(d / "in.pcap", batch)
        layout = named_layout(layout_name, payload_bytes=payload_bytes, height=16)
        s = pcap2img(d / "in.pcap", d / "img", layout=layout)
        assert s.rows == len(frames) and not s.skipped
        got = []
        for png in sorted((d / "img").rglob("*.png")):
            img2pcap(png, d / f"{png.stem}.pcap")
            b, _ = read_capture(d / f"{png.stem}.pcap")
            got += [(b.packet(i), int(b.ts_sec[i]), int(b.ts_nsec[i])) for i in range(len(b))]
        assert got == [(f, i, i * 1000) for i, f in enumerate(frames)]
