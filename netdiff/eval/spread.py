"""Sample spread: how much the images of one class differ from one another.

A generator that has collapsed onto its class's mean draws near-identical images; real images of
a class differ in their varying fields (ports, lengths, sequence numbers, checksums). The spread of
generated images next to the spread of the real training images of the same class shows how much
of that variety a model reproduces (docs/diffusion.md measured 0.0002 vs 0.12 on the demo).

Two shares are given per pair of images, both averaged over pairs:

* ``present``: differing pixels among those where at least one of the two images has a bit
  (0 or 1), i.e. padding and absent-header pixels common to both are left out. The same
  definition as the memorisation audit's distance (``netdiff.eval.memorization``), so a spread
  reads in the units of the DCR; a class whose images are mostly absent headers (UDP: the TCP and
  ICMP sections) is not made to look uniform by them.
* ``all``: differing pixels over every pixel of the image (the measure of docs/diffusion.md).
"""
from __future__ import annotations

from itertools import combinations
from typing import Sequence

import numpy as np

ABSENT = -1


def _pairs(n: int, max_pairs: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Every pair when there are few; otherwise ``max_pairs`` distinct random ones."""
    total = n * (n - 1) // 2
    if total <= max_pairs:
        return list(combinations(range(n), 2))
    seen: set[tuple[int, int]] = set()
    while len(seen) < max_pairs:
        i, j = rng.choice(n, size=2, replace=False)
        seen.add((min(i, j), max(i, j)))
    return sorted(seen)


def sample_spread(images: Sequence[np.ndarray], *, max_pairs: int = 500, seed: int = 0) -> dict:
    """Mean share of differing bits between pairs of equal-size ternary images (-1/0/1).

    Returns ``{"present": float | None, "all": float | None, "pairs": int, "images": int}``;
    the shares are None with fewer than two images. Images of another shape than the first are
    refused (resize or crop them first: the columns are bits)."""
    images = [np.asarray(im) for im in images]
    out = {"present": None, "all": None, "pairs": 0, "images": len(images)}
    if len(images) < 2:
        return out
    shape = images[0].shape
    for k, im in enumerate(images):
        if im.shape != shape:
            raise ValueError(f"image {k} is {im.shape}, the first is {shape}: spread needs equal sizes")
    pairs = _pairs(len(images), max_pairs, np.random.default_rng(seed))
    present, every = [], []
    for i, j in pairs:
        a, b = images[i], images[j]
        differ = a != b
        either = (a != ABSENT) | (b != ABSENT)
        n_either = int(either.sum())
        # Two blank images have no bit to differ in: they count as identical.
        present.append(float(differ.sum()) / n_either if n_either else 0.0)
        every.append(float(differ.mean()))
    return {"present": float(np.mean(present)), "all": float(np.mean(every)), "pairs": len(pairs),
            "images": len(images)}
