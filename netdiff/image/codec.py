"""Bit matrices <-> 3-colour PNG images (NetDiffusion's palette).

1 -> red (255,0,0), 0 -> green (0,255,0), -1 -> blue (0,0,255). Images are written as palette
PNGs (two bits per pixel: small and fast); any reader that converts to RGB
gets exactly these colours. Reading accepts palette or RGB(A) PNGs; netdiff's own (2 bits per
pixel, rows unfiltered: see ``netdiff.image.png``) are decoded without Pillow. Any other RGB goes
through ``rgb_to_bits``, netdiff's one quantiser (``netdiff.image.reader`` adds the layout).
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from netdiff.errors import ImageError
from netdiff.image.png import decode_palette2_packed, encode_palette2, unpack2
from netdiff.io.atomic import atomic_write_bytes

PALETTE = np.array([[0, 0, 255], [0, 255, 0], [255, 0, 0]], dtype=np.uint8)  # index = value + 1
VALUE_OF_INDEX = np.array([-1, 0, 1], dtype=np.int8)


def pad_rows(bits: np.ndarray, height: int, fill: int = -1) -> np.ndarray:
    """Pad (or refuse to exceed) ``height`` rows; padding rows are all fill."""
    n, w = bits.shape
    if n > height:
        raise ValueError(f"{n} rows do not fit an image of height {height}")
    if n == height:
        return bits
    out = np.full((height, w), fill, dtype=np.int8)
    out[:n] = bits
    return out


def bits_to_rgb(bits: np.ndarray) -> np.ndarray:
    return PALETTE[bits.astype(np.intp) + 1]


def write_png(path, bits: np.ndarray, text: dict[str, str] | None = None) -> None:
    """Write a ternary matrix as a 2-bit palette PNG (rows unfiltered), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = encode_palette2((bits.astype(np.int16) + 1).astype(np.uint8), PALETTE, text)
    atomic_write_bytes(path, data)


def read_rgb(path) -> np.ndarray:
    """(H, W, 3) uint8 of any image file PIL can read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except FileNotFoundError:
        raise ImageError(path, "no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(path, f"not a readable image ({e.__class__.__name__}: {e})") from None


# The one tie rule for RGB -> bits. A pixel equally near two or three palette colours (grey,
# yellow, magenta, cyan) takes fill (-1, blue) first, then 0 (green), then 1 (red): an undecided
# pixel should not invent a set header bit. Every reader in netdiff goes through nearest_bits.
TIE_ORDER = (-1, 0, 1)
MODES = ("nearest", "exact")


def nearest_bits(rgb) -> np.ndarray:
    """Bit of the nearest palette colour for each pixel of a (..., 3) array of any real dtype.

    The palette colours are corners of the RGB cube, so the nearest in Euclidean distance is the
    largest channel (``|p - c|^2 = |p|^2 + 255^2 - 2*255*p_c``): three comparisons per pixel,
    exact for palette pixels; a pixel moves to another colour only past the half-way point.
    Ties follow ``TIE_ORDER``."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    red = (r > g) & (r > b)
    green = ~red & (g > b)
    bits = np.full(r.shape, -1, dtype=np.int8)
    bits[red] = 1
    bits[green] = 0
    return bits


def palette_mask(rgb: np.ndarray) -> np.ndarray:
    """True where an (H, W, 3) uint8 pixel is exactly one of the three palette colours."""
    code = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
    return (code == 0xFF0000) | (code == 0x00FF00) | (code == 0x0000FF)


def rgb_to_bits(rgb: np.ndarray, mode: str = "nearest", path="image") -> tuple[np.ndarray, int]:
    """(bits, number of pixels that are not palette colours) of an (H, W, 3) uint8 image.

    ``nearest`` maps every pixel to its nearest palette colour (``nearest_bits``). ``exact``
    gives the same bits but raises ImageError at the first pixel off the palette: it is for
    images that must be netdiff's own drawing (training data, ``img2pcap --strict``, converted
    captures), where a stray colour means a damaged or foreign file, not generator noise to
    round away."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    on = palette_mask(rgb)
    off = int(on.size - np.count_nonzero(on))
    if off and mode == "exact":
        y, x = np.argwhere(~on)[0]
        raise ImageError(path, f"{off} pixels are not one of the three palette colours "
                         f"(first at row {y}, column {x}: {tuple(int(v) for v in rgb[y, x])}); "
                         "a generated image needs repair (netdiff img2pcap without --strict)")
    return nearest_bits(rgb), off


def _own_png_packed(path, check_indices: bool = True) -> tuple[np.ndarray, int] | None:
    """(packed 2-bit rows, width) of a PNG in netdiff's own format (2-bit palette in netdiff's
    colour order, rows unfiltered, no index 3 unless ``check_indices`` is off), read without
    Pillow; None for any other image."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ImageError(path, "no such file") from None
    except OSError as e:
        raise ImageError(path, f"cannot read ({e.strerror or e})") from None
    try:
        got = decode_palette2_packed(data)
    except (ValueError, zlib.error, struct.error) as e:
        raise ImageError(path, f"not a readable image (damaged PNG: {e})") from None
    if got is None:
        return None
    packed, w, pal = got
    if len(pal) < 3 or not np.array_equal(pal[:3], PALETTE):
        return None
    if check_indices and (packed & (packed >> 1) & 0x55).any():
        return None
    return packed, w


