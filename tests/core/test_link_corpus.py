"""Every link type and encapsulation of the regression corpus (tests/core/linkcorpus.py):
pcap2img finds the same inner packets (checked against tshark's dissection too), the nPrint mode
reads each capture as nPrint 1.2.1 does, and odd cases never crash."""
from __future__ import annotations

import io
import json
import shutil
import subprocess

import ipaddress

import numpy as np
import pytest
from scapy.layers.inet import IP, UDP
from scapy.packet import Raw

from netdiff.bits.codec import R_VERSION, decapsulated_counts, encode, locate_ip, parse, skipped_counts
from netdiff.bits.layout import NPRINT, Layout
from netdiff.io.pcap import PacketBatch, read_capture
from netdiff.nprint_csv.writer import RelativeClock, pcap_to_csv

from linkcorpus import INNER, corpus, write_corpus

CORPUS = corpus()
ENCAPSULATED = ["radiotap", "ieee802_11", "ppi", "ppp", "ppp_serial", "cisco_hdlc", "frame_relay", "slip",
                "pppoe", "mpls", "gre", "vxlan", "ipip", "user0_raw_ip"]
HEADERS = Layout(sections=("ipv4", "ipv6", "tcp", "udp", "icmp"))
NPRINT_FLAGS = dict(relative=True, absolute=True, count=1024)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("linkcorpus"))


def inner_rows(packets):
    bits, _ = encode(PacketBatch.from_packets(packets, linktype=101), NPRINT)
    return bits


def nprint_csv(path, layout=HEADERS, **kw):
    buf = io.BytesIO()
    res = pcap_to_csv(path, buf, layout, **{**NPRINT_FLAGS, **kw})
    lines = buf.getvalue().decode().splitlines()
    return lines[0].split(","), [ln.split(",") for ln in lines[1:]], res


@pytest.mark.parametrize("name", ENCAPSULATED)
def test_decapsulation_finds_the_inner_packets(files, name):
    batch, _ = read_capture(files[name])
    bits, p = encode(batch, NPRINT)
    assert np.array_equal(bits, inner_rows(INNER))
    assert sum(decapsulated_counts(p).values()) >= (0 if name == "user0_raw_ip" else len(INNER))


def test_left_out_packets_say_why(files):
    reasons = {n: skipped_counts(parse(read_capture(files[n])[0])) for n in
               ("radiotap", "ieee802_11", "ppp", "cisco_hdlc", "esp_only", "truncated")}
    assert reasons["radiotap"] == {"802.11 management or control frame": 1,
                                   "802.11 frame encrypted (protected bit set)": 1}
    assert reasons["ieee802_11"] == {"802.11 management or control frame": 1}
    assert reasons["ppp"] == {"PPP control protocol or non-IP PPP payload": 1}
    assert reasons["cisco_hdlc"] == {"not IPv4 or IPv6 (link-layer protocol)": 1}
    assert reasons["esp_only"] == {"IPv4 payload is not TCP, UDP or ICMP": 3}
    assert reasons["truncated"] == {"truncated IP header": 1}


def test_unknown_link_type_needs_a_plausible_ip_header():
    garbage = PacketBatch.from_packets([b"\x45" + bytes(40), b"\x99" * 60], linktype=147)
    assert skipped_counts(parse(garbage)) == {
        "unknown link type, no plausible IP header where nPrint looks": 2}


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
@pytest.mark.parametrize("name", [n for n in ENCAPSULATED if n not in ("slip", "user0_raw_ip")])
def test_inner_source_address_agrees_with_tshark(files, name):
    out = subprocess.run(["tshark", "-r", str(files[name]), "-T", "fields", "-E", "occurrence=l",
                          "-e", "ip.src", "-e", "ipv6.src"], capture_output=True, text=True, check=True)
    theirs = [v6 or v4 for v4, v6 in (ln.split("\t") for ln in out.stdout.splitlines())]
    batch, _ = read_capture(files[name])
    p = parse(batch)
    ours = {}
    for i in np.flatnonzero(p.reason == 0).tolist():
        pkt, l3 = batch.packet(i), int(p.l3[i])
        ours[i] = str(ipaddress.ip_address(pkt[l3 + 12:l3 + 16] if p.version[i] == 4 else pkt[l3 + 8:l3 + 24]))
    assert len(ours) == len(INNER)
    assert all(theirs[i] == a for i, a in ours.items())


