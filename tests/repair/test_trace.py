"""Trace rules: flows, handshake, teardown, sequence/acknowledgement numbers, IP ID, TTL,
addresses, timestamps, determinism. Checked on the bytes of the repaired capture."""
from __future__ import annotations

import ipaddress
from collections import defaultdict

import numpy as np
import pytest

from netdiff.bits.layout import NETDIFFUSION as L
from netdiff.packet_repair import TimingModel, repair
from netdiff.packet_repair.perturb import flip_pixels, random_bits


def _packets(batch):
    """Parsed view of every Ethernet/IPv4|IPv6 packet: dicts of the fields the tests need."""
    out = []
    for i in range(len(batch)):
        raw = batch.packet(i)
        ver = raw[14] >> 4
        if ver == 4:
            hl = (raw[14] & 15) * 4
            src, dst = raw[26:30], raw[30:34]
            proto, ttl, ipid = raw[23], raw[22], int.from_bytes(raw[18:20], "big")
            total = int.from_bytes(raw[16:18], "big")
        else:
            hl = 40
            src, dst = raw[22:38], raw[38:54]
            proto, ttl, ipid = raw[20], raw[21], None
            total = 40 + int.from_bytes(raw[18:20], "big")
        l4 = 14 + hl
        p = dict(src=bytes(src), dst=bytes(dst), proto=proto, ttl=ttl, id=ipid, ver=ver,
                 ts=int(batch.ts_sec[i]) * 10 ** 9 + int(batch.ts_nsec[i]))
        if proto == 1:      # ICMP flows are keyed by the echo/timestamp identifier
            echo = raw[l4] in (0, 8, 13, 14)
            p["sport"] = int.from_bytes(raw[l4 + 4:l4 + 6], "big") if echo else 0
        if proto in (6, 17):
            p["sport"] = int.from_bytes(raw[l4:l4 + 2], "big")
            p["dport"] = int.from_bytes(raw[l4 + 2:l4 + 4], "big")
        if proto == 6:
            doff = (raw[l4 + 12] >> 4) * 4
            p.update(seq=int.from_bytes(raw[l4 + 4:l4 + 8], "big"),
                     ack=int.from_bytes(raw[l4 + 8:l4 + 12], "big"), flags=raw[l4 + 13],
                     plen=total - hl - doff, win=int.from_bytes(raw[l4 + 14:l4 + 16], "big"))
        out.append(p)
    return out


def _check_tcp(pkts):
    """Every TCP rule of trace repair, checked flow by flow from the bytes."""
    flows = defaultdict(list)
    for p in pkts:
        if p["proto"] == 6:
            key = frozenset([(p["src"], p["sport"]), (p["dst"], p["dport"])])
            flows[key].append(p)
    assert flows
    for key, fp in flows.items():
        nxt = {}          # endpoint -> next sequence number it will use
        fin_sent = set()
        syn_done = set()
        for p in fp:
            me = (p["src"], p["sport"])
            peer = (p["dst"], p["dport"])
            syn, fin, rst, ackf = p["flags"] & 2, p["flags"] & 1, p["flags"] & 4, p["flags"] & 16
            if syn:
                assert p["plen"] == 0
                if me in nxt and me in syn_done:
                    assert p["seq"] == (nxt[me] - 1) % 2 ** 32     # a retransmitted SYN
                    continue
                syn_done.add(me)
            if me in nxt:
                assert p["seq"] == nxt[me], "seq must follow the bytes sent"
            assert me not in fin_sent or p["plen"] == 0, "no data after FIN"
            if ackf and peer in nxt:
                assert p["ack"] == nxt[peer], "ack must be the next byte expected from the peer"
            if not ackf:
                assert syn and not fin and not rst and p["ack"] == 0
            nxt[me] = (p["seq"] + p["plen"] + (1 if syn else 0) + (1 if fin else 0)) % 2 ** 32
            if fin:
                assert me not in fin_sent, "one FIN per direction"
                fin_sent.add(me)
        # handshake flows open with SYN then SYN-ACK; no SYN after data
        if any(p["flags"] & 2 for p in fp):
            assert fp[0]["flags"] & 0x12 == 0x02
            first_other = next((p for p in fp if (p["src"], p["sport"]) != (fp[0]["src"], fp[0]["sport"])), None)
            if first_other is not None and first_other is fp[-1] and first_other["flags"] & 4:
                # a refused connection: RST-ACK with sequence number zero, nothing after it
                assert first_other["flags"] & 0x16 == 0x14 and first_other["seq"] == 0
            elif first_other is not None:
                assert first_other["flags"] & 0x12 == 0x12
        # RST only as the last packet
        for p in fp[:-1]:
            assert not p["flags"] & 4


