"""netdiff's own sample captures: seeded scapy flows of a few kinds, made on the user's machine.

web_tcp: TCP connections with options, handshake, request/response data and FIN teardown;
dns_udp: DNS queries and answers; icmp_echo: ping request/reply pairs. Everything (addresses,
ports, sizes, timing) comes from one seed, so the same seed writes the same bytes.
"""
from __future__ import annotations

import random
from pathlib import Path

from netdiff.io.pcap import LINKTYPE_ETHERNET, PacketBatch, write_pcap

CLASSES = ("web_tcp", "dns_udp", "icmp_echo")


def _scapy():
    import logging
    logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
    from scapy.layers.dns import DNS, DNSQR, DNSRR
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw
    return Ether, IP, TCP, UDP, ICMP, DNS, DNSQR, DNSRR, Raw


def _mac(rng: random.Random) -> str:
    return "02:" + ":".join(f"{rng.randrange(256):02x}" for _ in range(5))


def _host(rng: random.Random, net: str) -> str:
    return f"{net}.{rng.randrange(1, 255)}"


class _Clock:
    def __init__(self, rng: random.Random, start: float):
        self.rng, self.t = rng, start

    def tick(self, mean: float) -> tuple[int, int]:
        self.t += self.rng.expovariate(1.0 / mean)
        ns = int(round(self.t * 1e9))
        return ns // 10 ** 9, ns % 10 ** 9


def web_tcp(rng: random.Random, n_flows: int) -> list[tuple[bytes, int, int]]:
    Ether, IP, TCP, _, _, _, _, _, Raw = _scapy()
    out = []
    clock = _Clock(rng, 1_700_000_000 + rng.random())
    for _ in range(n_flows):
        cm, sm = _mac(rng), _mac(rng)
        c, s = _host(rng, "192.168.1"), _host(rng, f"10.{rng.randrange(256)}.{rng.randrange(256)}")
        cp, sp = rng.randrange(32768, 61000), rng.choice([80, 443, 8080])
        cseq, sseq = rng.getrandbits(32), rng.getrandbits(32)
        cid, sid = rng.randrange(65536), rng.randrange(65536)
        ttl_c, ttl_s = 64, rng.choice([52, 57, 116, 128])
        ts_c, ts_s = rng.getrandbits(31), rng.getrandbits(31)
        rtt = rng.uniform(0.005, 0.08)

        def pkt(frm_client: bool, flags: str, payload: bytes = b"", opts=None):
            nonlocal cseq, sseq, cid, sid, ts_c, ts_s
            if frm_client:
                e = Ether(src=cm, dst=sm) / IP(src=c, dst=s, ttl=ttl_c, id=cid & 0xFFFF, flags="DF")
                t = TCP(sport=cp, dport=sp, seq=cseq & 0xFFFFFFFF, ack=sseq & 0xFFFFFFFF if "A" in flags else 0,
                        flags=flags, window=rng.choice([502, 1024, 64240]),
                        options=opts if opts is not None else [("NOP", None), ("NOP", None), ("Timestamp", (ts_c, ts_s))])
                cid += 1
                ts_c += rng.randrange(1, 20)
                cseq += len(payload) + (1 if ("S" in flags or "F" in flags) else 0)
            else:
                e = Ether(src=sm, dst=cm) / IP(src=s, dst=c, ttl=ttl_s, id=sid & 0xFFFF, flags="DF")
                t = TCP(sport=sp, dport=cp, seq=sseq & 0xFFFFFFFF, ack=cseq & 0xFFFFFFFF, flags=flags,
                        window=rng.choice([235, 509, 65160]),
                        options=opts if opts is not None else [("NOP", None), ("NOP", None), ("Timestamp", (ts_s, ts_c))])
                sid += 1
                ts_s += rng.randrange(1, 20)
                sseq += len(payload) + (1 if ("S" in flags or "F" in flags) else 0)
            p = e / t / Raw(payload) if payload else e / t
            return bytes(p)

        syn_opts = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (ts_c, 0)), ("NOP", None), ("WScale", 7)]
        out.append((pkt(True, "S", opts=syn_opts), *clock.tick(0.5)))
        out.append((pkt(False, "SA", opts=[("MSS", 1440), ("SAckOK", b""), ("Timestamp", (ts_s, ts_c)),
                                            ("NOP", None), ("WScale", 9)]), *clock.tick(rtt)))
        out.append((pkt(True, "A"), *clock.tick(0.0005)))
        for _ in range(rng.randrange(1, 5)):
            # An HTTP request (random bytes to port 80 are malformed to tshark's HTTP dissector);
            # one draw per byte, as before, so every later draw is unchanged.
            pad = bytes(97 + rng.getrandbits(8) % 26 for _ in range(rng.randrange(80, 600)))
            req = b"GET / HTTP/1.1\r\nX-Pad: " + pad[27:] + b"\r\n\r\n"
            out.append((pkt(True, "PA", req), *clock.tick(0.002)))
            for _ in range(rng.randrange(1, 8)):
                size = rng.choice([1448, 1448, 1448, rng.randrange(100, 1448)])
                out.append((pkt(False, "A" if size == 1448 else "PA", bytes(size)), *clock.tick(rtt / 4)))
            out.append((pkt(True, "A"), *clock.tick(0.0003)))
        out.append((pkt(True, "FA"), *clock.tick(0.05)))
        out.append((pkt(False, "FA"), *clock.tick(rtt)))
        out.append((pkt(True, "A"), *clock.tick(0.0004)))
    return out


