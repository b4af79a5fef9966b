"""The measures one by one, checked against tshark and against cases with known answers."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from netdiff.bits.layout import NETDIFFUSION, NPRINT
from netdiff.errors import NetdiffError
from netdiff.eval import fidelity as F
from netdiff.eval import memorization as M
from netdiff.eval.calibration import split_real
from netdiff.eval.fields import bits_int, decode_fields
from netdiff.eval.flows import flow_table
from netdiff.eval.load import common_layout, load_dir


def test_bits_int_is_msb_first_and_marks_absent():
    rng = np.random.default_rng(0)
    vals = rng.integers(0, 2 ** 16, 50)
    bits = np.unpackbits(vals.astype(">u2").view(np.uint8).reshape(-1, 2), axis=1).astype(np.int8)
    bits[7, 3] = -1
    got = bits_int(bits)
    assert got[7] == -1
    np.testing.assert_array_equal(np.delete(got, 7), np.delete(vals, 7))


def _tshark(path, *fields):
    if shutil.which("tshark") is None:
        pytest.skip("tshark not installed")
    cmd = ["tshark", "-r", str(path), "-T", "fields", "-E", "separator=,", "-o", "tcp.relative_sequence_numbers:FALSE"]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return [line.split(",") for line in out.splitlines()]


def test_decoded_fields_and_flows_match_tshark(tmp_path, pcaps_root):
    from netdiff.bits.codec import encode
    from netdiff.io.pcap import read_capture

    path = pcaps_root / "video_conferencing" / "wa_video.pcap"
    batch, _ = read_capture(path)
    bits, parsed = encode(batch, NPRINT)
    ok = parsed.reason == 0
    rows = [r for r, k in zip(_tshark(path, "ip.ttl", "ip.len", "tcp.window_size_value", "tcp.flags",
                                      "ip.src", "ip.dst", "tcp.srcport", "tcp.dstport",
                                      "udp.srcport", "udp.dstport", "ip.proto"), ok) if k]
    f = decode_fields(bits, NPRINT)
    v4 = f["ip_version"] == 4
    assert v4.sum() > 500
    ttl = np.array([int(r[0].split(",")[0]) if r[0] else -1 for r in rows])
    iplen = np.array([int(r[1]) if r[1] else -1 for r in rows])
    np.testing.assert_array_equal(f["ttl"][v4], ttl[v4])
    np.testing.assert_array_equal(f["packet_length"][v4], iplen[v4])
    tcp = f["protocol"] == 6
    assert tcp.sum() > 50
    np.testing.assert_array_equal(f["tcp_window"][tcp], [int(rows[i][2]) for i in np.flatnonzero(tcp)])
    np.testing.assert_array_equal(f["tcp_flags"][tcp], [int(rows[i][3], 16) for i in np.flatnonzero(tcp)])
    # Bidirectional 5-tuples, counted independently from tshark's fields.
    keys = set()
    for r, proto in zip(rows, f["protocol"]):
        sp, dp = (r[6], r[7]) if proto == 6 else (r[8], r[9]) if proto == 17 else ("", "")
        keys.add((frozenset([(r[4], sp), (r[5], dp)]), proto))
    (tmp_path / "c").mkdir()
    shutil.copy(path, tmp_path / "c" / path.name)
    ts = load_dir(tmp_path)
    assert len(np.unique(ts.flow)) == len(keys)
    table = flow_table(ts)
    assert int(table["packets"].sum()) == len(ts)
    assert len(table) == len(keys)


def test_distances_known_values():
    p = np.array([[1.0, 0, 0], [0.5, 0.5, 0]])
    q = np.array([[0, 0, 1.0], [0.5, 0.5, 0]])
    np.testing.assert_allclose(F.jsd(p, q), [1, 0], atol=1e-12)
    np.testing.assert_allclose(F.tvd(p, q), [1, 0], atol=1e-12)
    np.testing.assert_allclose(F.hellinger(p, q), [1, 0], atol=1e-7)
    rng = np.random.default_rng(1)
    real = rng.integers(-1, 2, (4000, 8)).astype(np.int8)
    same = rng.integers(-1, 2, (4000, 8)).astype(np.int8)
    assert F.column_distances(real, same)["jsd"].max() < 0.01
    assert F.column_distances(real, np.ones_like(real))["tvd"].min() > 0.6


def test_nearest_counts_present_bits():
    ref = np.array([[1, 0, 1, 1, -1, -1, -1, -1], [0, 0, 0, 0, 0, 0, 0, 0]], dtype=np.int8)
    q = np.array([[1, 0, 1, 1, -1, -1, -1, -1],     # exact copy
                  [1, 0, 1, 0, -1, -1, -1, -1],     # one of four present bits differs
                  [1, 0, 1, 1, 1, -1, -1, -1]],     # one extra present bit: 1 of 5
                 dtype=np.int8)
    np.testing.assert_allclose(M.nearest(q, ref), [0, 0.25, 0.2])
    np.testing.assert_allclose(M._nearest_packed(q, ref), [0, 0.25, 0.2])
    wide = np.random.default_rng(2).integers(-1, 2, (6, 70000)).astype(np.int8)
    d = M.nearest(wide[:3], wide[2:])
    assert d[2] == 0 and d[0] > 0.5


def test_split_real_deals_every_flow(splits):
    ts = load_dir(splits["real"])
    a, b = split_real(ts, np.random.default_rng(0))
    assert len(np.intersect1d(a, b)) == 0 and len(a) + len(b) == len(ts)
    assert abs(len(a) - len(b)) <= len(np.unique(ts.flow))
    sizes = np.bincount(ts.flow)
    both = np.intersect1d(ts.flow[a], ts.flow[b])
    assert set(np.flatnonzero(sizes >= 2)) <= set(both)


def test_perturbed_ttl_is_the_worst_field(splits, tmp_path):
    """Write modified pcaps: every IPv4 TTL set to 7. Only TTL-related measures should move."""
    from netdiff.bits.codec import parse
    from netdiff.eval.flows import flow_table as ft
    from netdiff.io.pcap import PacketBatch, read_capture, write_pcap

    for src in sorted(splits["other"].glob("*/*.pcap")):
        batch, _ = read_capture(src)
        p = parse(batch)
        data = batch.data.copy()
        v4 = np.flatnonzero(p.version == 4)
        data[batch.offset[v4] + p.l3[v4] + 8] = 7
        out = tmp_path / "ttl" / src.parent.name / src.name
        write_pcap(out, PacketBatch(data, batch.offset, batch.caplen, batch.wirelen, batch.ts_sec,
                                    batch.ts_nsec, batch.linktype, batch.number))
    real, synth = load_dir(splits["real"]), load_dir(tmp_path / "ttl")
    other = load_dir(splits["other"])
    fid = F.fidelity(real, synth, ft(real), ft(synth))
    base = F.fidelity(real, other, ft(real), ft(other))
    worst = max(fid["field_jsd"], key=fid["field_jsd"].get)
    assert worst in ("ipv4_ttl", "ipv4_cksum")
    assert fid["field_jsd"]["ipv4_ttl"] > 0.3 > base["field_jsd"]["ipv4_ttl"]
    assert fid["decoded_fields"]["ttl"]["jsd"] > 0.5
    assert fid["decoded_fields"]["ttl"]["emd"] > 20
    assert abs(fid["decoded_fields"]["packet_length"]["jsd"] - base["decoded_fields"]["packet_length"]["jsd"]) < 1e-9
    assert fid["inter_arrival"]["emd_log10_s"] == base["inter_arrival"]["emd_log10_s"]


def test_png_loading_nearest_colour_and_errors(tmp_path):
    from PIL import Image

    from netdiff.image.codec import rgb_to_bits

    rgb = np.array([[[250, 10, 3], [5, 240, 20], [0, 0, 200]]], dtype=np.uint8)
    np.testing.assert_array_equal(rgb_to_bits(rgb)[0], [[1, 0, -1]])
    (tmp_path / "x").mkdir()
    Image.fromarray(np.zeros((4, 100, 3), np.uint8)).save(tmp_path / "x" / "a.png")
    with pytest.raises(NetdiffError, match="100 columns wide"):
        load_dir(tmp_path / "x")
    with pytest.raises(NetdiffError, match="not a folder"):
        load_dir(tmp_path / "x" / "a.png")
    # A top-level image takes its class and timestamps from its sidecar; padding rows are dropped.
    import json

    from netdiff.image.codec import pad_rows, write_png

    rows = np.random.default_rng(3).integers(0, 2, (5, NETDIFFUSION.width)).astype(np.int8)
    write_png(tmp_path / "y" / "img_0.png", pad_rows(rows, 1024))
    (tmp_path / "y" / "img_0.json").write_text(json.dumps(
        {"class": "web", "packets": {"ts_sec": [10, 10, 11, 12, 12], "ts_nsec": [0, 5, 0, 0, 0]}}))
    ts = load_dir(tmp_path / "y")
    assert ts.classes == ["web"] and len(ts) == 5 and ts.layout.name == "netdiffusion"
    np.testing.assert_array_equal(ts.bits, rows)
    np.testing.assert_allclose(ts.ts, [10, 10 + 5e-9, 11, 12, 12])
    (tmp_path / "y" / "img_0.json").write_text("{not json")
    with pytest.raises(NetdiffError, match="unreadable sidecar"):
        load_dir(tmp_path / "y")


def test_common_layout_of_pcaps_and_images():
    lay = common_layout(NPRINT, NETDIFFUSION)
    assert lay.columns == NETDIFFUSION.columns and lay.name == "netdiffusion"
    assert common_layout(NPRINT, NPRINT).columns == NPRINT.columns