@pytest.mark.parametrize("kind", ["clean", "flip5", "flip30", "random"])
def test_tcp_trace_rules(mixed_image, kind):
    bits = {"clean": mixed_image, "flip5": flip_pixels(mixed_image, 0.05, 1),
            "flip30": flip_pixels(mixed_image, 0.30, 2), "random": random_bits(L, 3)}[kind]
    res = repair(bits, L, seed=4)
    _check_tcp(_packets(res.batch))


def test_flows_come_from_the_generated_ports(mixed_image, sample_images):
    res = repair(mixed_image, L, seed=0)
    pkts = _packets(res.batch)
    gen_pairs = set()
    from netdiff.rules.fields import to_int
    rows = mixed_image[np.any(mixed_image != -1, axis=1)]
    for a, b in (("tcp_sprt", "tcp_dprt"), ("udp_sport", "udp_dport")):
        s, d = to_int(rows[:, L.fields[a]]), to_int(rows[:, L.fields[b]])
        ok = np.all(rows[:, L.fields[a]] != -1, axis=1)
        gen_pairs |= {(a[:3], min(x, y), max(x, y)) for x, y in zip(s[ok], d[ok])}
    out_pairs = {("tcp" if p["proto"] == 6 else "udp", min(p["sport"], p["dport"]), max(p["sport"], p["dport"]))
                 for p in pkts if p["proto"] in (6, 17)}
    assert out_pairs == gen_pairs                     # clean input: ports survive untouched
    assert res.report["flows"] >= len(gen_pairs) > 3  # several flows per image


def test_noisy_ports_join_their_flow(mixed_image):
    clean = repair(mixed_image, L, seed=0).report["flows"]
    bits = mixed_image.copy()
    rows = np.flatnonzero(np.all(bits[:, L.fields["tcp_sprt"]] != -1, axis=1))[5::40]
    c = L.fields["tcp_sprt"].start + 15
    bits[rows, c] = 1 - bits[rows, c]                 # one flipped port bit in a few rows
    assert repair(bits, L, seed=0).report["flows"] == clean


def test_endpoints_ip_id_ttl(mixed_image):
    res = repair(flip_pixels(mixed_image, 0.05, 9), L, seed=2, address_pool="198.51.100.0/24,2001:db8::/64")
    pkts = _packets(res.batch)
    net4, net6 = ipaddress.ip_network("198.51.100.0/24"), ipaddress.ip_network("2001:db8::/64")
    by_host = defaultdict(list)
    ttl = defaultdict(set)
    for p in pkts:
        for a in (p["src"], p["dst"]):
            addr = ipaddress.ip_address(a)
            assert addr in (net4 if addr.version == 4 else net6)
            assert not (addr.is_multicast or addr.is_loopback or addr.is_unspecified)
            if addr.version == 4:
                assert a[-1] not in (0, 255)
        if p["id"] is not None:
            by_host[p["src"]].append(p["id"])
        ttl[(p["src"], p["dst"], p.get("sport"), p.get("dport"), p["proto"])].add(p["ttl"])
    for ids in by_host.values():
        assert all((b - a) % 65536 == 1 for a, b in zip(ids, ids[1:])), "IP ID counts per host"
    assert all(len(v) == 1 for v in ttl.values()), "one TTL per direction"
    assert all(t >= 1 for v in ttl.values() for t in v)


