"""netdiff validate: tshark, tcpreplay in a private namespace, and netdiff's own rules, run for
real on repaired captures, on deliberately broken ones and on the shared real captures."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from netdiff.bits.layout import NETDIFFUSION as L
from netdiff.io.pcap import PacketBatch, read_capture, write_pcap
from netdiff.packet_repair import repair
from netdiff.packet_repair.perturb import random_bits
from netdiff.validation.rule_checks import check_batch
from netdiff.validation.tcpreplay import replay_unavailable
from netdiff.validation.tshark import tshark_check
from netdiff.validation.pcaps import validate_pcaps

# only the tests that run tshark; the others (replay, unreadable input, the fixture) need none
needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None,
                                  reason="tshark is not installed (Debian package tshark)")


@pytest.fixture(scope="module")
def good_pcap(tmp_path_factory):
    res = repair(random_bits(L, 0)[:300], L, seed=0)
    path = tmp_path_factory.mktemp("v") / "good.pcap"
    write_pcap(path, res.batch)
    return path


def _corrupt(src, dst, offset_in_packet, packet=0, value=None):
    batch, _ = read_capture(src)
    data = batch.data.copy()
    at = batch.offset[packet] + offset_in_packet
    data[at] = (data[at] ^ 0xFF) if value is None else value
    write_pcap(dst, PacketBatch(data, batch.offset, batch.caplen, batch.wirelen, batch.ts_sec,
                                batch.ts_nsec, batch.linktype, batch.number))


@needs_tshark
def test_repaired_capture_passes_everything(good_pcap, cli):
    code, out, err = cli("validate", good_pcap)
    assert code == 0, out + err
    assert "all packets valid" in out
    result = validate_pcaps([good_pcap])
    f = result["files"][0]
    assert f["packets"] == 300 and f["ok"]
    if replay_unavailable() is None:        # root with namespaces: replay really ran
        assert f["replay"]["sent"] == 300 and f["replay"]["failed"] == 0
        assert f["replay"]["received"] >= 300
    else:
        assert f["replay"].startswith("skipped: ")


@needs_tshark
def test_broken_checksum_fails_all_checks(good_pcap, tmp_path, cli):
    bad = tmp_path / "bad.pcap"
    _corrupt(good_pcap, bad, 14 + 10)          # IPv4 header checksum byte of packet 0
    batch, _ = read_capture(good_pcap)
    assert batch.packet(0)[14] >> 4 == 4
    code, out, _ = cli("validate", "--json", "--no-replay", bad)
    assert code == 1
    result = json.loads(out)
    f = result["files"][0]
    assert f["checksum_errors"] == 1 and f["expert_errors"] == 1
    assert f["rule_failures"] == {"ipv4 header checksum wrong": 1}
    assert f["tshark_bad_frames"] == [1]
    assert not result["ok"]


@needs_tshark
def test_malformed_packet_is_reported(good_pcap, tmp_path):
    batch, _ = read_capture(good_pcap)
    # cut one TCP packet inside its header: tshark calls it malformed, the rules flag the length
    tcp = next(i for i in range(len(batch)) if batch.packet(i)[14] >> 4 == 4 and batch.packet(i)[23] == 6)
    caplen = batch.caplen.copy()
    ihl = (batch.packet(tcp)[14] & 15) * 4
    caplen[tcp] = 14 + ihl + 10
    cut = PacketBatch(batch.data, batch.offset, caplen, caplen.copy(), batch.ts_sec, batch.ts_nsec,
                      batch.linktype, batch.number)
    path = tmp_path / "cut.pcap"
    write_pcap(path, cut)
    result = validate_pcaps([path], replay=False)
    f = result["files"][0]
    assert f["malformed"] >= 1
    assert f["rule_failures"].get("IP length beyond the frame") == 1
    assert not result["ok"]


@needs_tshark
def test_rule_checks_agree_with_tshark_on_real_captures(shared_pcaps):
    """netdiff's checksum rules find exactly the packets tshark calls bad."""
    picked = [p for p in shared_pcaps if p.name in ("dnscap_dns.pcap", "rtp.pcap", "quic-28.pcap",
                                                    "chrome.pcap")]
    assert picked
    for path in picked:
        batch, _ = read_capture(path)
        fails, _ = check_batch(batch)
        ck = np.zeros(len(batch), bool)
        for k, m in fails.items():
            if "checksum" in k:
                ck |= m
        t = tshark_check(str(path))
        assert int(ck.sum()) == t["checksum_errors"], path.name
        assert t["malformed"] == 0, path.name      # so tshark's bad frames are checksum ones
        assert (np.flatnonzero(ck) + 1).tolist() == t["bad_frames"], path.name


def test_replay_in_namespace_for_real(good_pcap):
    why = replay_unavailable()
    if why is not None:
        pytest.skip(why)
    import subprocess

    import os

    links_before = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    from netdiff.validation.tcpreplay import replay

    rep = replay(str(good_pcap), 300)
    assert rep["sent"] == 300 and rep["failed"] == 0
    # the namespace and both veth ends are gone again; host interfaces untouched. Only this
    # process's namespaces are looked at: another netdiff replaying on the host has its own
    mine = f"netdiff-{os.getpid()}-"
    assert not [ln for ln in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
                if ln.startswith(mine)]
    assert subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout.count("nd") == \
        links_before.count("nd")


@needs_tshark
def test_multiple_files_human_summary(good_pcap, shared_pcaps, cli):
    dns = next(p for p in shared_pcaps if p.name == "dnscap_dns.pcap")
    code, out, _ = cli("validate", "--no-replay", good_pcap, dns)
    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith("ok   ") and "FAIL " in out
    assert "rule: udp checksum wrong: 41 packets" in out
    assert lines[-2].startswith("total: 2 files")


def test_without_tshark_validate_is_one_line_error(good_pcap, tmp_path, monkeypatch, cli):
    monkeypatch.setenv("PATH", str(tmp_path))          # a PATH on which no tshark is found
    code, out, err = cli("validate", "--no-replay", good_pcap)
    assert code == 1 and err.count("\n") == 1
    assert "tshark not found" in err and "apt-get install tshark" in err


def test_unreadable_file_is_one_line_error(tmp_path, cli):
    p = tmp_path / "x.pcap"
    p.write_bytes(b"nope")
    code, out, err = cli("validate", p)
    assert code == 1 and err.count("\n") == 1 and "not a pcap" in err


@needs_tshark
def test_application_layers_are_judged_unless_transport_only(tmp_path, cli):
    """Two zero bytes to DNS's port: fine for IP/UDP, malformed for the DNS dissector; the
    report names the dissector and its port."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    pkt = Ether(src="02:00:0a:00:00:01", dst="02:00:0a:00:00:02") / \
        IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=40000, dport=53) / b"\x00\x00"
    path = tmp_path / "dns_short.pcap"
    write_pcap(path, PacketBatch.from_packets([bytes(pkt)]))
    code, out, _ = cli("validate", "--no-replay", path)
    assert code == 1 and "malformed 1" in out
    assert "tshark: dns (udp ports 53, 40000): 1 packets" in out
    f = validate_pcaps([path], replay=False)["files"][0]
    assert f["tshark_failures"] == [{"frame": 1, "dissector": "dns", "where": "udp 40000 -> 53",
                                     "what": "malformed"}]
    code, out, _ = cli("validate", "--no-replay", "--transport-only", path)
    assert code == 0 and "application-layer malformed 1 (not judged)" in out
