"""benchmarks/fidelity.py --mix train: the generated images shared out by the classes' training
packets, so that the pooled measures compare a generated set with the floor at the same class mix."""
from __future__ import annotations

from tests.conftest import benchmark_module


def test_uniform_mix_is_count_per_class():
    B = benchmark_module("fidelity")
    assert B.image_counts({"a": 10, "b": 1000}, 12, "uniform") == {"a": 12, "b": 12}


def test_training_mix_follows_the_packets_and_keeps_the_total():
    """The unseen split of the shared captures: 120 images in all; each class's count within one
    image of its share, and never under two (the sample spread compares two images)."""
    B = benchmark_module("fidelity")
    packets = {"bittorrent": 1648, "dns": 3133, "ics_modbus": 2257, "messaging": 2203, "quic": 1341,
               "ssh": 3000, "tls_web": 2904, "video_conferencing": 3431, "video_streaming": 2082,
               "voip": 1776}
    n = B.image_counts(packets, 12, "train")
    assert sum(n.values()) == 120
    total = sum(packets.values())
    for c, k in n.items():
        assert abs(k - 120 * packets[c] / total) <= 1, (c, k)
    assert n["video_conferencing"] > n["dns"] > n["quic"] >= 2


def test_training_mix_gives_a_rare_class_two_images():
    B = benchmark_module("fidelity")
    # shares 0.83, 0.17, 0.0001 of 12 images: 10, 2, 0; the rare class's two come from the big one
    assert B.image_counts({"big": 100_000, "rare": 10, "mid": 20_000}, 4, "train") == \
        {"big": 8, "mid": 2, "rare": 2}
    assert B.image_counts({"x": 5, "y": 7}, 1, "train") == {"x": 2, "y": 2}


def test_packet_mix_counts_the_packets_images_hold():
    """--mix packets: a class whose images end early (a short capture, 100 packets an image) takes
    more images than one whose images are full (1,000), until each holds its training share of
    the packets ``count`` images a class would hold (2 x 1,100 here); never fewer than two, never
    more than MAX_MIX_IMAGES x count. Images are planned ``count`` at a time."""
    B = benchmark_module("fidelity")
    held = {"full": 1000, "short": 100}
    asked = []

    def planned(c, ks):
        asked.append((c, list(ks)))
        return [held[c]] * len(ks)

    n = B.packet_counts({"full": 500, "short": 500}, 2, planned)
    # budget 2,200 packets, 1,100 each: 2 full images (2,000 >= 1,100), 11 short ones
    assert n == {"full": 2, "short": 11}
    assert [ks for c, ks in asked if c == "short"] == [[2 * j, 2 * j + 1] for j in range(6)]
    # (2,198 of 2,200 packets: three full images) a class the training side barely has still gets
    # two images; one whose images hold nothing
    # stops at the cap
    assert B.packet_counts({"full": 1000, "short": 1}, 2, planned) == {"full": 3, "short": 2}
    held["short"] = 0
    assert B.packet_counts({"full": 1, "short": 1}, 2, planned)["short"] == B.MAX_MIX_IMAGES * 2
