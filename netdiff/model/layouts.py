"""Row layouts: which header fields each packet row has, sampled before any value.

A row of the bit map is one packet; which of its pixels are present (not -1) says its stack: IPv4
or IPv6, TCP with how many option bytes, UDP, ICMP, or no packet at all. That is one joint
decision over hundreds of pixels. A masked model that draws pixels one by one mixes the stacks
within a row (half a TCP header beside half a UDP one: measured on the shared captures, see
docs/diffusion.md "Row layouts"). So masked models generate in two stages, structure then values:

1. a first-order Markov chain over row layouts per class, learned from the training images at
   train-base time (the vocabulary of distinct layouts, start and transition counts; no field
   value, no packet) draws each image's sequence of layouts;
2. the masked model fills the values with those absent pixels revealed and the present ones
   hidden (``netdiff.model.masked``; training hides pixels the same way for part of each batch).

Saved as ``layouts.safetensors`` in the model folder.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

LAYOUTS_FILE = "layouts.safetensors"
ABSENT = -1


class LayoutChain:
    """``vocab``: (K, W) bool, present pixels of each distinct row layout; per class, ``start``
    (K,) and ``trans`` (K, K) counts (add-one smoothing is not used: a layout never seen after
    another is never drawn after it)."""

    def __init__(self, vocab: np.ndarray, classes: list[str], start: np.ndarray, trans: np.ndarray):
        self.vocab = np.asarray(vocab, dtype=bool)
        self.classes = list(classes)
        self.start = np.asarray(start, dtype=np.float64)       # (C, K)
        self.trans = np.asarray(trans, dtype=np.float64)       # (C, K, K)

    @classmethod
    def fit(cls, images: list[np.ndarray], labels: list[str]) -> "LayoutChain":
        """Images (H, W) int8 of the training set and their classes."""
        classes = sorted(set(labels))
        keys: dict[bytes, int] = {}
        seqs = []
        for im in images:
            present = np.packbits(np.asarray(im) != ABSENT, axis=1)
            ids = []
            for row in present:
                ids.append(keys.setdefault(row.tobytes(), len(keys)))
            seqs.append(ids)
        width = images[0].shape[1]
        vocab = np.zeros((len(keys), width), dtype=bool)
        for key, k in keys.items():
            vocab[k] = np.unpackbits(np.frombuffer(key, dtype=np.uint8))[:width].astype(bool)
        c_index = {c: i for i, c in enumerate(classes)}
        start = np.zeros((len(classes), len(keys)))
        trans = np.zeros((len(classes), len(keys), len(keys)))
        for ids, lab in zip(seqs, labels):
            c = c_index[lab]
            start[c, ids[0]] += 1
            np.add.at(trans[c], (ids[:-1], ids[1:]), 1)
        return cls(vocab, classes, start, trans)

    def sample(self, cls: str, rows: int, generator: torch.Generator) -> np.ndarray:
        """(rows, W) bool present-pixel map for one image of class ``cls``; randomness from the
        image's own generator (the same draws for the same seed)."""
        if cls not in self.classes:
            raise KeyError(cls)
        c = self.classes.index(cls)
        u = torch.rand(rows, generator=generator, dtype=torch.float64).numpy()
        ids = np.empty(rows, dtype=np.intp)
        ids[0] = _draw(self.start[c], u[0])
        for i in range(1, rows):
            p = self.trans[c, ids[i - 1]]
            # a layout last seen at the end of an image: go on from the class's start distribution
            ids[i] = _draw(p if p.sum() > 0 else self.start[c], u[i])
        return self.vocab[ids]

    def save(self, folder) -> None:
        from safetensors.numpy import save_file

        import os

        final = Path(folder) / LAYOUTS_FILE
        tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
        # one metadata key: safetensors writes a metadata map in an order that varies between
        # processes, and a resumed training must write the same bytes as a straight one
        meta = json.dumps({"classes": self.classes, "width": int(self.vocab.shape[1])}, sort_keys=True)
        save_file({"vocab": np.packbits(self.vocab, axis=1), "start": self.start.astype(np.float32),
                   "trans": self.trans.astype(np.float32)}, str(tmp), metadata={"netdiff": meta})
        os.replace(tmp, final)

    @classmethod
    def load(cls, folder) -> "LayoutChain | None":
        from safetensors import safe_open

        path = Path(folder) / LAYOUTS_FILE
        if not path.is_file():
            return None
        with safe_open(str(path), framework="numpy") as f:
            meta = json.loads(f.metadata()["netdiff"])
            vocab = np.unpackbits(f.get_tensor("vocab"), axis=1)[:, :meta["width"]].astype(bool)
            return cls(vocab, meta["classes"], f.get_tensor("start"), f.get_tensor("trans"))


def _draw(weights: np.ndarray, u: float) -> int:
    cdf = np.cumsum(weights)
    return int(min(np.searchsorted(cdf, u * cdf[-1], side="right"), len(weights) - 1))
