"""pcap -> PNG + sidecar -> pcap gives back every packet (bytes and timestamps), checked both by
netdiff and by what tshark dissects from the original and the rebuilt capture."""
from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from netdiff.bits.codec import parse
from netdiff.pipeline.conversions import img2pcap, img2pcap_many, pcap2img
from netdiff.pipeline.demo import compare_rebuilt
from netdiff.image.codec import read_png_bits
from netdiff.io.pcap import read_capture

TSHARK_FIELDS = ["frame.time_epoch", "frame.len", "ip.version", "ip.hdr_len", "ip.dsfield", "ip.len",
                 "ip.id", "ip.flags", "ip.frag_offset", "ip.ttl", "ip.proto", "ip.checksum", "ip.src",
                 "ip.dst", "ipv6.tclass", "ipv6.flow", "ipv6.plen", "ipv6.nxt", "ipv6.hlim", "ipv6.src",
                 "ipv6.dst", "tcp.srcport", "tcp.dstport", "tcp.seq_raw", "tcp.ack_raw", "tcp.hdr_len",
                 "tcp.flags", "tcp.window_size_value", "tcp.checksum", "tcp.urgent_pointer",
                 "tcp.options", "udp.srcport", "udp.dstport", "udp.length", "udp.checksum", "icmp.type",
                 "icmp.code", "icmp.checksum"]


def tshark_fields(path):
    cmd = ["tshark", "-r", str(path), "-T", "fields", "-E", "separator=|", "-o", "tcp.relative_sequence_numbers:FALSE"]
    for f in TSHARK_FIELDS:
        cmd += ["-e", f]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()


def test_shared_captures_round_trip_exactly(shared_data, tmp_path):
    s = pcap2img(shared_data / "pcaps", tmp_path / "img")
    assert not s.errors and s.files == 36
    results = list(img2pcap_many(tmp_path / "img", tmp_path / "pcap"))
    assert all(not isinstance(r, str) and r.mode == "exact" for r in results)
    cmp = compare_rebuilt(tmp_path / "img", tmp_path / "pcap")
    assert cmp["packets_compared"] == s.rows > 50000
    assert cmp["packets_differing"] == 0


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
def test_tshark_reads_the_same_fields(shared_data, tmp_path):
    """Per capture: the fields tshark dissects from the rebuilt packets equal the original's."""
    for pcap in sorted((shared_data / "pcaps").glob("*/*.pcap")):
        d = tmp_path / pcap.stem
        s = pcap2img(pcap, d / "img", max_images=1)
        png = sorted((d / "img").rglob("*.png"))[0]
        doc = json.loads(png.with_suffix(".json").read_text())
        img2pcap(png, d / "rebuilt.pcap")
        orig, _ = read_capture(pcap)
        keep = np.asarray(doc["packets"]["number"])
        # the original's encodable packets, in a pcap of their own, for tshark
        from netdiff.io.pcap import write_pcap
        write_pcap(d / "orig.pcap", orig.take(keep), nanosecond=False)
        a, b = tshark_fields(d / "orig.pcap"), tshark_fields(d / "rebuilt.pcap")
        assert len(a) == len(b) == s.rows
        assert a == b, pcap.name


def test_image_bits_are_what_rebuilds_the_headers(sample_captures, tmp_path):
    """Changing a pixel changes the rebuilt packet: the image, not the sidecar, holds the headers."""
    from netdiff.bits.layout import NETDIFFUSION
    from netdiff.image.codec import write_png

    pcap2img(sample_captures / "icmp_echo", tmp_path / "img", max_images=1)
    png = sorted((tmp_path / "img").rglob("*.png"))[0]
    bits = read_png_bits(png)
    ttl = NETDIFFUSION.fields["ipv4_ttl"]
    bits[0, ttl] = [0, 0, 0, 0, 0, 1, 1, 1]            # TTL 7 in the first packet
    write_png(png, bits)
    r = img2pcap(png, tmp_path / "out.pcap")
    batch, _ = read_capture(tmp_path / "out.pcap")
    p = parse(batch)
    assert batch.packet(0)[int(p.l3[0]) + 8] == 7
    assert r.mode == "exact"


def test_payload_dropped_from_sidecar_is_zero(sample_captures, tmp_path):
    pcap2img(sample_captures / "web_tcp", tmp_path / "img", keep_payload=False, max_images=1)
    png = sorted((tmp_path / "img").rglob("*.png"))[0]
    img2pcap(png, tmp_path / "o.pcap")
    got, _ = read_capture(tmp_path / "o.pcap")
    orig, _ = read_capture(sample_captures / "web_tcp" / "web_tcp_0.pcap")
    p = parse(orig)
    for i in range(len(got)):
        a, b = orig.packet(i), got.packet(i)
        start = int(p.l4[i] + p.l4_hlen[i])
        assert a[:start] == b[:start] and len(a) == len(b)
        assert set(b[start:]) <= {0}


@pytest.mark.parametrize("group,extra", [("flow", {}), ("window", {"window": 100})])
def test_groupings(sample_captures, tmp_path, group, extra):
    s = pcap2img(sample_captures, tmp_path / "img", group=group, **extra)
    assert not s.errors
    from netdiff.image.sidecar import iter_sidecars
    docs = [json.loads(j.read_text()) for j in iter_sidecars(tmp_path / "img")]
    assert sum(d["rows"] for d in docs) == s.rows
    if group == "window":
        assert max(d["rows"] for d in docs) == 100
    else:
        # every image holds one bidirectional 5-tuple
        for png in list((tmp_path / "img").rglob("*.png"))[:20]:
            r = img2pcap(png, tmp_path / "f.pcap")
            b, _ = read_capture(tmp_path / "f.pcap")
            p = parse(b)
            from netdiff.pipeline.conversions import flow_labels
            assert len(set(flow_labels(b, p).tolist())) == 1 and r.packets == len(b)
    cmp_dir = tmp_path / "rebuilt"
    list(img2pcap_many(tmp_path / "img", cmp_dir))
    assert compare_rebuilt(tmp_path / "img", cmp_dir)["packets_differing"] == 0


def test_long_capture_gives_several_images(sample_captures, tmp_path):
    from netdiff.bits.layout import named_layout

    s = pcap2img(sample_captures / "dns_udp" / "dns_udp_0.pcap", tmp_path, layout=named_layout("nprint", height=100))
    assert s.images == -(-s.rows // 100)
    assert read_png_bits(sorted(tmp_path.rglob("*.png"))[0]).shape == (100, 1408)


def test_cli_pcap2img_img2pcap(sample_captures, tmp_path, cli):
    code, out, err = cli("pcap2img", sample_captures, tmp_path / "img", "--height", "256")
    assert code == 0, err
    assert "images (1088x256)" in out
    code, out, err = cli("img2pcap", tmp_path / "img", tmp_path / "pcap")
    assert code == 0, err
    assert "exact" in out
    assert compare_rebuilt(tmp_path / "img", tmp_path / "pcap")["packets_differing"] == 0
