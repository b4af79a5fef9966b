"""Reading an image into bits: one quantiser and one layout resolver for every caller.

img2pcap, evaluate and the model's data loader all read PNGs with ``read_image``; repair's
``quantize`` is the same pixel step for an array already in memory. Pixels become bits by
``netdiff.image.codec.rgb_to_bits`` (nearest palette colour, one tie rule, or ``exact`` where an
off-palette pixel is an error). Which layout the columns are is decided in one order:

1. the layout the caller gives (a model's config, ``img2pcap --layout``);
2. the PNG text chunk ``netdiff:layout`` (pcap2img writes the layout's name; a JSON layout
   object is read too): it travels with the image even when the sidecar does not;
3. the sidecar's ``"layout"``;
4. the image's width, looked up in ``LAYOUT_WIDTHS`` (derived from the named layouts), or
   netdiffusion plus whole payload bytes for widths beyond netdiffusion's.

A layout read from the text or the width keeps the image's own height (a generated image of 32
packets stays 32 packets); one from a sidecar is the sidecar's as written.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from netdiff.bits.layout import NETDIFFUSION, PRESETS, Layout, named_layout
from netdiff.errors import ImageError
from netdiff.image.codec import MODES, bits_to_rgb, read_own_png, read_png_bits, read_rgb, rgb_to_bits
from netdiff.image.png import text_chunks

LAYOUT_WIDTHS = {named_layout(name).width: name for name in PRESETS}   # 1088, 1408, 1520
# NetDiffusion's images may carry payload: its columns plus 8 per byte. An exact width in
# LAYOUT_WIDTHS wins (1408 is nprint, not netdiffusion with 40 payload bytes).
PAYLOAD_BASE = "netdiffusion"
TEXT_KEY = "netdiff:layout"
# What read_image does when the image's size differs from its layout: None (nothing; the caller
# checks), "width" (columns must match; rows are packets, any number), "shape" (both must
# match), "resize" (resample to the layout, noted: NetDiffusion's SD images are 816x768).
FITS = (None, "width", "shape", "resize")
# Unknown widths under "resize": NetDiffusion's layout, the one its resized images were drawn in.
DEFAULT_LAYOUT = NETDIFFUSION


@dataclass
class ImageRead:
    """What ``read_image`` found: the bits, their layout and where it came from, and notes on
    anything that changed the pixels (resampling, off-palette colours) or was ignored."""

    bits: np.ndarray                 # (H, W) int8 in {-1, 0, 1}
    layout: Layout | None            # None only with fit=None and no layout given
    layout_source: str               # "given", "png text", "sidecar", "width", "default" or ""
    notes: list[str] = field(default_factory=list)


def layout_for_width(width: int, height: int) -> Layout | None:
    """The named layout an image this wide was drawn with, at this height; None if none is."""
    if width in LAYOUT_WIDTHS:
        return named_layout(LAYOUT_WIDTHS[width], height=height)
    extra = width - named_layout(PAYLOAD_BASE).width
    if extra > 0 and extra % 8 == 0:
        return named_layout(PAYLOAD_BASE, payload_bytes=extra // 8, height=height)
    return None


def known_widths() -> str:
    """The widths ``layout_for_width`` knows, for error messages."""
    base = named_layout(PAYLOAD_BASE).width
    return (", ".join(f"{w} ({n})" for w, n in LAYOUT_WIDTHS.items())
            + f", or {base} + 8 per payload byte ({PAYLOAD_BASE} with payload)")


def layout_from_text(value: str, width: int, height: int) -> Layout | None:
    """The layout a ``netdiff:layout`` text names: a JSON layout object, or a preset name whose
    payload bytes are read off the width (the name alone does not say them); None if neither."""
    value = value.strip()
    if value.startswith("{"):
        try:
            return Layout.from_dict(json.loads(value))
        except (ValueError, KeyError, TypeError):
            return None
    if value not in PRESETS:
        return None
    extra = width - named_layout(value).width
    payload = extra // 8 if extra > 0 and extra % 8 == 0 else 0
    return named_layout(value, payload_bytes=payload, height=height)


def png_text(path) -> dict[str, str]:
    """The PNG's text chunks ahead of its image data ({} for other files)."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)     # netdiff writes its text chunks before the image data
    except OSError:
        return {}
    return text_chunks(head)