def _check_size(path, w: int, h: int, width: int | None, height: int | None) -> None:
    if (width is not None and w != width) or (height is not None and h != height):
        raise ImageError(path, f"image is {w}x{h} pixels, the layout needs {width}x{height}")


def _byte_table() -> np.ndarray:
    """For two packed bytes read as one native uint16 (8 pixels): the byte their bits spell (low
    8 bits), whether all 8 are 0/1 (bit 8: ``bits_to_bytes``'s covered), whether all are fill
    (bit 9) and whether one is index 3, outside the palette (bit 10)."""
    u = np.arange(1 << 16, dtype=np.uint32)
    first, second = (u & 0xFF, u >> 8) if np.little_endian else (u >> 8, u & 0xFF)
    pix = np.stack([(b >> s) & 3 for b in (first, second) for s in (6, 4, 2, 0)], axis=1)
    value = ((pix == 2) << np.arange(7, -1, -1)).sum(axis=1)
    covered = ((pix == 1) | (pix == 2)).all(axis=1)
    return (value | covered << 8 | (pix == 0).all(axis=1) << 9 | (pix == 3).any(axis=1) << 10
            ).astype(np.uint16)


_BYTE_TABLE = None


def read_png_bytes(path, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An image's (byte values, covered mask, blank rows) without unpacking its pixels:
    ``bits_to_bytes`` of its matrix, and which rows are all fill. Width must be a multiple of 8."""
    global _BYTE_TABLE
    own = _own_png_packed(path, check_indices=False) if width % 8 == 0 else None
    if own is not None:
        packed, w = own
        _check_size(path, w, len(packed), width, height)
        if _BYTE_TABLE is None:
            _BYTE_TABLE = _byte_table()
        code = _BYTE_TABLE[packed.view(np.uint16)]
        if not (code & 0x400).any():
            return (code.astype(np.uint8), (code & 0x100).astype(bool),
                    (code & 0x200).astype(bool).all(axis=1))
    bits = read_png_bits(path, width, height)
    from netdiff.bits.codec import bits_to_bytes
    return (*bits_to_bytes(bits), (bits == -1).all(axis=1))


def read_own_png(path) -> np.ndarray | None:
    """The bits of a PNG in netdiff's own format (see ``_own_png_packed``), decoded without
    Pillow or RGB; None for any other image."""
    own = _own_png_packed(path)
    if own is None:
        return None
    packed, w = own
    return unpack2(packed, w).view(np.int8) - np.int8(1)


def read_png_bits(path, width: int | None = None, height: int | None = None) -> np.ndarray:
    """A converted image back to its ternary matrix, checking size and palette.

    Palette PNGs are decoded from their indices (no RGB expansion); others through RGB."""
    from PIL import Image, UnidentifiedImageError

    fast = read_own_png(path)
    if fast is not None:
        _check_size(path, fast.shape[1], fast.shape[0], width, height)
        return fast
    try:
        with Image.open(path) as img:
            w, h = img.size
            if (width is not None and w != width) or (height is not None and h != height):
                raise ImageError(path, f"image is {w}x{h} pixels, the layout needs {width}x{height}")
            if img.mode == "P":
                idx = np.asarray(img)
                pal = np.asarray(img.getpalette() or [], dtype=np.uint8).reshape(-1, 3)
                if len(pal) >= 3 and np.array_equal(pal[:3], PALETTE) and idx.max(initial=0) <= 2:
                    return idx.view(np.int8) - np.int8(1)     # netdiff's own palette order
                value = np.full(256, 2, dtype=np.int8)
                for i, colour in enumerate(pal):
                    hit = np.flatnonzero((PALETTE == colour).all(axis=1))
                    if len(hit):
                        value[i] = hit[0] - 1
                bits = np.take(value, idx)
                if value.max() < 2 or not (bits == 2).any():
                    return bits
            rgb = np.asarray(img.convert("RGB"))
    except FileNotFoundError:
        raise ImageError(path, "no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(path, f"not a readable image ({e.__class__.__name__}: {e})") from None
    return rgb_to_bits(rgb, "exact", path)[0]