def test_held_fields_keep_the_first_rows_value(mixed_image):
    """DF (``hold: first``): the direction of the one row generated with DF set keeps it on every
    packet, though most of its rows had it clear (a majority vote would clear it); every other
    direction keeps its first row's clear bit. TTL (``hold: median``) stays one per direction."""
    bits = mixed_image.copy()
    df = L.fields["ipv4_dfbit"].start
    v4 = np.flatnonzero(bits[:, df] != -1)
    bits[v4, df] = 0
    bits[v4[0], df] = 1
    res = repair(bits, L, seed=3)
    pkts = _packets(res.batch)
    raw_df = [bool(res.batch.packet(i)[20] & 0x40) if p["ver"] == 4 else None for i, p in enumerate(pkts)]
    k = int(np.flatnonzero(np.asarray(res.rows) == v4[0])[0])
    key = lambda p: (p["src"], p["dst"], p.get("sport"), p.get("dport"), p["proto"])
    mine = [i for i, p in enumerate(pkts) if key(p) == key(pkts[k])]
    assert len(mine) > 1
    assert all(raw_df[i] for i in mine)
    assert not any(raw_df[i] for i, p in enumerate(pkts) if p["ver"] == 4 and key(p) != key(pkts[k]))
    ttl = defaultdict(set)
    for p in pkts:
        ttl[key(p)].add(p["ttl"])
    assert all(len(v) == 1 for v in ttl.values())


def test_default_pool_is_private():
    res = repair(random_bits(L, 5), L, seed=5)
    for p in _packets(res.batch):
        for a in (p["src"], p["dst"]):
            assert ipaddress.ip_address(a).is_private


def test_timestamps_follow_the_timing_model(mixed_image):
    model = TimingModel.learn({"slow": [np.full(500, 0.5)], "fast": [np.full(500, 1e-4)]})
    for klass, gap in (("slow", 0.5), ("fast", 1e-4)):
        b = repair(mixed_image, L, timing=model, klass=klass).batch
        t = b.ts_sec * 10 ** 9 + b.ts_nsec
        d = np.diff(t) / 1e9
        assert (d >= 0).all()
        assert np.median(d) == pytest.approx(gap, rel=0.01)


def test_same_seed_same_bytes_other_seed_other_addresses(mixed_image):
    a = repair(mixed_image, L, seed=11).batch
    b = repair(mixed_image, L, seed=11).batch
    c = repair(mixed_image, L, seed=12).batch
    assert a.data.tobytes() == b.data.tobytes()
    assert (a.ts_nsec == b.ts_nsec).all()
    assert a.data.tobytes() != c.data.tobytes()


def test_payload_bits_become_payload(sample_captures):
    """With a layout that keeps payload bytes, the generated payload is written (zeros beyond)."""
    from netdiff.bits.layout import named_layout
    from repair_helpers import image_bits

    lay = named_layout("netdiffusion", payload_bytes=16)
    path = sorted(sample_captures.glob("dns_udp/*.pcap"))[0]
    bits = image_bits(path, lay)
    res = repair(bits, lay, seed=0)
    from netdiff.bits.codec import encode

    out, _ = encode(res.batch, lay)
    sl = lay.fields["payload_bit"]
    rows = bits[np.any(bits != -1, axis=1)]
    np.testing.assert_array_equal(out[:, sl], rows[:, sl])
    assert res.report["kept_share"]["payload"] == 1.0


