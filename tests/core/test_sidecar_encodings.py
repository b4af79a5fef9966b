"""Residual encodings: zstd (written now), zlib (older sidecars, or no zstandard module) and a
damaged or unknown one refused in one line."""
from __future__ import annotations

import base64
import json
import re
import zlib

import pytest

from netdiff.pipeline.conversions import img2pcap, pcap2img
from netdiff.errors import ImageError
from netdiff.pipeline.sample_captures import write_samples


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    d = tmp_path_factory.mktemp("enc")
    cap = write_samples(d / "caps", seed=2)[0]
    pcap2img(cap, d / "img")
    png = sorted((d / "img").rglob("*.png"))[0]
    img2pcap(png, d / "ref.pcap")
    return png, (d / "ref.pcap").read_bytes()


def test_zstd_is_written_and_zlib_still_reads(converted, tmp_path):
    png, ref = converted
    doc = json.loads(png.with_suffix(".json").read_text())
    assert doc["residual"]["encoding"] == "zstd+base64"
    raw = __import__("zstandard").ZstdDecompressor().decompress(base64.b64decode(doc["residual"]["data"]))
    doc["residual"] = {**doc["residual"], "encoding": "zlib+base64",
                       "data": base64.b64encode(zlib.compress(raw)).decode()}
    old = tmp_path / png.name
    old.write_bytes(png.read_bytes())
    old.with_suffix(".json").write_text(json.dumps(doc))
    img2pcap(old, tmp_path / "old.pcap")
    assert (tmp_path / "old.pcap").read_bytes() == ref


@pytest.mark.parametrize("residual,problem", [
    ({"encoding": "lz5+base64", "data": ""}, "unknown encoding 'lz5+base64'"),
    ({"encoding": "zstd+base64", "data": base64.b64encode(b"not zstd").decode()}, "sidecar is damaged"),
    ({"encoding": "zlib+base64", "data": "!!!"}, "sidecar is damaged"),
    (["not", "an", "object"], "sidecar is damaged"),
])
def test_bad_residual_is_one_line_error(converted, tmp_path, residual, problem):
    png, _ = converted
    doc = json.loads(png.with_suffix(".json").read_text())
    doc["residual"] = residual
    bad = tmp_path / png.name
    bad.write_bytes(png.read_bytes())
    bad.with_suffix(".json").write_text(json.dumps(doc))
    with pytest.raises(ImageError, match=re.escape(problem)) as e:
        img2pcap(bad, tmp_path / "x.pcap")
    assert "\n" not in str(e.value) and not (tmp_path / "x.pcap").exists()
