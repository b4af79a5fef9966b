"""The four image kinds (converted real, 5%/30% flipped, blurred + resized to 816x768, uniformly
random), from netdiff's own samples and the shared real captures: every repaired packet passes
tshark and netdiff's rule checks."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from netdiff.bits.layout import NETDIFFUSION as L
from netdiff.image.codec import bits_to_rgb
from netdiff.io.pcap import PacketBatch, write_pcap
from netdiff.packet_repair import quantize, repair
from netdiff.packet_repair.perturb import blur_resize, flip_pixels, jpeg, random_bits
from netdiff.validation.rule_checks import check_batch
from netdiff.validation.tshark import tshark_check
from repair_helpers import image_bits

KINDS = ("real", "flip5", "flip30", "blur_resize", "random")
SHARED_PICK = ("tls_web/chrome.pcap", "dns/dnscap_dns.pcap", "video_conferencing/teams.pcap",
               "ics_modbus/modbus_test.pcap", "quic/quic_q39.pcap")


def _kind(bits, kind, seed):
    if kind == "real":
        return bits
    if kind == "flip5":
        return flip_pixels(bits, 0.05, seed)
    if kind == "flip30":
        return flip_pixels(bits, 0.30, seed)
    if kind == "blur_resize":
        q, notes = quantize(blur_resize(bits_to_rgb(bits)), L)
        assert any("816x768" in n for n in notes)
        return q
    return random_bits(L, seed)


def _repaired(images) -> list:
    return [repair(bits, L, seed=i) for i, bits in enumerate(images)]


def _pass_the_rules(results) -> None:
    for res in results:
        fails, checked = check_batch(res.batch)
        assert checked.all() and not fails, {k: int(v.sum()) for k, v in fails.items()}
        assert res.report["unreadable_packets"] == 0
        assert res.batch.caplen.max() <= 14 + 1500          # fits the Ethernet MTU (replayable)


def _pass_tshark(results, path) -> None:
    batches = [res.batch for res in results]
    write_pcap(path, PacketBatch.concat(batches))
    t = tshark_check(str(path))
    assert t["packets"] == sum(len(b) for b in batches)
    assert (t["malformed"], t["checksum_errors"], t["expert_errors"]) == (0, 0, 0), \
        (t["failures"], t["expert_error_messages"])


needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None,
                                  reason="tshark is not installed (Debian package tshark)")


# repaired once, judged by the rule checks and, where it is installed, by tshark
@pytest.fixture(scope="module")
def sample_repaired(sample_images):
    return _repaired([_kind(b, k, s) for s, (b, k) in enumerate(
        (b, k) for b in sample_images.values() for k in KINDS)])


@pytest.fixture(scope="module")
def shared_repaired(shared_data):
    images = []
    for s, rel in enumerate(SHARED_PICK):
        bits = image_bits(shared_data / "pcaps" / rel)
        images += [_kind(bits, k, s) for k in KINDS if k != "random"]
    return _repaired(images)


def test_sample_images_all_kinds_pass_the_rules(sample_repaired):
    _pass_the_rules(sample_repaired)


@needs_tshark
def test_sample_images_all_kinds_pass_tshark(sample_repaired, tmp_path):
    _pass_tshark(sample_repaired, tmp_path / "samples.pcap")


def test_shared_images_all_kinds_pass_the_rules(shared_repaired):
    _pass_the_rules(shared_repaired)


@needs_tshark
def test_shared_images_all_kinds_pass_tshark(shared_repaired, tmp_path):
    _pass_tshark(shared_repaired, tmp_path / "shared.pcap")


def test_kept_share_reflects_noise(sample_images):
    bits = sample_images["web_tcp"]
    kept = [repair(_kind(bits, k, 0), L).report["kept_share"]["all"]
            for k in ("real", "flip5", "flip30")]
    assert kept[0] > kept[1] > kept[2]
    assert kept[0] > 0.95
    rep = repair(bits, L).report
    json.dumps(rep)                              # the report is plain JSON
    assert set(rep["kept_share"]) >= {"ipv4 header", "tcp header", "tcp options", "udp header",
                                      "icmp header", "all"}


def test_jpeg_noise_is_harmless(sample_images):
    bits = sample_images["dns_udp"]
    q, notes = quantize(jpeg(bits_to_rgb(bits), quality=70), L)
    assert notes and "nearest" in notes[-1]
    # 4:2:0 chroma subsampling blurs colour over 2x2 pixels: a little is lost, nothing invalid
    assert (q == bits).mean() > 0.98
    fails, _ = check_batch(repair(q, L).batch)
    assert not fails


def test_blank_image_is_an_error():
    from netdiff.errors import NetdiffError

    with pytest.raises(NetdiffError, match="no row of the image holds a packet"):
        repair(np.full((L.height, L.width), -1, np.int8), L)
    nearly = np.random.default_rng(0).choice(np.array([-1, 0, 1], np.int8), size=(L.height, L.width),
                                             p=[0.9, 0.05, 0.05])
    with pytest.raises(NetdiffError, match="no row of the image holds a packet"):
        repair(nearly, L)                        # 10% painted everywhere: nothing to rebuild


@pytest.mark.parametrize("layout_name", ["netdiffusion", "nprint", "netdiffusion+payload"])
def test_any_image_of_the_right_kind(layout_name, tmp_path):
    """Colour mixes from all-red to mostly-blue, odd heights, striped fill: always valid."""
    from netdiff.bits.layout import named_layout

    lay = named_layout("netdiffusion", payload_bytes=32) if layout_name.endswith("payload") \
        else named_layout(layout_name)
    rng = np.random.default_rng(len(layout_name))
    images = []
    for t in range(6):
        p = rng.dirichlet([1, 1, 1])
        p[0] = min(p[0], 0.5)                    # at least half painted (see the blank test below)
        p[1:] *= (1 - p[0]) / p[1:].sum()
        b = rng.choice(np.array([-1, 0, 1], np.int8), size=(int(rng.integers(1, 400)), lay.width), p=p)
        if t == 0:
            b[:] = 1
        elif t == 1:
            b[:] = 0
        elif t == 2:
            b[:, ::2] = -1                       # under-painted: every row less than half filled
        elif t == 3:
            b = rng.choice(np.array([-1, 0, 1], np.int8), size=(300, lay.width), p=[0.6, 0.2, 0.2])
        images.append(b)
    batches = []
    for i, b in enumerate(images):
        res = repair(b, lay, seed=i)
        assert len(res.batch) >= 1
        fails, checked = check_batch(res.batch)
        assert checked.all() and not fails
        batches.append(res.batch)
    path = tmp_path / "any.pcap"
    write_pcap(path, PacketBatch.concat(batches))
    if shutil.which("tshark"):
        # Generated payload bytes are kept (only template length fields are written), so random
        # ones on a port an application dissector owns are that dissector's to reject: the
        # payload layout is judged up to the transport layer.
        t = tshark_check(str(path), app_layers=not layout_name.endswith("payload"))
        assert (t["malformed"], t["checksum_errors"], t["expert_errors"]) == (0, 0, 0), \
            (t["failures"], t["expert_error_messages"])


def test_padding_stays_blank_under_heavy_noise(sample_images):
    bits = sample_images["web_tcp"]
    rows = int(np.any(bits != -1, axis=1).sum())
    assert repair(flip_pixels(bits, 0.30, 5), L).report["packets"] == rows
