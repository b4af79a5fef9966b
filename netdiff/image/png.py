"""A minimal PNG writer and fast reader for netdiff's own 2-bit palette images.

Pillow picks an adaptive row filter (Sub/Up/Paeth) for palette images and unpacks 2-bit pixels
slowly; for three colours the PNG spec's advice (filter None on palette images) gives smaller
files, and rows stored unfiltered can be read back with one inflate and one table lookup. Any
PNG this reader does not recognise (other depths, filters, interlace) returns None so callers
fall back to Pillow: netdiff still reads every valid PNG.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"

# byte -> its four 2-bit pixels, most significant first, as one little-endian uint32
_UNPACK2 = (np.array([[(b >> 6) & 3, (b >> 4) & 3, (b >> 2) & 3, b & 3] for b in range(256)],
                     dtype=np.uint8).view("<u4").ravel())


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def encode_palette2(indices: np.ndarray, palette: np.ndarray, text: dict[str, str] | None = None,
                    level: int = 1) -> bytes:
    """PNG bytes of an (H, W) array of palette indices 0..3, 2 bits per pixel, filter None."""
    h, w = indices.shape
    if len(palette) > 4 or (indices.size and int(indices.max()) >= len(palette)):
        raise ValueError("a 2-bit palette image holds at most 4 colours")
    pad = (-w) % 4
    q = np.zeros((h, w + pad), dtype=np.uint8)
    q[:, :w] = indices
    q = q.reshape(h, -1, 4)
    rows = np.zeros((h, 1 + (w + pad) // 4), dtype=np.uint8)    # first byte of a row: filter 0
    rows[:, 1:] = (q[..., 0] << 6) | (q[..., 1] << 4) | (q[..., 2] << 2) | q[..., 3]
    parts = [SIGNATURE, _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 2, 3, 0, 0, 0))]
    for k, v in (text or {}).items():
        parts.append(_chunk(b"tEXt", k.encode("latin-1") + b"\0" + v.encode("latin-1")))
    parts.append(_chunk(b"PLTE", np.asarray(palette, dtype=np.uint8).tobytes()))
    parts.append(_chunk(b"IDAT", zlib.compress(rows.tobytes(), level)))
    parts.append(_chunk(b"IEND", b""))
    return b"".join(parts)


def text_chunks(data: bytes) -> dict[str, str]:
    """The tEXt key/value pairs of PNG bytes, read before the image data (netdiff writes them
    there); {} for anything that is not a PNG."""
    out: dict[str, str] = {}
    if not data.startswith(SIGNATURE):
        return out
    i = len(SIGNATURE)
    while i + 8 <= len(data):
        n = struct.unpack(">I", data[i:i + 4])[0]
        kind = data[i + 4:i + 8]
        if kind in (b"IDAT", b"IEND") or i + 12 + n > len(data):
            break       # the image data, or a chunk cut off where the caller stopped reading
        if kind == b"tEXt":
            key, _, value = data[i + 8:i + 8 + n].partition(b"\0")
            out[key.decode("latin-1")] = value.decode("latin-1")
        i += 12 + n
    return out


def decode_palette2_packed(data: bytes) -> tuple[np.ndarray, int, np.ndarray] | None:
    """(packed rows (H, ceil(W/4)) uint8, W, palette (N, 3) uint8) of a 2-bit, non-interlaced
    palette PNG whose rows are all unfiltered; None for any other PNG (use a general decoder).

    Raises ValueError for a PNG that is damaged (bad CRC, truncated chunk, wrong data size)."""
    if not data.startswith(SIGNATURE):
        return None
    pos, idat, palette, head = 8, [], None, None
    while True:
        if pos + 8 > len(data):
            raise ValueError("truncated PNG chunk")
        n, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 8 + n
        if end + 4 > len(data):
            raise ValueError(f"truncated PNG chunk {kind!r}")
        body = data[pos + 8:end]
        if zlib.crc32(data[pos + 4:end]) != struct.unpack_from(">I", data, end)[0]:
            raise ValueError(f"CRC error in PNG chunk {kind!r}")
        if kind == b"IHDR":
            head = struct.unpack(">IIBBBBB", body)
        elif kind == b"PLTE":
            palette = np.frombuffer(body, dtype=np.uint8).reshape(-1, 3)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos = end + 4
    if head is None or head[2:] != (2, 3, 0, 0, 0) or palette is None:
        return None
    w, h = head[0], head[1]
    stride = (w + 3) // 4
    raw = zlib.decompress(b"".join(idat))
    if len(raw) != h * (1 + stride):
        raise ValueError(f"PNG image data is {len(raw)} bytes, {w}x{h} needs {h * (1 + stride)}")
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(h, 1 + stride)
    if rows[:, 0].any():
        return None             # filtered rows: not written by netdiff
    return np.ascontiguousarray(rows[:, 1:]), w, palette


def unpack2(packed: np.ndarray, width: int) -> np.ndarray:
    """(H, W) palette indices of packed 2-bit rows."""
    h, stride = packed.shape
    idx = _UNPACK2[packed].view(np.uint8).reshape(h, 4 * stride)
    return idx if 4 * stride == width else idx[:, :width]


def decode_palette2(data: bytes) -> tuple[np.ndarray, np.ndarray] | None:
    """(indices (H, W) uint8, palette) of a PNG ``decode_palette2_packed`` reads; else None."""
    got = decode_palette2_packed(data)
    if got is None:
        return None
    packed, w, palette = got
    return unpack2(packed, w), palette
