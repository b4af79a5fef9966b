"""Payload templates (protocol_rules/payloads/*.yaml): the messages repair writes, their
computed lengths, the rule files' format, and tshark's verdict on a seeded sample of ports."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from netdiff.errors import NetdiffError
from netdiff.io.pcap import write_pcap
from netdiff.packet_repair import payloads as PL
from netdiff.rules import engine as E
from tests.conftest import benchmark_module

needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None,
                                  reason="tshark not installed (Debian package 'tshark')")


def _messages(port: int, proto: int, lengths, sport: int = 50000):
    rules = E.load_rules()
    table = PL.payload_table(rules)
    n = len(lengths)
    pick, length = PL.choose(table, np.full(n, proto), np.full(n, sport), np.full(n, port),
                             np.asarray(lengths), np.full(n, 1460))
    body = np.zeros((n, int(length.max())), np.uint8)
    PL.render(table, pick, length, body)
    return [table.templates[i].name for i in pick], length, body


def test_dns_over_udp_and_tcp_lengths_are_computed():
    names, length, body = _messages(50000, 17, [29, 40, 600], sport=53)      # answers
    assert names == ["dns", "dns", "dns"]
    for L, b in zip(length, body):
        assert int.from_bytes(b[27:29].tobytes(), "big") == L - 29         # rdlength
        rd, at = b[29:L].tobytes(), 0
        while at < len(rd):                    # TXT character strings cover rdata exactly
            at += 1 + rd[at]
        assert at == len(rd)
    names, length, body = _messages(50000, 6, [5, 100], sport=53)
    assert names == ["dns-tcp", "dns-tcp"] and length.tolist() == [31, 100]   # 5 bytes grow
    assert int.from_bytes(body[1, :2].tobytes(), "big") == 98


def test_dns_queries_go_to_port_53_and_answers_come_from_it():
    """Sent to port 53, a query (QR 0) whose name's labels take the length, up to the 255 bytes
    a name may have; longer, an EDNS0 padding option takes it. Sent from port 53, the answer."""
    names, length, body = _messages(53, 17, [5, 17, 40, 271, 272, 900])
    assert names == ["dns-query"] * 4 + ["dns-query-padded"] * 2
    assert length.tolist() == [17, 17, 40, 271, 272, 900]      # below 12 bytes: grown
    for n, L, b in zip(names, length, body):
        assert b[2] & 0x80 == 0 and b[5] == 1                  # a query, one question
        if n == "dns-query":
            name, at = b[12:L - 4].tobytes(), 0
            while name[at]:                                    # labels, then the root
                assert name[at] <= 63
                at += 1 + name[at]
            assert at == len(name) - 1 and len(name) <= 255
        else:
            assert b[11] == 1 and int.from_bytes(b[38:40].tobytes(), "big") == L - 40   # padding
    names, _, body = _messages(53, 6, [100])
    assert names == ["dns-tcp-query"] and body[0, 4] & 0x80 == 0


@needs_tshark
def test_requests_go_to_the_service_port_and_responses_come_from_it(tmp_path):
    """NTP, SIP (UDP and TCP) and SNMP as DNS: tshark reads a row sent to the service's port as
    the request (NTP client mode, a SIP method, an SNMP get-request) and a row sent from it as
    the response (server mode, a status code, a get-response); before, both ways carried one
    message (an NTP server reply, a SIP OPTIONS, an SNMP GetResponse)."""
    sweep = benchmark_module("port_sweep")
    cases = {17: [(123, 48), (5060, 120), (161, 60)], 6: [(5060, 120)]}
    got = {}
    for proto, services in cases.items():
        sport = np.array([p for port, _ in services for p in (40000, port)])
        dport = np.array([p for port, _ in services for p in (port, 40000)])
        length = np.array([n for _, n in services for _ in range(2)])
        batch, _ = sweep.repaired(sweep.raw_packets(proto, sport, dport, length), 0)
        path = tmp_path / f"services-{proto}.pcap"
        write_pcap(path, batch)
        out = subprocess.run(["tshark", "-r", str(path), "-n", "-T", "fields",
                              "-e", "udp.srcport", "-e", "tcp.srcport", "-e", "ntp.flags.mode", "-e", "sip.Method",
                              "-e", "sip.Status-Code", "-e", "snmp.data"],
                             capture_output=True, text=True, check=True).stdout.splitlines()
        got[proto] = ["/".join(x for x in line.split("\t") if x) for line in out]
    assert got[17] == ["40000/3", "123/4", "40000/OPTIONS", "5060/200", "40000/0", "161/2"]
    assert got[6] == ["40000/OPTIONS", "5060/200"]


def test_tls_record_and_defaults():
    names, length, body = _messages(443, 6, [3, 5, 6, 1000])
    # under 5 bytes tshark waits for a record header: grown; 5 bytes: the default's zeros
    assert names == ["tls", "default-tcp", "tls", "tls"] and length.tolist() == [6, 5, 6, 1000]
    assert body[3, :3].tobytes() == b"\x17\x03\x03" and int.from_bytes(body[3, 3:5].tobytes(), "big") == 995
    assert not body[1].any()
    # the lower port is tshark's first choice: 443 -> 50053 is TLS, 50053 -> 53 DNS
    names, _, _ = _messages(53, 6, [100], sport=50053)
    assert names == ["dns-tcp-query"]


def test_snmp_ber_lengths_are_long_form():
    names, length, body = _messages(161, 17, [24, 300])
    assert names == ["snmp-request", "snmp-request"]
    for L, b in zip(length, body):
        assert b[:4].tolist() == [0x30, 0x82, (L - 4) >> 8, (L - 4) & 0xFF]
        assert b[7:11].tolist() == [0x04, 0x82, (L - 24) >> 8, (L - 24) & 0xFF]
        assert b[L - 13] == 0xA0                # the PDU (a GetRequest) follows the community


def test_two_templated_ports_carry_no_payload():
    # SNMP's dissector declines a short message and kpasswd's calls it malformed; SMUX declines
    # what 199 gets and NDPS (3369) calls it malformed: such rows carry none, either way round
    for (a, b), proto in (((161, 464), 17), ((199, 3369), 6), ((53, 443), 6)):
        for sport, dport in ((a, b), (b, a)):
            _, length, _ = _messages(dport, proto, [5, 40, 700], sport=sport)
            assert length.tolist() == [0, 0, 0], (a, b)
    _, length, _ = _messages(161, 17, [40], sport=50000)      # one templated port: its message
    assert length.tolist() == [40]


def test_generated_bytes_keep_all_but_lengths():
    rules = E.load_rules()
    table = PL.payload_table(rules)
    pick, length = PL.choose(table, np.array([6]), np.array([50000]), np.array([443]),
                             np.array([40]), np.array([1460]))
    body = np.full((1, 40), 0xEE, np.uint8)
    PL.render(table, pick, length, body, keep=np.array([True]))
    assert body[0, :3].tolist() == [0xEE] * 3 and int.from_bytes(body[0, 3:5].tobytes(), "big") == 35
    assert (body[0, 5:] == 0xEE).all()


def test_payload_file_errors_name_the_file_and_entry(tmp_path):
    d = tmp_path / "payloads"
    d.mkdir()
    (d / "x.yaml").write_text("templates:\n  - {name: x, transport: udp, ports: [9], "
                              "message: [{name: a, fill: 0, chunkz: 3}]}\n")
    with pytest.raises(NetdiffError, match=r"x.yaml: unknown key 'chunkz'"):
        E.load_payloads(d, rules=E.load_rules())
    (d / "x.yaml").write_text("templates:\n  - {name: x, transport: udp, ports: [9], "
                              "message: [{name: a, bytes: 2, compute: lenght}, {name: b, fill: 0}]}\n")
    with pytest.raises(NetdiffError, match="unknown length computation 'lenght'"):
        E.load_payloads(d, rules=E.load_rules())
    (d / "x.yaml").write_text("templates:\n  - {name: x, transport: udp, ports: [9], sent_by: peer, "
                              "message: [{name: b, fill: 0}]}\n")
    with pytest.raises(NetdiffError, match="x.yaml: template x: sent_by must be one of any, client, server"):
        E.load_payloads(d, rules=E.load_rules())


def test_protocol_templates_and_one_default_per_transport_ship():
    templates = E.load_payloads()
    assert sum(t.default for t in templates) == 2
    assert {"dns", "dns-tcp", "tls", "http", "ssh", "ntp", "sip", "snmp", "xmpp"} <= {t.name for t in templates}


@needs_tshark
def test_seeded_port_sample_passes_every_dissector(tmp_path):
    """Property: packets on a seeded sample of ports (every templated or measured port, 400
    others per transport), as source and destination, with lengths repair can produce, repaired
    by netdiff: tshark finds no malformed packet, expert error or bad checksum."""
    sweep = benchmark_module("port_sweep")
    rng = np.random.default_rng(13)
    templated = {x: sorted({p for t in E.load_payloads() if x in t.transports for p in t.ports})
                 for x in sweep.TRANSPORTS}
    total = 0
    for name, proto in sweep.TRANSPORTS.items():
        ports = np.unique(np.concatenate([templated[name], rng.integers(1, 65536, 400)]))
        swept = np.concatenate([ports, ports])
        other = rng.integers(1024, 65536, len(swept))
        first = np.arange(len(swept)) < len(ports)
        length = np.where(rng.random(len(swept)) < 0.5, rng.integers(1, 65, len(swept)),
                          rng.integers(0, sweep.MAX_PAYLOAD[name] + 1, len(swept)))
        batch, _ = sweep.repaired(sweep.raw_packets(proto, np.where(first, swept, other),
                                                    np.where(first, other, swept), length), 0)
        v = sweep.judge(batch, tmp_path, name)
        assert v["packets"] == len(swept)
        assert (v["malformed"], v["expert_errors"], v["checksum_errors"]) == (0, 0, 0), \
            v["failures_by_dissector"]
        total += v["packets"]
    assert total > 1600


@needs_tshark
def test_seeded_sample_of_templated_port_pairs_passes(tmp_path):
    """Property: packets between two templated ports (a seeded sample of 3,000 pairs per
    transport, each way, short and long lengths) pass every dissector; the whole set is
    benchmarks/port_sweep.py --pairs."""
    sweep = benchmark_module("port_sweep")
    rng = np.random.default_rng(29)
    templates = E.load_payloads()
    for name, proto in sweep.TRANSPORTS.items():
        ports = np.array(sorted({p for t in templates if name in t.transports for p in t.ports}))
        a, b = rng.choice(ports, (2, 3000))
        keep = a != b
        a, b = a[keep], b[keep]
        length = np.where(rng.random(2 * len(a)) < 0.5, rng.integers(1, 65, 2 * len(a)),
                          rng.integers(65, sweep.MAX_PAYLOAD[name] + 1, 2 * len(a)))
        batch, _ = sweep.repaired(sweep.raw_packets(proto, np.concatenate([a, b]),
                                                    np.concatenate([b, a]), length), 1)
        v = sweep.judge(batch, tmp_path, f"pairs-{name}")
        assert v["packets"] == 2 * len(a) > 5000
        assert (v["malformed"], v["expert_errors"], v["checksum_errors"]) == (0, 0, 0), \
            v["failures_by_dissector"]


def test_xmpp_element_takes_the_length():
    """5222/tcp carries a complete XML element (tshark's XMPP dissector fails plain fills at
    every length): short payloads grow to the shortest element, longer ones keep theirs."""
    names, length, body = _messages(5222, 6, [3, 7, 300])
    assert names == ["xmpp"] * 3 and length.tolist() == [7, 7, 300]
    for L, b in zip(length, body):
        text = b[:L].tobytes()
        assert text.startswith(b"<r>") and text.endswith(b"</r>") and set(text[3:-4]) <= {ord("a")}


@needs_tshark
def test_xmpp_messages_pass_tshark_either_way(tmp_path):
    sweep = benchmark_module("port_sweep")
    lengths = np.array([1, 3, 7, 8, 33, 257, 1001, sweep.MAX_PAYLOAD["tcp"]])
    sport, dport, length = sweep.both_ways([5222], lengths)
    batch, _ = sweep.repaired(sweep.raw_packets(6, sport, dport, length), 0)
    v = sweep.judge(batch, tmp_path, "xmpp")
    assert v["packets"] == 2 * len(lengths)
    assert (v["malformed"], v["expert_errors"], v["checksum_errors"]) == (0, 0, 0), v["failures_by_dissector"]
    assert v["incomplete_pdus"] == 0        # every element read whole, none waiting for more bytes


def test_one_port_on_both_ends_carries_its_message():
    """SIP from 5060 to 5060, T.38 from 2944 to 2944: one dissector reads the row, so it carries
    the port's message (the rule for two templated ports emptied every such row: the shared
    voip captures' fax call, 176 datagrams, came out empty)."""
    names, length, _ = _messages(5060, 17, [100, 300], sport=5060)
    assert names == ["sip", "sip"] and length.tolist() == [100, 300]
    names, length, _ = _messages(2944, 17, [40], sport=2944)
    assert length.tolist() == [40]


@needs_tshark
def test_every_templated_port_to_itself_passes_tshark(tmp_path):
    """Property: every templated port as both source and destination, at a short and a long
    length (seeded), repaired: tshark finds no malformed packet, expert error or bad checksum."""
    sweep = benchmark_module("port_sweep")
    rng = np.random.default_rng(29)
    for name, proto in sweep.TRANSPORTS.items():
        ports = np.array(sorted({p for t in E.load_payloads() if name in t.transports for p in t.ports}))
        port = np.repeat(ports, 2)
        length = np.where(np.arange(len(port)) % 2 == 0, rng.integers(1, 65, len(port)),
                          rng.integers(65, sweep.MAX_PAYLOAD[name] + 1, len(port)))
        batch, _ = sweep.repaired(sweep.raw_packets(proto, port, port, length), 0)
        v = sweep.judge(batch, tmp_path, f"self-{name}")
        assert v["packets"] == len(port)
        assert (v["malformed"], v["expert_errors"], v["checksum_errors"]) == (0, 0, 0), \
            v["failures_by_dissector"]
