"""Bit matrices <-> 3-colour PNG images (NetDiffusion's palette).

1 -> red (255,0,0), 0 -> green (0,255,0), -1 -> blue (0,0,255). Images are written as palette
PNGs (one byte per pixel before compression: small and fast); any reader that converts to RGB
gets exactly these colours. Reading accepts palette or RGB(A) PNGs.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from netdiff.errors import ImageError

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
    """Write a ternary matrix as a palette PNG, atomically."""
    from PIL import Image, PngImagePlugin

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray((bits.astype(np.int16) + 1).astype(np.uint8), mode="P")
    img.putpalette(PALETTE.reshape(-1).tolist())
    info = PngImagePlugin.PngInfo()
    for k, v in (text or {}).items():
        info.add_text(k, v)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        img.save(tmp, format="PNG", pnginfo=info, compress_level=1)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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


def rgb_to_bits_exact(rgb: np.ndarray, path="image") -> np.ndarray:
    """Exact palette decode: every pixel must be one of the three colours."""
    r, g, b = (rgb[..., i] for i in range(3))
    out = np.full(rgb.shape[:2], 2, dtype=np.int8)   # 2 = not a palette colour
    out[(r == 255) & (g == 0) & (b == 0)] = 1
    out[(r == 0) & (g == 255) & (b == 0)] = 0
    out[(r == 0) & (g == 0) & (b == 255)] = -1
    bad = out == 2
    if bad.any():
        y, x = np.argwhere(bad)[0]
        raise ImageError(path, f"{int(bad.sum())} pixels are not one of the three palette colours "
                         f"(first at row {y}, column {x}: {tuple(int(v) for v in rgb[y, x])}); "
                         "a generated image needs repair (netdiff img2pcap without --strict)")
    return out


def read_png_bits(path, width: int | None = None, height: int | None = None) -> np.ndarray:
    """A converted image back to its ternary matrix, checking size and palette.

    Palette PNGs are decoded from their indices (no RGB expansion); others through RGB."""
    from PIL import Image, UnidentifiedImageError

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
    return rgb_to_bits_exact(rgb, path)
