"""Generated RGB images -> ternary bit matrices.

The three palette colours sit at corners of the RGB cube, so the nearest of them in Euclidean
distance is the channel with the largest value (|p - c|^2 = |p|^2 + 255^2 - 2*255*p_c). That
makes nearest-colour quantisation one argmax, robust to blur and compression noise by
construction. Images of another size (NetDiffusion trains at 816x768) are resized back to the
layout first, with a filter that averages rather than picks, so every bit column is a blend of
the pixels that fell on it.
"""
from __future__ import annotations

import numpy as np

from netdiff.bits.layout import Layout
from netdiff.errors import ImageError

# channel index of argmax -> bit value: red = 1, green = 0, blue = -1
_PALETTE = {(255, 0, 0), (0, 255, 0), (0, 0, 255)}


def quantize(rgb: np.ndarray, layout: Layout) -> tuple[np.ndarray, list[str]]:
    """(bits int8 (layout.height, layout.width), notes) for an (H, W, 3) uint8 image."""
    rgb = np.asarray(rgb)
    if rgb.ndim == 3 and rgb.shape[2] == 4:
        rgb = rgb[..., :3]
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ImageError("image", f"expected an (H, W, 3) RGB array, got shape {rgb.shape}")
    if rgb.dtype != np.uint8:
        if np.issubdtype(rgb.dtype, np.floating) and rgb.max(initial=0) <= 1.0:
            rgb = rgb * 255.0
        rgb = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    notes = []
    h, w = rgb.shape[:2]
    if (h, w) != (layout.height, layout.width):
        from PIL import Image

        img = Image.fromarray(np.ascontiguousarray(rgb), mode="RGB")
        # Downscaling: BOX averages all source pixels of a bit; upscaling: bilinear blends.
        shrink = w > layout.width or h > layout.height
        img = img.resize((layout.width, layout.height),
                         Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR)
        rgb = np.asarray(img)
        notes.append(f"image was {w}x{h} pixels; resized to the layout's {layout.width}x"
                     f"{layout.height} before quantisation")
    # Ties (equal channels, e.g. grey) go to fill (-1, blue) first, then 0 (green): the order
    # least likely to invent header bits.
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    red = (r > g) & (r > b)
    green = ~red & (g > b)
    bits = np.full(rgb.shape[:2], -1, dtype=np.int8)
    bits[red] = 1
    bits[green] = 0
    code = (r.astype(np.uint32) << 16) | (g.astype(np.uint32) << 8) | b
    exact = (code == 0xFF0000) | (code == 0x00FF00) | (code == 0x0000FF)
    off = int((~exact).sum())
    if off:
        notes.append(f"{off} of {exact.size} pixels ({100 * off / exact.size:.1f}%) were not "
                     "palette colours; each took the nearest of the three")
    return bits, notes
