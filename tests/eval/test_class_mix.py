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
