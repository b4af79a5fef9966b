"""Bad input: a one-line error naming the file and the problem (exit 1), or a correct result with
a count of what was skipped and why; good packets are never lost; inputs are never modified."""
from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest

from netdiff.bits.codec import encode, skipped_counts
from netdiff.bits.layout import NETDIFFUSION
from netdiff.io.pcap import read_capture

from pcapgen import ARP, Ether, ICMPv6EchoRequest, IP, IPv6, IPv6ExtHdrHopByHop, Raw, TCP, UDP, eth, ip_tcp, pcap, pcapng


def run_pcap2img(cli, path, out):
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    code, stdout, err = cli("pcap2img", path, out)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before   # input untouched
    assert "Traceback" not in err
    return code, stdout, err


@pytest.mark.parametrize("content,problem", [
    (b"", "empty file"),
    (b"\x00\x01\x02\x03" + b"\0" * 40, "not a pcap or pcapng file"),
    (struct.pack("<I", 0xA1B2C3D4) + b"\0" * 10, "truncated pcap file header"),
])
def test_unreadable_files_fail_with_one_line(tmp_path, cli, content, problem):
    f = tmp_path / "bad.pcap"
    f.write_bytes(content)
    code, _, err = run_pcap2img(cli, f, tmp_path / "out")
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(f) in lines[0] and problem in lines[0]


def test_truncated_last_packet_keeps_the_good_ones(tmp_path, cli):
    good = [eth(ip_tcp()) for _ in range(5)]
    raw = pcap(good + [eth(ip_tcp())])
    f = tmp_path / "t.pcap"
    f.write_bytes(raw[:-10])
    code, out, err = run_pcap2img(cli, f, tmp_path / "out")
    assert code == 0, err
    assert "5 packets of 5 read" in out and "truncated packet 5" in out


def test_truncated_record_header(tmp_path, cli):
    f = tmp_path / "t.pcap"
    f.write_bytes(pcap([eth(ip_tcp())] * 3) + b"\x01\x02\x03")
    code, out, _ = run_pcap2img(cli, f, tmp_path / "out")
    assert code == 0 and "3 packets of 3 read" in out and "truncated record header" in out


def test_corrupt_caplen_stops_but_keeps_earlier_packets(tmp_path, cli):
    recs = [eth(ip_tcp())] * 4 + [(b"\0" * 8, 0, 0, 10_000_000, 60)]
    f = tmp_path / "c.pcap"
    f.write_bytes(pcap(recs))
    code, out, _ = run_pcap2img(cli, f, tmp_path / "out")
    assert code == 0 and "4 packets of 4 read" in out and "exceeds the snapshot length" in out


def test_caplen_above_snaplen_is_counted(tmp_path):
    f = tmp_path / "s.pcap"
    f.write_bytes(pcap([eth(ip_tcp())] * 2, snaplen=40))
    batch, info = read_capture(f)
    assert len(batch) == 2
    assert info.problems["captured length larger than the file's snapshot length"] == 2


def test_skipped_packets_are_counted_with_reasons(tmp_path, cli):
    frag = bytes(IP(src="1.1.1.1", dst="2.2.2.2", frag=100, proto=6) / Raw(b"x" * 40))
    recs = [
        eth(ip_tcp()),
        b"",                                                                     # zero-length
        bytes(Ether() / ARP()),                                                  # non-IP
        eth(bytes(IPv6() / IPv6ExtHdrHopByHop() / UDP()), 0x86DD),              # extension header
        eth(bytes(IPv6() / ICMPv6EchoRequest()), 0x86DD),                       # ICMPv6
        eth(frag),                                                               # later fragment
        eth(bytes(IP(proto=47) / Raw(b"gre!"))),                                 # not TCP/UDP/ICMP
        eth(bytes(IP(src="3.3.3.3", dst="4.4.4.4") / UDP() / Raw(b"ok"))),
        eth(bytes(IP())[:12]),                                                   # truncated IP header
    ]
    f = tmp_path / "mixed.pcap"
    f.write_bytes(pcap(recs))
    batch, _ = read_capture(f)
    bits, p = encode(batch, NETDIFFUSION)
    assert len(bits) == 2
    counts = skipped_counts(p)
    assert counts == {
        "empty packet (0 bytes captured)": 1,
        "not IPv4 or IPv6 (link-layer protocol)": 1,
        "IPv6 extension header before the transport header": 1,
        "ICMPv6 (nPrint has no ICMPv6 section)": 1,
        "IP fragment after the first (holds no transport header)": 1,
        "IPv4 payload is not TCP, UDP or ICMP": 1,
        "truncated IP header": 1,
    }
    code, out, _ = run_pcap2img(cli, f, tmp_path / "out")
    assert code == 0 and "no row for 1 packets: ICMPv6" in out
    import json
    doc = json.loads(next((tmp_path / "out").rglob("*_0000.json")).read_text())
    assert doc["skipped"]["count"] == 7 and [1, "empty packet (0 bytes captured)"] in doc["skipped"]["packets"]