def test_pcap2img_reports_what_it_decapsulated(files, tmp_path, cli):
    code, out, err = cli("pcap2img", files["radiotap"], tmp_path / "img", "--height", "8", "--json")
    assert code == 0, err
    s = json.loads(out)
    assert s["rows"] == 4 and s["decapsulated"] == {"802.11 LLC/SNAP": 4, "radiotap": 4}
    assert s["skipped"] == {"802.11 management or control frame": 1,
                            "802.11 frame encrypted (protected bit set)": 1}
    # the image and its sidecar rebuild every original frame, radiotap header included
    png = next((tmp_path / "img").rglob("*.png"))
    assert cli("img2pcap", png, tmp_path / "back.pcap")[0] == 0
    back, _ = read_capture(tmp_path / "back.pcap")
    orig, _ = read_capture(files["radiotap"])
    assert [back.packet(i) for i in range(4)] == [orig.packet(i) for i in range(4)]
    assert set(back.linktype.tolist()) == {127}


def test_one_packet_capture_gives_its_image_and_says_no_timing(files, tmp_path, cli):
    code, out, err = cli("pcap2img", files["one_packet"], tmp_path / "img", "--height", "4")
    assert code == 0, err
    assert len(list((tmp_path / "img").rglob("*.png"))) == 1
    assert "no timing model learned for class" in out and "timing.json not written" in out
    assert not (tmp_path / "img" / "timing.json").exists()


def test_timing_is_learnt_for_classes_that_have_gaps(files, tmp_path, cli):
    d = tmp_path / "in"
    (d / "single").mkdir(parents=True)
    (d / "many").mkdir()
    shutil.copy(files["one_packet"], d / "single")
    shutil.copy(files["ethernet"], d / "many")
    code, out, err = cli("pcap2img", d, tmp_path / "img", "--height", "8")
    assert code == 0, err
    assert "no timing model learned for class single" in out and "not written" not in out
    doc = json.loads((tmp_path / "img" / "timing.json").read_text())
    assert set(doc["classes"]) == {"many"}


# --- nPrint mode --------------------------------------------------------------------------------

def test_relative_timestamps_with_no_row_write_the_header(files, cli, tmp_path):
    out = tmp_path / "esp.csv"
    code, _, err = cli("nprint", "-F", "-1", "-P", files["esp_only"], "-4", "-6", "-t", "-u", "-i",
                       "-p", "0", "-c", "1024", "-R", "-A", "-W", out)
    assert code == 0, err
    assert out.read_text().splitlines() == [
        ",".join(["src_ip", "rts", "tv_sec", "tv_usec"] + HEADERS.columns)]


def test_relative_clock_across_empty_chunks():
    clock = RelativeClock()
    assert clock(np.zeros(0, np.int64), np.zeros(0, np.int64)).tolist() == []
    assert clock(np.array([10, 11]), np.array([5, 7])).tolist() == [0, 1_000_002]
    assert clock(np.zeros(0, np.int64), np.zeros(0, np.int64)).tolist() == []
    assert clock(np.array([12]), np.array([7])).tolist() == [1_000_000]


def test_radiotap_gives_a_row_per_packet_without_ip(files):
    head, rows, res = nprint_csv(files["radiotap"])
    assert len(rows) == len(CORPUS["radiotap"][1]) == res["radiotap_rows"]
    assert {r[0] for r in rows} == {"NULL"}
    assert all(set(r[4:]) == {"-1"} for r in rows)


def test_radiotap_and_wlan_sections(files):
    head, rows, _ = nprint_csv(files["radiotap"], Layout(sections=("ipv4",)), wireless=("radiotap", "wlan"))
    assert head[4:7] == ["radiotap_reversion_0", "radiotap_reversion_1", "radiotap_reversion_2"]
    assert head[4 + 448] == "wlan_type_0" and head[4 + 448 + 80] == "ipv4_ver_0"
    rt = _bits(CORPUS["radiotap"][1][0][:56])
    assert rows[0][4:4 + 448] == rt
    # 802.11 header after radiotap's own length (14 here): QoS data, to-DS
    assert rows[0][4 + 448:4 + 448 + 80] == _bits(CORPUS["radiotap"][1][0][14:24])
    # -r on a wired capture: all fill
    _, wired, _ = nprint_csv(files["ethernet"], wireless=("radiotap",))
    assert set(wired[0][4:4 + 448]) == {"-1"}


def _bits(data: bytes) -> list[str]:
    return [str(b) for b in np.unpackbits(np.frombuffer(data, np.uint8)).tolist()]


@pytest.mark.parametrize("name", ["ppp", "ppp_serial", "cisco_hdlc", "frame_relay", "slip", "pppoe",
                                  "mpls", "ieee802_11", "ppi"])
def test_nprint_reads_other_link_types_as_raw_ip(files, name):
    """nPrint reads these frames from their first byte as IP (0xff, 0x0f, 0x18... are no IP
    version): a header line and no row, where netdiff's pcap2img finds every inner packet."""
    _, rows, res = nprint_csv(files[name])
    assert rows == [] and res["packets_read"] == len(CORPUS[name][1])