def test_default_payload_is_zeros_and_templates_fill_their_ports(mixed_image):
    """Payloads were all zeros before payload templates; now zeros only where neither port has
    a template, the template's message where one has (the sample DNS rows: a DNS query sent to
    port 53, a DNS response sent from it)."""
    from netdiff.rules.engine import load_payloads

    served = {p for t in load_payloads() if "udp" in t.transports and not t.default for p in t.ports}
    counts = {"zeros": 0, "dns": 0}
    for image in (mixed_image, random_bits(L, 3)):
        b = repair(image, L, seed=0).batch
        for i in range(len(b)):
            raw = b.packet(i)
            u = 14 + 4 * (raw[14] & 15)         # IPv4 UDP: the payload follows u + 8
            if raw[12:14] != b"\x08\x00" or raw[23] != 17 or len(raw) == u + 8:
                continue
            ports = {int.from_bytes(raw[u:u + 2], "big"), int.from_bytes(raw[u + 2:u + 4], "big")}
            if not ports & served:
                assert set(raw[u + 8:]) <= {0}
                counts["zeros"] += 1
            elif min(ports) == 53 and len(raw) - u - 8 >= 29:
                to_53 = int.from_bytes(raw[u + 2:u + 4], "big") == 53
                assert raw[u + 10:u + 12] == (b"\x01\x00" if to_53 else b"\x81\x80")   # query / response
                counts["dns"] += 1
    assert counts["zeros"] and counts["dns"], counts


def test_generated_addresses_are_kept_when_the_layout_has_them(sample_captures):
    from netdiff.bits.codec import encode
    from netdiff.bits.layout import NPRINT
    from repair_helpers import image_bits

    for cls in ("web_tcp", "dns_udp", "icmp_echo"):
        path = sorted(sample_captures.glob(f"{cls}/*.pcap"))[0]
        bits = image_bits(path, NPRINT)
        res = repair(bits, NPRINT, seed=0)
        out, _ = encode(res.batch, NPRINT)
        for f in ("ipv4_src", "ipv4_dst"):
            sl = NPRINT.fields[f]
            np.testing.assert_array_equal(out[:, sl], bits[res.rows][:, sl])
        # a pool given by the user wins over generated addresses
        forced = repair(bits, NPRINT, seed=0, address_pool="192.168.77.0/24").batch
        assert all(forced.packet(i)[26:29] == bytes([192, 168, 77]) for i in range(len(forced)))


