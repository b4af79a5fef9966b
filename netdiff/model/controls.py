"""ControlNet conditioning images: canny edges (NetDiffusion's) and protocol-field masks.

Both are 1-channel float maps in {0, 1} at the full image size (H packets x W bit columns):

* ``mask``: 1 where a bit is present (not fill). It states, per row, which sections and fields a
  packet has (IPv4 or IPv6, TCP/UDP/ICMP, how many option bytes). Taken from a real image, or
  drawn from a template such as ``tcp-options`` or ``udp-only`` so generation follows a structure.
* ``canny``: edges of the image, computed with a vectorised Canny (Sobel gradient, non-maximum
  suppression, hysteresis) on the 3-level map.
"""
from __future__ import annotations

import numpy as np

from netdiff.bits.layout import Layout
from netdiff.errors import NetdiffError

FILL = -1

# name -> (network section, transport section, TCP option bytes)
TEMPLATES: dict[str, tuple[str, str | None, int]] = {
    "tcp": ("ipv4", "tcp", 0),
    "tcp-options": ("ipv4", "tcp", 12),      # NOP, NOP, timestamps: most packets of a TCP flow
    "tcp-syn-options": ("ipv4", "tcp", 20),  # MSS, SACK-permitted, timestamps, NOP, window scale
    "udp-only": ("ipv4", "udp", 0),
    "icmp": ("ipv4", "icmp", 0),
    "ipv6-tcp": ("ipv6", "tcp", 0),
    "ipv6-tcp-options": ("ipv6", "tcp", 12),
    "ipv6-udp": ("ipv6", "udp", 0),
}


def presence_mask(bits: np.ndarray) -> np.ndarray:
    return (bits != FILL).astype(np.float32)


def template_row(name: str, layout: Layout) -> np.ndarray:
    """One packet's presence row for a template, in ``layout``'s columns."""
    if name not in TEMPLATES:
        raise NetdiffError(f"unknown control template {name!r}; choose one of {', '.join(TEMPLATES)}")
    net, transport, opt_bytes = TEMPLATES[name]
    row = np.zeros(layout.width, dtype=np.float32)
    fields = layout.fields
    for sec in (net, transport):
        if sec not in layout.sections:
            raise NetdiffError(f"template {name!r} needs the {sec} section, which layout "
                               f"{layout.name!r} does not have")
    for fname, sl in fields.items():
        sec = fname.split("_", 1)[0]
        if sec == net and fname != "ipv4_opt":
            row[sl] = 1
        elif sec == transport:
            if fname == "tcp_opt":
                row[sl.start: sl.start + 8 * opt_bytes] = 1
            else:
                row[sl] = 1
    return row


def template_mask(name: str, layout: Layout, height: int, rows: int | None = None) -> np.ndarray:
    """(height, width) mask: ``rows`` packets (all rows by default) of the template's structure,
    the rest absent, the way a short capture is padded."""
    rows = height if rows is None else rows
    if not 0 < rows <= height:
        raise NetdiffError(f"template rows must be in 1..{height}, not {rows}")
    out = np.zeros((height, layout.width), dtype=np.float32)
    out[:rows] = template_row(name, layout)
    return out


def parse_template(spec: str) -> tuple[str, int | None]:
    """``udp-only`` or ``udp-only:16`` (16 packets, the rest empty)."""
    name, _, rows = spec.partition(":")
    if rows and not rows.isdigit():
        raise NetdiffError(f"control template {spec!r}: the part after ':' must be a packet count")
    return name, int(rows) if rows else None


def canny(bits: np.ndarray, low: float = 0.2, high: float = 0.5, sigma: float = 0.0) -> np.ndarray:
    """Canny edges of a ternary map as {0, 1} float32 (thresholds relative to the strongest edge)."""
    from scipy import ndimage

    img = bits.astype(np.float32)
    if sigma > 0:
        img = ndimage.gaussian_filter(img, sigma)
    gy = ndimage.sobel(img, axis=0, mode="nearest")
    gx = ndimage.sobel(img, axis=1, mode="nearest")
    mag = np.hypot(gx, gy)
    peak = float(mag.max())
    if peak == 0:
        return np.zeros_like(img)
    # Non-maximum suppression along the gradient direction, quantised to 0/45/90/135 degrees.
    angle = (np.rad2deg(np.arctan2(gy, gx)) + 180.0) % 180.0
    sector = (np.floor((angle + 22.5) / 45.0).astype(np.int64)) % 4
    pad = np.pad(mag, 1)
    h, w = mag.shape
    shifted = {  # neighbours (a, b) on either side along each direction
        0: (pad[1:h + 1, 2:], pad[1:h + 1, :w]),
        1: (pad[2:, 2:], pad[:h, :w]),
        2: (pad[2:, 1:w + 1], pad[:h, 1:w + 1]),
        3: (pad[2:, :w], pad[:h, 2:]),
    }
    keep = np.zeros_like(mag, dtype=bool)
    for s, (a, b) in shifted.items():
        keep |= (sector == s) & (mag >= a) & (mag >= b)
    mag = np.where(keep, mag, 0.0)
    strong = mag >= high * peak
    weak = mag >= low * peak
    # Hysteresis: keep weak edges connected (8-neighbourhood) to a strong one.
    labels, n = ndimage.label(weak, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return np.zeros_like(img)
    has_strong = np.zeros(n + 1, dtype=bool)
    has_strong[labels[strong]] = True
    has_strong[0] = False
    return has_strong[labels].astype(np.float32)


def control_from_bits(bits: np.ndarray, kind: str) -> np.ndarray:
    if kind == "mask":
        return presence_mask(bits)
    if kind == "canny":
        return canny(bits)
    raise NetdiffError(f"unknown control kind {kind!r} (mask or canny)")


def load_control(spec: str, kind: str, layout: Layout, height: int) -> np.ndarray:
    """``--control``: a template name (mask ControlNets), a netdiff PNG or a folder of them (the
    first is used; its control is computed),
    or a ready control image (grayscale or RGB; bright = 1). Rows are cut or padded to ``height``."""
    from pathlib import Path

    from netdiff.image.codec import read_rgb, rgb_to_bits
    from netdiff.model.data import fit_rows

    name, rows = parse_template(spec)
    if name in TEMPLATES and not Path(spec).exists():
        if kind != "mask":
            raise NetdiffError(f"template {name!r} is a protocol-field mask; this ControlNet was "
                               f"trained on {kind} images: pass an image with --control")
        return template_mask(name, layout, height, rows)
    path = Path(spec)
    if path.is_dir():   # a class folder: its first image is the control (NetDiffusion: a real image of the class)
        pngs = sorted(path.rglob("*.png"))
        if not pngs:
            raise NetdiffError(f"--control {spec}: the folder holds no PNG image")
        path = pngs[0]
    if not path.is_file():
        raise NetdiffError(f"--control {spec}: neither a file, a folder of images nor a template "
                           f"({', '.join(TEMPLATES)})")
    rgb = read_rgb(path)
    if rgb.shape[1] != layout.width:
        raise NetdiffError(f"{path}: control image is {rgb.shape[1]} pixels wide, the layout has "
                           f"{layout.width} columns")
    bits, off = rgb_to_bits(rgb)
    if not off:     # a palette image is a real image of the class; anything else a drawn mask
        return control_from_bits(fit_rows(bits, height)[0], kind)
    gray = (rgb.astype(np.float32).mean(axis=2) > 127.5).astype(np.float32)
    out = np.zeros((height, layout.width), dtype=np.float32)
    n = min(height, gray.shape[0])
    out[:n] = gray[:n]
    return out