def test_only_non_ip_gives_no_image_but_no_error(tmp_path, cli):
    f = tmp_path / "arp.pcap"
    f.write_bytes(pcap([bytes(Ether() / ARP())] * 3))
    code, out, _ = run_pcap2img(cli, f, tmp_path / "out")
    assert code == 0 and "no image written" in out


def test_bad_file_in_directory_does_not_stop_the_others(tmp_path, cli):
    (tmp_path / "in" / "a").mkdir(parents=True)
    (tmp_path / "in" / "a" / "good.pcap").write_bytes(pcap([eth(ip_tcp())] * 3))
    (tmp_path / "in" / "a" / "bad.pcap").write_bytes(b"garbage!" * 4)
    code, out, err = run_pcap2img(cli, tmp_path / "in" / "a" / "good.pcap", tmp_path / "o1")
    assert code == 0
    code, out, err = cli("pcap2img", tmp_path / "in", tmp_path / "out")
    assert code == 1 and "bad.pcap: not a pcap or pcapng file" in err
    assert "1 images" in out and (tmp_path / "out" / "a" / "good_0000.png").exists()


def test_corrupt_pcapng_block(tmp_path):
    raw = pcapng([(0, eth(ip_tcp()), 0)] * 3)
    f = tmp_path / "b.pcapng"
    f.write_bytes(raw[:-20])
    batch, info = read_capture(f)
    assert len(batch) == 2 and "truncated block" in info.stopped


@pytest.fixture
def converted(tmp_path):
    f = tmp_path / "c.pcap"
    f.write_bytes(pcap([eth(ip_tcp())] * 4))
    from netdiff.pipeline.conversions import pcap2img
    pcap2img(f, tmp_path / "img")
    return next((tmp_path / "img").rglob("*.png"))


def test_wrong_image_size(converted, tmp_path, cli):
    from PIL import Image
    Image.open(converted).convert("RGB").resize((100, 50)).save(converted)
    code, _, err = cli("img2pcap", converted, tmp_path / "o.pcap")
    assert code == 1 and "image is 100x50 pixels, the layout needs 1088x1024" in err


def test_wrong_palette(converted, tmp_path, cli):
    from PIL import Image
    img = np.asarray(Image.open(converted).convert("RGB")).copy()
    img[3, 5] = (10, 20, 30)
    Image.fromarray(img).save(converted)
    code, _, err = cli("img2pcap", converted, tmp_path / "o.pcap")
    assert code == 1 and "not one of the three palette colours" in err and "row 3, column 5" in err


def test_not_an_image(tmp_path, cli):
    f = tmp_path / "x.png"
    f.write_bytes(b"not a png")
    code, _, err = cli("img2pcap", f, tmp_path / "o.pcap", "--strict")
    assert code == 1 and "not a readable image" in err and "Traceback" not in err


def test_damaged_sidecar(converted, tmp_path, cli):
    converted.with_suffix(".json").write_text("{broken")
    code, _, err = cli("img2pcap", converted, tmp_path / "o.pcap")
    assert code == 1 and "sidecar is not valid JSON" in err


def test_outputs_are_atomic(converted, tmp_path):
    """No temporary file is left behind and a failed write leaves no partial output."""
    from netdiff.pipeline.conversions import img2pcap
    img2pcap(converted, tmp_path / "ok.pcap")
    assert not list(tmp_path.glob(".*tmp*"))