def test_nprint_reads_raw_ip_as_ethernet_when_bytes_12_13_say_so():
    """A raw IP packet whose source address starts 8.0 has 0x0800 at bytes 12-13: nPrint takes
    its first 14 bytes for an Ethernet header, and so does netdiff's nPrint mode (the "IP
    header" at byte 14 starts with the address byte 1: no row)."""
    pkt = bytes(IP(src="8.0.1.2", dst="10.0.0.1") / UDP(sport=1, dport=2) / Raw(bytes(40)))
    batch = PacketBatch.from_packets([pkt], linktype=101)
    loc = locate_ip(batch, links="nprint")
    assert loc.l3[0] == 14 and loc.eth_at[0] == 0
    assert parse(batch, links="nprint").reason[0] == R_VERSION
    p = parse(batch)                          # pcap2img reads it right
    assert p.reason[0] == 0 and p.l3[0] == 0


def test_nprint_mode_matches_plain_ethernet_for_sll_and_raw(files, tmp_path):
    from pcapgen import pcap
    sll = tmp_path / "sll.pcap"
    sll.write_bytes(pcap([b"\0\0\0\1\0\6" + b"\2" * 8 + (b"\x86\xdd" if x[0] >> 4 == 6 else b"\x08\x00") + x
                          for x in INNER], linktype=113))
    raw = tmp_path / "raw.pcap"
    raw.write_bytes(pcap(INNER, linktype=101))
    ref = nprint_csv(files["ethernet"], absolute=False, relative=False)[1]
    assert nprint_csv(sll, absolute=False, relative=False)[1] == ref
    assert nprint_csv(raw, absolute=False, relative=False)[1] == ref


def test_timestamps_past_2038_are_unsigned(files):
    _, rows, _ = nprint_csv(files["after_2038"])
    assert [r[2] for r in rows] == ["2177452800", "2177452801", "2177452802", "2177452803"]
    assert [r[1] for r in rows] == ["0", "1250000", "1250000", "1250000"]


def test_truncated_ip_header_gives_a_row_with_fill_beyond_the_capture(files):
    _, rows, res = nprint_csv(files["truncated"], absolute=False, relative=False)
    assert len(rows) == 2 and res["skipped"] == {}
    cut = rows[0][1:]
    # 12 IPv4 header bytes captured (26 - 14): 96 bits, the rest of the section fill
    assert "-1" not in cut[:96] and set(cut[96:480]) == {"-1"}
    assert set(cut[480:]) == {"-1"}           # transport header not captured at all


def test_nprint_keeps_short_ihl_like_nprint():
    """IHL 3: nPrint copies 12 header bytes and reads the transport header at byte 12."""
    pkt = bytearray(bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=7, dport=9)))
    pkt[0] = 0x43
    batch = PacketBatch.from_packets([bytes(pkt)], linktype=101)
    p = parse(batch, links="nprint", fragments="nprint")
    assert p.reason[0] == 0 and p.ip_hlen[0] == 12 and p.l4[0] == 12
    assert parse(batch).reason[0] != 0        # pcap2img leaves it out


def test_every_corpus_capture_through_the_cli(files, cli, tmp_path):
    for name, path in files.items():
        code, _, err = cli("nprint", "-P", path, "-4", "-6", "-t", "-u", "-i", "-p", "0", "-c", "1024",
                           "-R", "-A", "-W", tmp_path / f"{name}.csv")
        assert code == 0 and "Traceback" not in err and "internal error" not in err, (name, err)
        code, _, err = cli("pcap2img", path, tmp_path / "img" / name, "--height", "8")
        assert code == 0 and "internal error" not in err, (name, err)






def test_evaluate_inputs_count_what_was_unwrapped_and_left_out(files, tmp_path):
    """evaluate reads captures the way pcap2img does, and its report's inputs say so."""
    from netdiff.eval.load import load_dir

    for cls, names in (("wifi", ("radiotap",)), ("tunnel", ("gre", "vxlan"))):
        (tmp_path / cls).mkdir()
        for n in names:
            shutil.copy(files[n], tmp_path / cls / f"{n}.pcap")
    ts = load_dir(tmp_path)
    assert len(ts) == 3 * len(INNER)
    assert ts.decapsulated == {"802.11 LLC/SNAP": len(INNER), "radiotap": len(INNER),
                               "GRE": len(INNER), "VXLAN": len(INNER)}
    assert ts.skipped == {"802.11 management or control frame": 1,          # the beacon
                          "802.11 frame encrypted (protected bit set)": 1}