def read_sidecar(path) -> dict:
    """The sidecar next to an image ({} when there is none)."""
    from netdiff.image import sidecar as sc

    side = sc.sidecar_path(Path(path))
    return sc.read(side) if side.is_file() else {}


def resolve_layout(path, width: int, height: int, sidecar: dict | None = None
                   ) -> tuple[Layout | None, str, list[str]]:
    """(layout, source, notes) of an image ``width`` x ``height`` at ``path``: its PNG text, then
    its sidecar (read from disk when ``sidecar`` is None), then its width. (None, "", notes)
    when no source names one."""
    notes = []
    text = png_text(path).get(TEXT_KEY)
    if text is not None:
        layout = layout_from_text(text, width, height)
        if layout is not None:
            return layout, "png text", notes
        notes.append(f"the PNG text names layout {text!r}, which netdiff does not know; ignored")
    if sidecar is None:
        sidecar = read_sidecar(path)
    if "layout" in sidecar:
        try:
            return Layout.from_dict(sidecar["layout"]), "sidecar", notes
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ImageError(Path(path).with_suffix(".json"), f"sidecar has a bad 'layout' ({e})") from None
    layout = layout_for_width(width, height)
    return layout, ("width" if layout is not None else ""), notes


def off_palette_note(off: int, total: int) -> str:
    return (f"{off} of {total} pixels ({100 * off / total:.1f}%) were not palette colours; each "
            "took the nearest of the three")


def quantize(rgb: np.ndarray, layout: Layout) -> tuple[np.ndarray, list[str]]:
    """(bits int8 (layout.height, layout.width), notes) for an (H, W, 3) image array.

    Accepts RGBA (alpha dropped) and floats (0..1 or 0..255). Images of another size are
    resized to the layout first, with a filter that averages rather than picks, so every bit
    column is a blend of the pixels that fell on it; then each pixel takes the nearest palette
    colour (``rgb_to_bits``). The notes say what was resized and how many pixels were off the
    palette."""
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
    bits, off = rgb_to_bits(rgb)
    if off:
        notes.append(off_palette_note(off, bits.size))
    return bits, notes


def read_image(path, layout: Layout | None = None, *, mode: str = "nearest",
               fit: str | None = "width", sidecar: dict | None = None) -> ImageRead:
    """An image file's bits and layout.

    ``mode``: ``nearest`` (generated images: every colour to its nearest palette colour) or
    ``exact`` (netdiff's own images: an off-palette pixel is an ImageError). ``layout``: use
    this one, else resolve it (module docstring) unless ``fit`` is None. ``fit``: see ``FITS``;
    ``resize`` needs ``nearest`` (resampling blends colours). ``sidecar``: the image's sidecar
    if the caller has read it already (None: read it when the layout needs it)."""
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}, not {fit!r}")
    if fit == "resize" and mode != "nearest":
        raise ValueError("fit='resize' blends colours: it needs mode='nearest'")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    notes: list[str] = []
    rgb = None
    if mode == "exact":
        bits = read_png_bits(path)
    else:
        bits = read_own_png(path)
        if bits is None:
            rgb = read_rgb(path)
    h, w = (bits if rgb is None else rgb).shape[:2]
    source = "given" if layout is not None else ""
    if layout is None and fit is not None:
        layout, source, notes = resolve_layout(path, w, h, sidecar)
        if layout is None:
            if fit != "resize":
                raise ImageError(path, f"image is {w} columns wide; with no layout in its PNG text "
                                 f"or sidecar netdiff knows the widths {known_widths()}")
            layout, source = DEFAULT_LAYOUT, "default"
    if fit == "width" and w != layout.width:
        raise ImageError(path, f"image is {w} columns wide, its {source} layout {layout.name!r} "
                         f"has {layout.width}")
    if fit == "shape" and (h, w) != (layout.height, layout.width):
        raise ImageError(path, f"image is {w}x{h} pixels, the layout needs {layout.width}x"
                         f"{layout.height} (not resized)")
    if fit == "resize" and (rgb is not None or (h, w) != (layout.height, layout.width)):
        bits, more = quantize(bits_to_rgb(bits) if rgb is None else rgb, layout)
        return ImageRead(bits, layout, source, notes + more)
    if rgb is not None:
        bits, off = rgb_to_bits(rgb, mode, path)
        if off:
            notes.append(off_palette_note(off, bits.size))
    return ImageRead(bits, layout, source, notes)
