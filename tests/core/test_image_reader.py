"""One image reader: img2pcap, evaluate and the model's data loader decode the same image to the
same bits (one quantiser, one tie rule) and agree on its layout (one resolver, one order)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from netdiff.bits.layout import NETDIFFUSION, PRESETS, named_layout
from netdiff.errors import ImageError
from netdiff.image.codec import PALETTE, bits_to_rgb, nearest_bits, rgb_to_bits, write_png
from netdiff.image.reader import (LAYOUT_WIDTHS, layout_for_width, quantize, read_image,
                                  resolve_layout)

# Pixels equally near two or three palette colours, and the bit each must get: fill first, then
# 0, then 1 (grey, yellow, magenta, cyan, a red/blue tie, and the three palette colours).
TIES = np.array([[128, 128, 128], [200, 200, 0], [200, 0, 200], [0, 200, 200], [90, 10, 90],
                 [255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)
TIE_BITS = [-1, 0, -1, -1, -1, 1, 0, -1]


def save_rgb(path, rgb, text=None):
    """An RGB (not palette) PNG, so no reader can take netdiff's fast palette path."""
    info = PngInfo()
    for k, v in (text or {}).items():
        info.add_text(k, v)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb, mode="RGB").save(path, pnginfo=info)


def save_reordered_palette(path, bits):
    """A palette PNG whose colours are in another order than netdiff writes them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray((1 - bits).astype(np.uint8), mode="P")     # 1 -> 0 (red), -1 -> 2 (blue)
    img.putpalette(PALETTE[::-1].ravel().tolist())
    img.save(path)


def bits_via_img2pcap(png, monkeypatch, **kw):
    """The bits and layout img2pcap hands to repair for ``png``."""
    import netdiff.packet_repair
    from netdiff.pipeline.conversions import img2pcap

    seen = {}

    class Stop(Exception):
        pass

    def fake_repair(bits, layout, **_):
        seen.update(bits=bits, layout=layout)
        raise Stop

    monkeypatch.setattr(netdiff.packet_repair, "repair", fake_repair)
    with pytest.raises(Stop):
        img2pcap(png, png.with_suffix(".pcap"), **kw)
    return seen["bits"], seen["layout"]


def bits_via_evaluate(folder):
    from netdiff.eval.load import load_dir

    ts = load_dir(folder)
    return ts.bits, ts.layout


def bits_via_model(png, width):
    from netdiff.model.data import load_bits

    return load_bits(png, width)


def test_the_tie_rule():
    assert nearest_bits(TIES).tolist() == TIE_BITS
    bits, off = rgb_to_bits(TIES[None])
    assert bits.tolist() == [TIE_BITS] and off == 5
    with pytest.raises(ImageError, match="5 pixels are not one of the three palette colours"):
        rgb_to_bits(TIES[None], "exact")
    # floats (the model's decoded samples) follow the same rule without rounding to uint8
    assert nearest_bits(TIES.astype(np.float32) / 255).tolist() == TIE_BITS


def test_every_reader_breaks_ties_the_same_way(tmp_path, monkeypatch):
    """Before one quantiser, evaluate took the first largest channel (grey -> 1, yellow -> 1)
    while repair took fill, then 0; now img2pcap, evaluate, repair's quantize and the model's
    sampler agree, and the model's data loader (exact) refuses the image rather than guess."""
    width = NETDIFFUSION.width
    rgb = bits_to_rgb(np.random.default_rng(0).integers(-1, 2, (3, width)).astype(np.int8))
    rgb[:, :len(TIES)] = TIES
    png = tmp_path / "gen" / "cls" / "x.png"
    save_rgb(png, rgb)
    want, _ = rgb_to_bits(rgb)
    assert want[:, :len(TIES)].tolist() == [TIE_BITS] * 3

    got, layout = bits_via_img2pcap(png, monkeypatch)
    assert layout.width == width and layout.height == 3 and np.array_equal(got, want)
    got, layout = bits_via_evaluate(tmp_path / "gen")
    assert layout.width == width and np.array_equal(got, want)
    got, notes = quantize(rgb, named_layout("netdiffusion", height=3))
    assert np.array_equal(got, want) and "not palette colours" in notes[0]
    with pytest.raises(ImageError, match="not one of the three palette colours"):
        bits_via_model(png, width)

    pytest.importorskip("diffusers")
    import torch

    from netdiff.model.ternary import tensor_to_bits

    x = torch.from_numpy(rgb.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    assert np.array_equal(tensor_to_bits(x)[0], want)


@pytest.mark.parametrize("kind", ["rgb", "reordered_palette"])
def test_convert_evaluate_and_model_read_the_same_bits(tmp_path, monkeypatch, kind):
    """An image netdiff did not write (RGB, or a palette in another order), of an uncommon
    layout (netdiffusion with 2 payload bytes, 5 rows), named only by its PNG text (RGB) or its
    width (palette): every path gets the same bits and layout."""
    layout = named_layout("netdiffusion", payload_bytes=2, height=5)
    bits = np.random.default_rng(1).integers(-1, 2, (5, layout.width)).astype(np.int8)
    png = tmp_path / "imgs" / "web" / "x.png"
    if kind == "rgb":
        save_rgb(png, bits_to_rgb(bits), text={"netdiff:layout": "netdiffusion"})
    else:
        save_reordered_palette(png, bits)

    via_convert, l_convert = bits_via_img2pcap(png, monkeypatch)
    via_eval, l_eval = bits_via_evaluate(tmp_path / "imgs")
    via_model = bits_via_model(png, layout.width)
    for got in (via_convert, via_eval, via_model):
        assert np.array_equal(got, bits)
    assert l_convert.columns == l_eval.columns == layout.columns
    assert l_convert.height == l_eval.height == 5
    assert read_image(png).layout_source == ("png text" if kind == "rgb" else "width")


def test_width_table_comes_from_the_named_layouts():
    assert set(LAYOUT_WIDTHS.values()) == set(PRESETS)
    assert {w: n for w, n in LAYOUT_WIDTHS.items()} == {1088: "netdiffusion", 1408: "nprint",
                                                         1520: "full"}
    for width, name in LAYOUT_WIDTHS.items():
        lay = layout_for_width(width, 7)
        assert lay.name == name and lay.payload_bytes == 0 and lay.height == 7
    # an exact table width wins over "netdiffusion + payload" (1408 = 1088 + 40 bytes)
    assert layout_for_width(1088 + 16, 9).payload_bytes == 2
    assert layout_for_width(1000, 9) is None and layout_for_width(1088 + 4, 9) is None


def test_layout_resolution_order(tmp_path):
    """Given, then the PNG text, then the sidecar, then the width."""
    width = 1408                        # nprint by width; netdiffusion with 40 payload bytes by name
    bits = np.zeros((4, width), np.int8)
    with_text = tmp_path / "t.png"
    write_png(with_text, bits, text={"netdiff:layout": "netdiffusion"})
    plain = tmp_path / "p.png"
    write_png(plain, bits)
    full = named_layout("full", height=4)
    side = {"layout": named_layout("nprint", height=99).to_dict()}

    lay, src, _ = resolve_layout(with_text, width, 4, side)
    assert (src, lay.name, lay.payload_bytes, lay.height) == ("png text", "netdiffusion", 40, 4)
    lay, src, _ = resolve_layout(plain, width, 4, side)
    assert (src, lay.name, lay.height) == ("sidecar", "nprint", 99)
    lay, src, _ = resolve_layout(plain, width, 4, {})
    assert (src, lay.name, lay.height) == ("width", "nprint", 4)
    assert resolve_layout(plain, 1000, 4, {}) == (None, "", [])
    # the sidecar on disk is read when the caller has none
    plain.with_suffix(".json").write_text(json.dumps(side))
    assert read_image(plain).layout_source == "sidecar"
    got = read_image(plain, full, fit=None)
    assert got.layout is full and got.layout_source == "given"
    # a text naming no layout netdiff knows is noted and skipped; a JSON layout is read whole
    odd = tmp_path / "o.png"
    write_png(odd, bits, text={"netdiff:layout": "mine"})
    lay, src, notes = resolve_layout(odd, width, 4, {})
    assert src == "width" and "'mine'" in notes[0]
    as_json = tmp_path / "j.png"
    write_png(as_json, bits, text={"netdiff:layout": json.dumps(named_layout("nprint", height=4).to_dict())})
    assert read_image(as_json).layout.name == "nprint"
    bad = tmp_path / "b.png"
    write_png(bad, bits)
    with pytest.raises(ImageError, match="bad 'layout'"):
        read_image(bad, sidecar={"layout": {"no": "sections"}})


def test_size_policies(tmp_path):
    png = tmp_path / "x.png"
    write_png(png, np.zeros((6, 1000), np.int8))
    with pytest.raises(ImageError, match="1000 columns wide; with no layout .* 1088 \\(netdiffusion\\)"):
        read_image(png)
    got = read_image(png, fit="resize")                  # img2pcap: NetDiffusion's layout, resized
    assert got.layout_source == "default" and got.bits.shape == (1024, 1088)
    assert "resized" in got.notes[0]
    with pytest.raises(ImageError, match="1000 columns wide, its given layout 'netdiffusion' has 1088"):
        read_image(png, NETDIFFUSION)
    with pytest.raises(ImageError, match="1000x6 pixels, the layout needs 1088x1024"):
        read_image(png, NETDIFFUSION, mode="exact", fit="shape")
    assert read_image(png, mode="exact", fit=None).bits.shape == (6, 1000)
    with pytest.raises(ValueError, match="nearest"):
        read_image(png, fit="resize", mode="exact")
    with pytest.raises(ValueError, match="mode"):
        read_image(png, mode="closest")


def test_control_images_use_the_same_quantiser(tmp_path):
    """--control: a palette image is a real image of the class (its bits' control), any other
    colour makes it a drawn mask; the palette test is the quantiser's off-palette count."""
    from netdiff.model.controls import control_from_bits, load_control

    layout = named_layout("netdiffusion", height=8)
    bits = np.random.default_rng(2).integers(-1, 2, (8, layout.width)).astype(np.int8)
    real = tmp_path / "real.png"
    save_rgb(real, bits_to_rgb(bits))
    assert np.array_equal(load_control(str(real), "mask", layout, 8), control_from_bits(bits, "mask"))
    drawn = tmp_path / "drawn.png"
    rgb = bits_to_rgb(bits)
    rgb[0, 0] = (128, 128, 128)
    save_rgb(drawn, rgb)
    want = (rgb.astype(np.float32).mean(axis=2) > 127.5).astype(np.float32)
    assert np.array_equal(load_control(str(drawn), "mask", layout, 8), want)
