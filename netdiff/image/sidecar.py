"""The JSON sidecar next to each image: everything the image cannot hold.

An image keeps the header bits of its layout; the sidecar keeps the rest, so image + sidecar give
back the original packets byte for byte: timestamps, lengths, link type, and a *residual* per
packet (its captured bytes with every byte the image covers zeroed, zstd-compressed; sidecars
written without the zstandard module, and older ones, use zlib). Exact
reconstruction overlays the image's bits on the residual, so the image still has to be right.
With ``keep_payload=False`` the residual's payload bytes are zeroed too (privacy, size).
"""
from __future__ import annotations

import base64
import json
import zlib
from pathlib import Path

import numpy as np

try:    # about 4x faster than the json module both ways; sidecars are read on the hot path
    import orjson
except ImportError:         # pragma: no cover - orjson is a dependency; stay usable without it
    orjson = None
try:    # residuals: 8x faster to inflate and 10x faster to compress than zlib, slightly smaller
    import zstandard
except ImportError:         # pragma: no cover - a dependency; zlib is the fallback
    zstandard = None

from netdiff.bits.codec import Parsed, kept_bytes, section_span
from netdiff.bits.layout import Layout
from netdiff.errors import ImageError
from netdiff.io.atomic import atomic_write_bytes
from netdiff.io.pcap import PacketBatch

SIDECAR_VERSION = 1


def sidecar_path(png: Path) -> Path:
    return Path(png).with_suffix(".json")


def iter_sidecars(folder: Path):
    """Sidecars under ``folder`` (JSON files with an image beside them), in order."""
    for js in sorted(Path(folder).rglob("*.json")):
        if js.with_suffix(".png").exists():
            yield js


def residual_bytes(batch: PacketBatch, p: Parsed, layout: Layout, keep_payload: bool = True) -> np.ndarray:
    """Flat uint8 buffer of the encodable packets' bytes (in order), with covered bytes zeroed.

    Packet i of the result spans ``caplen`` bytes; lengths are ``batch.caplen[p.reason == 0]``."""
    ok = np.flatnonzero(p.reason == 0)
    cap = batch.caplen[ok]
    total = int(cap.sum())
    starts = np.zeros(len(ok), dtype=np.int64)
    if len(ok):
        starts[1:] = np.cumsum(cap)[:-1]
    k = np.arange(total, dtype=np.int64)
    src = np.repeat(batch.offset[ok] - starts, cap) + k
    out = batch.data[src].copy()
    kept = kept_bytes(layout)
    if kept is None:
        raise ValueError("sidecars need a layout whose dropped fields are whole bytes")
    bmap = layout.byte_map
    by_sec: dict[str, list[int]] = {}
    for col in kept.tolist():
        sec, j = bmap[col]
        by_sec.setdefault(sec, []).append(j)
    for sec, js in by_sec.items():
        start, nvalid, _ = section_span(p, batch.caplen, sec, layout.payload_bytes)
        start, nvalid = start[ok], nvalid[ok]
        j = np.asarray(js)
        pos = start[:, None] + j
        valid = (j < nvalid[:, None]) & (pos < cap[:, None])
        r, c = np.nonzero(valid)
        out[starts[r] + pos[r, c]] = 0
    if not keep_payload:
        pstart = np.minimum(p.start("payload")[ok], cap)
        drop = np.repeat(pstart, cap) <= (k - np.repeat(starts, cap))
        out[drop] = 0
    return out


def _compress(raw: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=1).compress(raw) if zstandard else zlib.compress(raw, 1)


def _decompress(encoding: str, data: bytes, path) -> bytes:
    if encoding == "zlib+base64":
        return zlib.decompress(data)
    if encoding == "zstd+base64":
        if zstandard is None:
            raise ImageError(path, "the sidecar's residual is zstd-compressed and the zstandard "
                             "module is not installed (pip install zstandard)")
        return zstandard.ZstdDecompressor().decompress(data)
    raise ImageError(path, f"sidecar residual has an unknown encoding {encoding!r}")


def build(*, layout: Layout, cls: str, source: dict, group: dict, batch: PacketBatch,
          residual: np.ndarray, l3: np.ndarray, skipped: list[tuple[int, str]],
          keep_payload: bool, ts_precision: str) -> dict:
    """The sidecar dict for one image whose rows are the packets of ``batch`` in order."""
    return {
        "netdiff_sidecar": SIDECAR_VERSION,
        "class": cls,
        "source": source,
        "group": group,
        "layout": layout.to_dict(),
        "rows": len(batch),
        "ts_precision": ts_precision,
        "packets": {
            "number": batch.number.tolist(),
            "ts_sec": batch.ts_sec.tolist(),
            "ts_nsec": batch.ts_nsec.tolist(),
            "caplen": batch.caplen.tolist(),
            "wirelen": batch.wirelen.tolist(),
            "linktype": batch.linktype.tolist(),
            "l3": l3.tolist(),
        },
        "residual": {
            "encoding": "zstd+base64" if zstandard else "zlib+base64",
            "payload_kept": keep_payload,
            "data": base64.b64encode(_compress(residual.tobytes())).decode("ascii"),
        },
        "skipped": {"count": len(skipped), "packets": [[int(n), r] for n, r in skipped]},
    }


def write(path: Path, doc: dict) -> None:
    atomic_write_bytes(path, orjson.dumps(doc) if orjson else json.dumps(doc, separators=(",", ":")).encode())


def read(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            raw = f.read()
        doc = orjson.loads(raw) if orjson else json.loads(raw)
    except FileNotFoundError:
        raise ImageError(path, "no sidecar JSON") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ImageError(path, f"sidecar is not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise ImageError(path, "sidecar is not a JSON object")
    return doc


def is_converted_capture(doc: dict) -> bool:
    """True when the sidecar describes a converted capture (it can be rebuilt exactly)."""
    return doc.get("netdiff_sidecar") == SIDECAR_VERSION and "residual" in doc and "packets" in doc


def base_batch(doc: dict, path) -> tuple[PacketBatch, np.ndarray]:
    """The residual packets (timestamps, lengths, link types) and their IP header offsets."""
    try:
        pk = doc["packets"]
        raw = _decompress(doc["residual"].get("encoding", "zlib+base64"),
                          base64.b64decode(doc["residual"]["data"]), path)
        cap = np.asarray(pk["caplen"], dtype=np.int64)
        offset = np.zeros(len(cap), dtype=np.int64)
        if len(cap):
            offset[1:] = np.cumsum(cap)[:-1]
        if len(raw) != int(cap.sum()):
            raise ValueError("residual length does not match the captured lengths")
        batch = PacketBatch(np.frombuffer(raw, dtype=np.uint8).copy(), offset, cap,
                            np.asarray(pk["wirelen"], np.int64), np.asarray(pk["ts_sec"], np.int64),
                            np.asarray(pk["ts_nsec"], np.int64), np.asarray(pk["linktype"], np.int32),
                            np.asarray(pk["number"], np.int64))
        return batch, np.asarray(pk["l3"], dtype=np.int64)
    except (KeyError, TypeError, AttributeError, ValueError, zlib.error, base64.binascii.Error,
            *((zstandard.ZstdError,) if zstandard else ())) as e:
        raise ImageError(path, f"sidecar is damaged ({e.__class__.__name__}: {e})") from None


def dump_json(obj) -> str:
    return json.dumps(obj, indent=1)
