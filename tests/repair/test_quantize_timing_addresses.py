import json

import numpy as np
import pytest

from netdiff.bits.layout import NETDIFFUSION as L
from netdiff.errors import ImageError, NetdiffError
from netdiff.image.codec import bits_to_rgb
from netdiff.repair import TimingModel, quantize, repair
from netdiff.repair.addresses import AddressPool, parse_pool
from netdiff.repair.perturb import random_bits


# --- quantisation --------------------------------------------------------------------------------

def test_exact_palette_round_trip():
    bits = random_bits(L, 1)
    q, notes = quantize(bits_to_rgb(bits), L)
    assert (q == bits).all() and notes == []


def test_noise_takes_the_nearest_colour():
    bits = random_bits(L, 2)
    rgb = bits_to_rgb(bits).astype(np.int16)
    noise = np.random.default_rng(0).integers(-100, 101, rgb.shape)
    noisy = np.clip(rgb + noise, 0, 255).astype(np.uint8)
    q, notes = quantize(noisy, L)
    assert (q == bits).all()                    # +-100 never crosses the half-way point
    assert "not palette colours" in notes[0]


def test_other_sizes_are_resized_and_said_so():
    bits = np.repeat(np.repeat(random_bits(L, 3)[:256, :272], 4, axis=0), 4, axis=1)
    small = bits_to_rgb(bits[::4, ::4])         # quarter size
    q, notes = quantize(small, L)
    assert q.shape == (L.height, L.width)
    assert "resized" in notes[0]
    assert (q == bits).mean() > 0.9


def test_bad_shape_is_an_image_error():
    with pytest.raises(ImageError, match="RGB"):
        quantize(np.zeros((10, 10), np.uint8), L)


def test_float_images_are_accepted():
    bits = random_bits(L, 4)
    q, _ = quantize(bits_to_rgb(bits).astype(np.float32) / 255.0, L)
    assert (q == bits).all()


def test_repair_rejects_non_ternary_matrices():
    with pytest.raises(NetdiffError, match="other than -1/0/1"):
        repair(np.full((4, L.width), 2, np.int8), L)
    with pytest.raises(NetdiffError, match="shape"):
        repair(np.zeros((4, 7), np.int8), L)


# --- timing ----------------------------------------------------------------------------------------

def test_timing_learn_save_load_sample(tmp_path):
    rng = np.random.default_rng(0)
    gaps = {"a": [rng.lognormal(-6, 1, 4000)], "b": [np.r_[np.zeros(500), rng.lognormal(-2, .5, 500)]]}
    m = TimingModel.learn(gaps)
    m.save(tmp_path / "t.json")
    m2 = TimingModel.load(tmp_path / "t.json")
    assert m2.classes == m.classes
    s = m2.gaps(20000, "a", seed=1)
    assert np.median(np.log(s)) == pytest.approx(-6, abs=0.1)
    sb = m2.gaps(20000, "b", seed=1)
    assert (sb == 0).mean() == pytest.approx(0.5, abs=0.02)
    assert (m2.gaps(10, "a", seed=3) == m2.gaps(10, "a", seed=3)).all()


def test_one_stray_gap_is_drawn_as_rarely_as_it_occurs(tmp_path):
    """999 gaps near 1 ms and one of 10^8 s (a packet with a wrong clock): the 10^8 s gap is one
    in a thousand, so are drawn gaps above a second, not one in a hundred as when the last
    percentile interval ran up to it."""
    rng = np.random.default_rng(0)
    m = TimingModel.learn({"voip": [np.r_[rng.lognormal(np.log(1e-3), 0.3, 999), 1e8]]})
    m.save(tmp_path / "t.json")
    s = TimingModel.load(tmp_path / "t.json").gaps(200_000, "voip", seed=2)
    assert (s > 1.0).mean() < 0.002
    assert np.median(s) == pytest.approx(1e-3, rel=0.1)
    # a model written before the extra quantiles (format /1: 101 even ones, no "p") still reads
    old = {"format": "netdiff-timing/1", "classes": {"x": {"q": list(np.linspace(-3, -1, 101)),
                                                             "p_zero": 0.0, "count": 5}}}
    (tmp_path / "old.json").write_text(json.dumps(old))
    g = TimingModel.load(tmp_path / "old.json").gaps(50_000, "x", seed=0)
    assert np.median(np.log10(g)) == pytest.approx(-2, abs=0.02)


def test_timing_from_sidecars(tmp_path):
    paths = []
    for i, step in enumerate((0.01, 0.02)):
        t = np.arange(100) * step
        doc = {"class": "web", "packets": {"ts_sec": (1700000000 + t.astype(int)).tolist(),
                                           "ts_nsec": np.rint((t % 1) * 1e9).astype(int).tolist()}}
        p = tmp_path / f"s{i}.json"
        p.write_text(json.dumps(doc))
        paths.append(p)
    m = TimingModel.learn_from_sidecars(paths)
    assert m.classes["web"]["count"] == 198
    s = m.gaps(1000, "web")
    assert 0.0099 <= s.min() and s.max() <= 0.0201


def test_timing_bad_files(tmp_path):
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(NetdiffError, match="not a netdiff timing model"):
        TimingModel.load(tmp_path / "x.json")
    with pytest.raises(NetdiffError, match="sidecar"):
        TimingModel.learn_from_sidecars([tmp_path / "x.json"])
    with pytest.raises(NetdiffError, match="no such"):
        TimingModel.load(tmp_path / "missing.json")
    for bad in ({"q": [1, 2, 3], "p": [0, 0.7, 0.5], "p_zero": 0}, {"q": "abc", "p_zero": 0},
                {"q": [1, 2], "p": [0, "x"], "p_zero": 0}, {"q": [1, 2], "p": [0, 1]}, [1, 2]):
        (tmp_path / "b.json").write_text(json.dumps({"format": "netdiff-timing/2", "classes": {"x": bad}}))
        with pytest.raises(NetdiffError, match="malformed"):
            TimingModel.load(tmp_path / "b.json")


# --- addresses -------------------------------------------------------------------------------------

def test_pool_parsing_and_errors():
    v4, v6 = parse_pool("10.9.0.0/16, 192.168.1.7")
    assert [str(n) for n in v4] == ["10.9.0.0/16", "192.168.1.7/32"]
    assert str(v6[0]) == "fd00::/8"                 # IPv6 rows still get private addresses
    for bad in ("224.0.0.0/8", "127.0.0.0/8", "bogus", "255.255.255.255"):
        with pytest.raises(NetdiffError):
            parse_pool(bad)


def test_pool_draws_distinct_usable_addresses():
    p = AddressPool("10.0.0.0/22", seed=3)
    a = p.draw(4, 800)
    keys = {r.tobytes() for r in a}
    assert len(keys) == 800
    assert (a[:, 0] == 10).all() and (a[:, 1] == 0).all() and (a[:, 2] < 4).all()
    assert not ((a[:, 3] == 0) | (a[:, 3] == 255)).any()
    with pytest.raises(NetdiffError, match="too few usable"):
        AddressPool("10.0.0.0/30").draw(4, 5)