def _one_sided_and_answered(path):
    """Two TCP connections to 5201 (a port with no payload template): one captured on the
    client's side only (a SYN, its retry, an ACK, segments with data, a stray SYN later, nothing
    from the server, as most of messaging's shared captures hold their connections), and one
    whose client retries its SYN once before the server answers."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    from scapy.utils import wrpcap

    c, s = IP(src="10.0.0.1", dst="10.0.0.2"), IP(src="10.0.0.2", dst="10.0.0.1")
    one = [TCP(sport=40000, dport=5201, flags="S"), TCP(sport=40000, dport=5201, flags="S"),
           TCP(sport=40000, dport=5201, flags="A")]
    one += [TCP(sport=40000, dport=5201, flags="PA") / (b"x" * n) for n in (4, 262, 37)]
    one += [TCP(sport=40000, dport=5201, flags="S")]
    one += [TCP(sport=40000, dport=5201, flags="PA") / (b"x" * n) for n in (3, 90)]
    two = [c / TCP(sport=40001, dport=5201, flags="S"), c / TCP(sport=40001, dport=5201, flags="S"),
           s / TCP(sport=5201, dport=40001, flags="SA"), c / TCP(sport=40001, dport=5201, flags="A"),
           c / TCP(sport=40001, dport=5201, flags="PA") / (b"y" * 50),
           s / TCP(sport=5201, dport=40001, flags="PA") / (b"z" * 80)]
    pkts = [Ether() / c / p for p in one] + [Ether() / p for p in two]
    for k, p in enumerate(pkts):
        p.time = 1_700_000_000.0 + k * 0.01
    wrpcap(str(path), pkts)


def _repaired_flows(path) -> dict:
    """The capture at ``path`` converted to an image, repaired without priors: its packets
    (``_packets``) per (lower port, higher port)."""
    from netdiff.bits.codec import encode
    from netdiff.io.pcap import read_capture

    batch, _ = read_capture(path)
    bits, _ = encode(batch, L)
    flows = defaultdict(list)
    for p in _packets(repair(bits, L, seed=0).batch):
        flows[min(p["sport"], p["dport"]), max(p["sport"], p["dport"])].append(p)
    return flows


def test_a_flow_captured_on_one_side_keeps_its_data(tmp_path):
    """A connection the server sends nothing in opens with its SYN and the retry straight after
    it and goes on established, its data kept and the stray SYN later an ACK (before: every row
    a SYN retry with no payload); a client that retries its SYN before the server answers still
    does."""
    _one_sided_and_answered(tmp_path / "a.pcap")
    flows = _repaired_flows(tmp_path / "a.pcap")
    one, two = flows[5201, 40000], flows[5201, 40001]
    assert [p["flags"] & 2 for p in one] == [2, 2] + [0] * 7
    assert [p["plen"] for p in one] == [0, 0, 0, 4, 262, 37, 0, 3, 90]
    assert all(p["flags"] & 16 for p in one[2:])
    assert [p["flags"] & 0x12 for p in two[:3]] == [0x02, 0x02, 0x12]
    _check_tcp(one + two)


def _refused_and_reset(path):
    """Three TCP connections to 5201: one the server refuses (SYN, RST-ACK with a nonzero
    sequence number), one it accepts and resets after an exchange of data, and one whose server
    row carries RST-ACK but the client sends after it."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    from scapy.utils import wrpcap

    c, s = IP(src="10.0.0.1", dst="10.0.0.2"), IP(src="10.0.0.2", dst="10.0.0.1")
    refused = [c / TCP(sport=40002, dport=5201, flags="S", seq=1000),
               s / TCP(sport=5201, dport=40002, flags="RA", seq=777, ack=1001)]
    # a server row with RST that does not end its flow: not a refusal
    answered = [c / TCP(sport=40004, dport=5201, flags="S"), s / TCP(sport=5201, dport=40004, flags="RA"),
                c / TCP(sport=40004, dport=5201, flags="A")]
    reset = [c / TCP(sport=40003, dport=5201, flags="S"), s / TCP(sport=5201, dport=40003, flags="SA"),
             c / TCP(sport=40003, dport=5201, flags="A"),
             c / TCP(sport=40003, dport=5201, flags="PA") / (b"y" * 50),
             s / TCP(sport=5201, dport=40003, flags="R")]
    pkts = [Ether() / p for p in refused + reset + answered]
    for k, p in enumerate(pkts):
        p.time = 1_700_000_000.0 + k * 0.01
    wrpcap(str(path), pkts)


def test_a_refused_connection_is_answered_with_a_reset(tmp_path):
    """A server's first row that resets and ends its flow refuses the SYN: RST-ACK, sequence
    number zero, acknowledging the SYN (before: a SYN-ACK nothing followed, 6% of BitTorrent's
    flows). A reset after the server accepted stays the flow's last row after a SYN-ACK; a server
    row with RST that the client answers is the SYN-ACK."""
    _refused_and_reset(tmp_path / "a.pcap")
    flows = _repaired_flows(tmp_path / "a.pcap")
    refused, reset, answered = flows[5201, 40002], flows[5201, 40003], flows[5201, 40004]
    assert [p["flags"] & 0x17 for p in refused] == [0x02, 0x14]
    assert refused[1]["seq"] == 0 and refused[1]["ack"] == (refused[0]["seq"] + 1) % 2 ** 32
    assert refused[1]["plen"] == 0
    assert [p["flags"] & 0x16 for p in reset] == [0x02, 0x12, 0x10, 0x10, 0x14]
    assert reset[-1]["seq"] != 0
    assert [p["flags"] & 0x16 for p in answered] == [0x02, 0x12, 0x10]
    _check_tcp(refused + reset + answered)
