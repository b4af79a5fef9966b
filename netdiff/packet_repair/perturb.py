"""The image kinds repair is measured on (benchmarks/repair.py and tests): real captures
converted to images, the same with pixels flipped, blurred and resized to NetDiffusion's training
size, and uniformly random images."""
from __future__ import annotations

import numpy as np

from netdiff.bits.layout import Layout

TRAINING_SIZE = (816, 768)        # NetDiffusion's (width, height)


def real_bits(path, layout: Layout, start: int = 0) -> np.ndarray:
    """Rows ``start .. start + layout.height`` of a capture as a padded image matrix."""
    from netdiff.bits.codec import encode
    from netdiff.image.codec import pad_rows
    from netdiff.io.pcap import read_capture

    batch, _ = read_capture(path)
    bits, _ = encode(batch, layout)
    return pad_rows(bits[start:start + layout.height], layout.height)


def flip_pixels(bits: np.ndarray, share: float, seed: int = 0) -> np.ndarray:
    """Each pixel, with probability ``share``, becomes one of the two other colours."""
    rng = np.random.default_rng(seed)
    out = bits.copy()
    m = rng.random(bits.shape) < share
    shift = rng.integers(1, 3, size=int(m.sum()))
    out[m] = ((bits[m].astype(np.int16) + 1 + shift) % 3 - 1).astype(np.int8)
    return out


def blur_resize(rgb: np.ndarray, size=TRAINING_SIZE, radius: float = 1.0) -> np.ndarray:
    """Gaussian blur then resize (what training at 816x768 does to an image), JPEG-free."""
    from PIL import Image, ImageFilter

    img = Image.fromarray(rgb, mode="RGB").filter(ImageFilter.GaussianBlur(radius))
    return np.asarray(img.resize(size, Image.Resampling.BICUBIC))


def jpeg(rgb: np.ndarray, quality: int = 75) -> np.ndarray:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def random_bits(layout: Layout, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1, 2, (layout.height, layout.width)).astype(np.int8)
