"""netdiff's own 2-bit PNGs: what Pillow reads from them, the fast readers against the general
path, other PNGs still read through Pillow, and damaged files refused in one line."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from netdiff.bits.codec import bits_to_bytes
from netdiff.errors import ImageError
from netdiff.image.codec import PALETTE, read_png_bits, read_png_bytes, write_png


@pytest.mark.parametrize("width", [1088, 1408, 1000, 13, 1])
def test_pillow_reads_the_same_colours(tmp_path, width):
    bits = np.random.default_rng(width).integers(-1, 2, (37, width)).astype(np.int8)
    f = tmp_path / "x.png"
    write_png(f, bits, text={"netdiff:class": "web"})
    with Image.open(f) as img:
        assert img.mode == "P" and img.size == (width, 37) and img.text == {"netdiff:class": "web"}
        assert np.array_equal(np.asarray(img.convert("RGB")), PALETTE[bits + 1])
    assert np.array_equal(read_png_bits(f, width=width, height=37), bits)


@pytest.mark.parametrize("width", [1088, 64, 1000])
def test_byte_reader_matches_bits(tmp_path, width):
    rng = np.random.default_rng(1)
    bits = rng.integers(-1, 2, (50, width)).astype(np.int8)
    bits[rng.random(50) < 0.3] = rng.integers(0, 2, (1, width))   # rows whose bytes are covered
    bits[-7:] = -1                                                # padding rows
    f = tmp_path / "x.png"
    write_png(f, bits)
    if width % 8:
        with pytest.raises(ValueError):
            bits_to_bytes(bits)
        return
    vals, covered, blank = read_png_bytes(f, width, 50)
    want_vals, want_cov = bits_to_bytes(bits)
    assert np.array_equal(covered, want_cov)
    assert np.array_equal(vals[covered], want_vals[want_cov])
    assert np.array_equal(blank, (bits == -1).all(axis=1)) and blank[-7:].all()


def test_pillow_written_png_reads_the_same(tmp_path):
    """Filtered, 8-bit or RGB PNGs (other tools, older netdiff) take the general path."""
    bits = np.random.default_rng(2).integers(-1, 2, (20, 1088)).astype(np.int8)
    for name, img in [("p8.png", Image.fromarray((bits + 1).astype(np.uint8), mode="P")),
                      ("rgb.png", Image.fromarray(PALETTE[bits + 1]))]:
        if img.mode == "P":
            img.putpalette(PALETTE.reshape(-1).tolist())
        img.save(tmp_path / name)
        assert np.array_equal(read_png_bits(tmp_path / name), bits)
        vals, covered, blank = read_png_bytes(tmp_path / name, 1088, 20)
        assert np.array_equal(covered, bits_to_bytes(bits)[1])


def test_damaged_png_is_one_line_error(tmp_path):
    f = tmp_path / "x.png"
    write_png(f, np.zeros((8, 64), dtype=np.int8))
    raw = bytearray(f.read_bytes())
    raw[-20] ^= 0xFF                           # inside the IDAT chunk: CRC no longer matches
    (tmp_path / "crc.png").write_bytes(bytes(raw))
    (tmp_path / "short.png").write_bytes(f.read_bytes()[:40])
    for name, problem in [("crc.png", "CRC error"), ("short.png", "truncated PNG chunk")]:
        with pytest.raises(ImageError, match=problem) as e:
            read_png_bits(tmp_path / name)
        assert name in str(e.value) and "\n" not in str(e.value)


def test_out_of_palette_index_is_refused(tmp_path):
    """Index 3 does not exist in a three-colour palette: never read as a bit."""
    from netdiff.image.png import encode_palette2
    idx = np.ones((4, 64), dtype=np.uint8)
    idx[2, 9] = 3
    f = tmp_path / "x.png"
    f.write_bytes(encode_palette2(idx, np.vstack([PALETTE, [[9, 9, 9]]])))
    with pytest.raises(ImageError, match="not one of the three palette colours"):
        read_png_bits(f)
    with pytest.raises(ImageError, match="not one of the three palette colours"):
        read_png_bytes(f, 64, 4)



def test_text_chunks_round_trip_and_give_img2pcap_the_class(tmp_path):
    """generate writes the class into the PNG; img2pcap reads it when no sidecar names it, so
    class priors apply to images in any folder."""
    from netdiff.pipeline.conversions import img2pcap
    from netdiff.image.codec import write_png
    from netdiff.image.png import text_chunks

    folder = tmp_path / "gen"
    folder.mkdir()
    png = folder / "a.png"
    write_png(png, np.zeros((4, 1088), np.int8), text={"netdiff:class": "dns", "netdiff:seed": "3"})
    assert text_chunks(png.read_bytes()) == {"netdiff:class": "dns", "netdiff:seed": "3"}
    assert text_chunks(b"not a png") == {}
    doc = {"format": "netdiff-field-priors/1", "classes": {"web": {"packets": 0, "fields": {}}}}
    res = img2pcap(png, tmp_path / "a.pcap", priors=doc)
    assert "class 'dns' is not in the priors (classes: web); not applied" in res.notes
