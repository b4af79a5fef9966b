"""Training images: 3-colour PNGs of the netdiffusion layout, each with its class and caption.

The class of ``IMG_DIR/<class>/x.png`` is the sidecar ``x.json``'s ``"class"`` key when there is
one, else the parent folder's name. Rows (packets) are cut or padded to the config's height;
columns must match the layout exactly (a bit column is never cropped or resized away).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from netdiff.errors import ImageError, NetdiffError
from netdiff.image.reader import read_image
from netdiff.model.config import CAPTION_TEMPLATE, ImageConfig

FILL = -1   # value of an absent bit; padding rows are all fill, like pcap2img's
_WINDOW_NAME = re.compile(r"(.+)_(\d{4,})")   # pcap2img's <capture stem>_<window number>


def caption_for(cls: str) -> str:
    return CAPTION_TEMPLATE.format(cls=cls)


def class_of(png: Path, root: Path) -> str:
    side = png.with_suffix(".json")
    if side.is_file():
        try:
            doc = json.loads(side.read_text())
        except (OSError, ValueError) as e:
            raise ImageError(side, f"unreadable sidecar JSON ({e})") from None
        if isinstance(doc, dict) and isinstance(doc.get("class"), str) and doc["class"]:
            return doc["class"]
    return png.parent.name


def find_pngs(img_dir) -> list[Path]:
    root = Path(img_dir)
    if not root.exists():
        raise NetdiffError(f"{root}: no such directory")
    if root.is_file():
        return [root]
    pngs = sorted(p for p in root.rglob("*.png") if p.is_file() and not p.name.startswith("."))
    if not pngs:
        raise NetdiffError(f"{root}: no PNG images in this directory (make some with netdiff pcap2img)")
    return pngs


def fit_rows(bits: np.ndarray, height: int, mode: str = "first") -> list[np.ndarray]:
    """Windows of exactly ``height`` rows: the first one (``first``), or every non-overlapping
    window that holds at least one packet (``tile``). Short images are padded with fill rows."""
    n = bits.shape[0]
    if n < height:
        out = np.full((height, bits.shape[1]), FILL, dtype=np.int8)
        out[:n] = bits
        return [out]
    if mode == "first":
        return [bits[:height]]
    k = n // height
    tiles = bits[: k * height].reshape(k, height, bits.shape[1])
    has_packets = (tiles != FILL).any(axis=(1, 2))
    if n % height and (bits[k * height:] != FILL).any():
        tail = fit_rows(bits[k * height:], height)[0]
        tiles, has_packets = np.concatenate([tiles, tail[None]]), np.append(has_packets, True)
    kept = tiles[has_packets] if has_packets.any() else tiles[:1]
    return list(kept)


def load_bits(png: Path, width: int) -> np.ndarray:
    """A training image's bits. Exact: training data is netdiff's own drawing, so an off-palette
    pixel is a damaged or foreign file, not noise to round into the model's targets. The model's
    config fixes the layout, so none is resolved from the image; only its width is checked."""
    bits = read_image(png, mode="exact", fit=None).bits
    if bits.shape[1] != width:
        raise ImageError(png, f"image is {bits.shape[1]} pixels wide, the model's layout has {width} "
                         "columns (columns are bits: they are never cropped or resized)")
    return bits


@dataclass
class Example:
    bits: np.ndarray      # (height, width) int8
    cls: str
    source: str


class ImageDataset:
    """All training windows in memory as int8 (1 byte per bit: 1024 x 1088 images are ~1 MiB)."""

    def __init__(self, img_dir, image: ImageConfig, classes: list[str] | None = None):
        self.image = image
        self.root = Path(img_dir)
        self.examples: list[Example] = []
        for png in find_pngs(self.root):
            cls = class_of(png, self.root)
            if classes is not None and cls not in classes:
                continue
            for window in fit_rows(load_bits(png, image.width), image.height, image.rows):
                self.examples.append(Example(window, cls, str(png)))
        if not self.examples:
            raise NetdiffError(f"{self.root}: no images of the classes {classes}")
        self.classes = sorted({e.cls for e in self.examples})

    def __len__(self) -> int:
        return len(self.examples)

    def stream_keys(self) -> list[int]:
        """One key per example; consecutive examples with the same key are consecutive windows of
        one capture: the windows of one PNG, and PNGs that pcap2img cut from one capture
        (``<stem>_0000.png``, ``<stem>_0001.png``, ... in one folder, numbers without a gap)."""
        keys, prev, key = [], None, -1
        for ex in self.examples:
            path = Path(ex.source)
            m = _WINDOW_NAME.fullmatch(path.stem)
            this = (path.parent, m.group(1), int(m.group(2))) if m else (path.parent, path.stem, None)
            same_png = prev is not None and prev[0] == path
            next_png = (prev is not None and m is not None and prev[1][2] is not None
                        and prev[1][:2] == this[:2] and this[2] == prev[1][2] + 1)
            if not (same_png or next_png):
                key += 1
            keys.append(key)
            prev = (path, this)
        return keys

    def captions(self) -> list[str]:
        return [caption_for(c) for c in self.classes]

    def __getitem__(self, i: int) -> dict:
        import torch
        import torch.nn.functional as F

        from netdiff.model.ternary import bits_to_rgb_tensor, bits_to_tensor

        ex = self.examples[i]
        if self.image.space in ("ternary", "masked"):
            pixels = bits_to_tensor(ex.bits)
        else:
            pixels = bits_to_rgb_tensor(ex.bits)
            size = (self.image.train_height or ex.bits.shape[0], self.image.train_width or ex.bits.shape[1])
            if size != tuple(ex.bits.shape):
                # Stated in the config (NetDiffusion trained SD 1.5 at 816 x 768), never implicit.
                pixels = F.interpolate(pixels[None], size=size, mode="nearest")[0]
        return {"pixels": pixels, "caption": caption_for(ex.cls), "index": torch.tensor(i)}
