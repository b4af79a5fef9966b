"""Reference points that give every measure a floor and a ceiling.

* real vs real: the real set cut in two halves (``split_real``); a perfect generator scores about
  what one half scores against the other.
* column-marginal sampler: every nPrint column drawn independently from the real marginals of its
  class. It matches per-column distributions almost exactly and nothing else, so it is the naive
  baseline per-column distances cannot tell from real traffic but joint measures must.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from netdiff.eval.flows import flow_ids, inter_arrival_times
from netdiff.eval.load import TrafficSet


def split_real(ts: TrafficSet, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of two halves of a set.

    Captures: every flow's packets are dealt at random between the halves, so both halves hold
    the same flows and hosts (what a generator trained on the capture aims to reproduce).
    Images: whole images per class go to one half or the other (rows of a class with a single
    image are dealt instead)."""
    if ts.kind == "png":
        a = np.zeros(len(ts), dtype=bool)
        for c in np.unique(ts.label):
            rows = np.flatnonzero(ts.label == c)
            imgs = np.unique(ts.image[rows])
            if len(imgs) >= 2:
                pick = rng.permutation(imgs)[: len(imgs) // 2]
                a[rows[np.isin(ts.image[rows], pick)]] = True
            else:
                a[rng.permutation(rows)[: (len(rows) + 1) // 2]] = True
    else:
        key = ts.flow if ts.flow is not None else ts.group
        # Random rank inside each flow; even ranks to one half, odd to the other.
        u = rng.random(len(ts))
        order = np.lexsort((u, key))
        rank = np.empty(len(ts), dtype=np.int64)
        k = key[order]
        starts = np.r_[0, np.flatnonzero(k[1:] != k[:-1]) + 1]
        pos = np.arange(len(ts)) - np.repeat(starts, np.diff(np.r_[starts, len(ts)]))
        rank[order] = pos
        flip = rng.integers(0, 2, size=int(key.max()) + 1 if len(key) else 0)
        a = ((rank + flip[key]) % 2) == 0
    return np.flatnonzero(a), np.flatnonzero(~a)


def split_flows(ts: TrafficSet, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of two halves holding whole flows (images: whole images), about half the rows
    of every class each: the held-out set of the memorisation audit."""
    key = ts.image if ts.kind == "png" else (ts.flow if ts.flow is not None else ts.group)
    a = np.zeros(len(ts), dtype=bool)
    for c in np.unique(ts.label):
        rows = np.flatnonzero(ts.label == c)
        units, sizes = np.unique(key[rows], return_counts=True)
        if len(units) < 2:
            a[rng.permutation(rows)[: (len(rows) + 1) // 2]] = True
            continue
        perm = rng.permutation(len(units))
        filled = np.cumsum(sizes[perm])
        # Units in shuffled order until half the class's rows; never all of them.
        take = perm[: max(1, min(len(units) - 1, int(np.searchsorted(filled, len(rows) / 2)) + 1))]
        a[rows[np.isin(key[rows], units[take])]] = True
    return np.flatnonzero(a), np.flatnonzero(~a)


def column_marginal_sample(ts: TrafficSet, rng: np.random.Generator, n_per_class: dict | None = None
                           ) -> TrafficSet:
    """A set of the same classes and sizes, each column drawn from its class's real marginal.

    Timestamps are the class's real inter-arrival times drawn at random and summed; rows fall in
    files and images of ``layout.height`` packets per class."""
    bits, label, group, image, times = [], [], [], [], []
    iat_all = inter_arrival_times(ts)
    for c in np.unique(ts.label):
        rows = np.flatnonzero(ts.label == c)
        n = int(n_per_class.get(ts.classes[c], len(rows))) if n_per_class else len(rows)
        if n == 0:
            continue
        sub = ts.bits[rows]
        p_neg = (sub == -1).mean(axis=0)
        p_zero = (sub == 0).mean(axis=0)
        u = rng.random((n, sub.shape[1]), dtype=np.float32)
        m = np.where(u < p_neg, -1, np.where(u < p_neg + p_zero, 0, 1)).astype(np.int8)
        bits.append(m)
        label.append(np.full(n, c))
        group.append(np.full(n, c))
        image.append(c * 1_000_000 + np.arange(n) // ts.layout.height)
        iat = inter_arrival_times(ts.take(rows))
        if not len(iat):
            iat = iat_all
        times.append(np.cumsum(rng.choice(iat, n)) if len(iat) else np.full(n, np.nan))
    _, image_ids = np.unique(np.concatenate(image), return_inverse=True)
    out = TrafficSet(f"column-marginal sample of {ts.path}", ts.kind, ts.layout, np.concatenate(bits),
                     np.concatenate(label), list(ts.classes), np.concatenate(group),
                     image_ids.reshape(-1), np.concatenate(times), list(ts.classes), [])
    return replace(out, flow=flow_ids(out))