_NAMES = ("example", "netdiff", "wikipedia", "openstreetmap", "debian", "python", "kernel", "ietf")
_TLDS = ("org", "com", "net", "io")


def dns_udp(rng: random.Random, n_queries: int) -> list[tuple[bytes, int, int]]:
    Ether, IP, _, UDP, _, DNS, DNSQR, DNSRR, _ = _scapy()
    out = []
    clock = _Clock(rng, 1_700_100_000 + rng.random())
    resolver, rmac = _host(rng, "192.168.1"), _mac(rng)
    clients = [(_host(rng, "192.168.1"), _mac(rng)) for _ in range(4)]
    for _ in range(n_queries):
        c, cm = rng.choice(clients)
        name = f"{rng.choice(['www', 'api', 'cdn', 'mail'])}.{rng.choice(_NAMES)}.{rng.choice(_TLDS)}"
        qtype = rng.choice(["A", "A", "AAAA"])
        qid, sport = rng.randrange(65536), rng.randrange(1024, 65535)
        q = Ether(src=cm, dst=rmac) / IP(src=c, dst=resolver, ttl=64, id=rng.randrange(65536)) / \
            UDP(sport=sport, dport=53) / DNS(id=qid, rd=1, qd=DNSQR(qname=name, qtype=qtype))
        out.append((bytes(q), *clock.tick(0.2)))
        rdata = (f"93.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}" if qtype == "A"
                 else f"2001:db8::{rng.randrange(1, 65535):x}")
        answers = [DNSRR(rrname=name, type=qtype, ttl=rng.randrange(30, 3600), rdata=rdata)
                   for _ in range(rng.randrange(1, 3))]
        an = answers[0]
        for a in answers[1:]:
            an = an / a
        r = Ether(src=rmac, dst=cm) / IP(src=resolver, dst=c, ttl=64, id=rng.randrange(65536)) / \
            UDP(sport=53, dport=sport) / DNS(id=qid, qr=1, rd=1, ra=1, qd=DNSQR(qname=name, qtype=qtype),
                                             an=an)
        out.append((bytes(r), *clock.tick(rng.uniform(0.001, 0.03))))
    return out


def icmp_echo(rng: random.Random, n_pings: int) -> list[tuple[bytes, int, int]]:
    Ether, IP, _, _, ICMP, _, _, _, Raw = _scapy()
    out = []
    clock = _Clock(rng, 1_700_200_000 + rng.random())
    src, sm = _host(rng, "192.168.1"), _mac(rng)
    targets = [(_host(rng, f"10.{rng.randrange(256)}.{rng.randrange(256)}"), _mac(rng)) for _ in range(3)]
    ident = rng.randrange(65536)
    for seq in range(n_pings):
        dst, dm = targets[seq % len(targets)]
        payload = bytes(range(16, 64))
        req = Ether(src=sm, dst=dm) / IP(src=src, dst=dst, ttl=64, id=rng.randrange(65536), flags="DF") / \
            ICMP(type=8, id=ident, seq=seq) / Raw(payload)
        out.append((bytes(req), *clock.tick(0.3)))
        rep = Ether(src=dm, dst=sm) / IP(src=dst, dst=src, ttl=rng.choice([54, 118]), id=rng.randrange(65536)) / \
            ICMP(type=0, id=ident, seq=seq) / Raw(payload)
        out.append((bytes(rep), *clock.tick(rng.uniform(0.002, 0.06))))
    return out


def write_samples(out_dir, seed: int = 0, scale: int = 1, files_per_class: int = 2) -> list[Path]:
    """Write ``<out_dir>/<class>/<class>_<i>.pcap``; about 1,500 packets per class at scale 1."""
    out_dir = Path(out_dir)
    made = []
    makers = {"web_tcp": (web_tcp, 56), "dns_udp": (dns_udp, 375), "icmp_echo": (icmp_echo, 375)}
    for cls in CLASSES:
        fn, n = makers[cls]
        for i in range(files_per_class):
            rng = random.Random(f"{seed}:{cls}:{i}")
            pkts = fn(rng, max(1, n * scale // files_per_class))
            batch = PacketBatch.from_packets([p for p, _, _ in pkts], ts_sec=[s for _, s, _ in pkts],
                                             ts_nsec=[(ns // 1000) * 1000 for _, _, ns in pkts],
                                             linktype=LINKTYPE_ETHERNET)
            path = out_dir / cls / f"{cls}_{i}.pcap"
            write_pcap(path, batch, nanosecond=False)
            made.append(path)
    return made
