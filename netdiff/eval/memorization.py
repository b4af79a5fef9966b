"""Memorisation audit: is synthetic data a copy of the training data?

For every synthetic record (packet, flow, image) the distance to the closest record of the same
class in the training set (DCR) is compared with the same distance for real records the model
never saw (a held-out real set). Distance is the Hamming distance over present bits: the share
of columns, among those where either record has a bit (not fill), whose values differ; address
columns are left out (timestamps are not in the rows). 0 is an exact copy; NEAR or less a near
copy. A generator that memorises shows DCRs well below the held-out ones and a high copy rate.
"""
from __future__ import annotations

import hashlib

import numpy as np

from netdiff.eval.utility import packet_features

NEAR = 0.01                 # at most 1% of present bits differ
MAX_QUERY_PER_CLASS = 400   # synthetic / held-out rows audited per class
MAX_REF_PER_CLASS = 20000   # training packets / flows searched per class
MAX_REF_IMAGES_PER_CLASS = 300   # training images searched per class (about 1 MB each)
FLOW_PACKETS = 8            # a flow is its first packets' rows, side by side
COLUMN_CHUNK = 4096
PACKED_ABOVE = 65536        # records wider than this (images) use the packed-bit path


def _indicators(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (x == 1).astype(np.float32), (x == 0).astype(np.float32)


def nearest(query: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per query row, the smallest Hamming-over-present-bits distance to any ref row."""
    if len(query) == 0:
        return np.zeros(0)
    if len(ref) == 0:
        return np.full(len(query), np.nan)
    if query.shape[1] > PACKED_ABOVE:
        return _nearest_packed(query, ref)
    # Columns that are fill in every row of both sets cannot differ.
    live = np.flatnonzero((query != -1).any(axis=0) | (ref != -1).any(axis=0))
    match = np.zeros((len(query), len(ref)), dtype=np.float32)
    both = np.zeros_like(match)
    pq = np.zeros(len(query), dtype=np.float32)
    pr = np.zeros(len(ref), dtype=np.float32)
    for s in range(0, len(live), COLUMN_CHUNK):
        cols = live[s:s + COLUMN_CHUNK]
        q1, q0 = _indicators(query[:, cols])
        r1, r0 = _indicators(ref[:, cols])
        match += q1 @ r1.T
        match += q0 @ r0.T
        qp, rp = q1 + q0, r1 + r0
        both += qp @ rp.T
        pq += qp.sum(1)
        pr += rp.sum(1)
    union = pq[:, None] + pr[None, :] - both
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.where(union > 0, (union - match) / np.maximum(union, 1), 0.0)
    return np.clip(d.min(axis=1), 0.0, 1.0).astype(np.float64)


def _pack(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.packbits(x == 1, axis=1), np.packbits(x == 0, axis=1)


def _nearest_packed(query: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """The same distance for few, very wide records (whole images): bits packed eight to a
    byte, popcounts of AND per pair."""
    q1, q0 = _pack(query)
    r1, r0 = _pack(ref)
    rp = r1 | r0
    pr = np.bitwise_count(rp).sum(axis=1, dtype=np.int64)
    out = np.empty(len(query))
    for i in range(len(query)):
        qp = q1[i] | q0[i]
        match = (np.bitwise_count(r1 & q1[i]).sum(1, dtype=np.int64)
                 + np.bitwise_count(r0 & q0[i]).sum(1, dtype=np.int64))
        both = np.bitwise_count(rp & qp).sum(1, dtype=np.int64)
        union = int(np.bitwise_count(qp).sum(dtype=np.int64)) + pr - both
        d = np.where(union > 0, (union - match) / np.maximum(union, 1), 0.0)
        out[i] = d.min()
    return out


class Records:
    """The records (packets, flows or images) of a set, materialised only when sampled.

    A record is a run of rows (a flow's first FLOW_PACKETS in time order, an image's rows in
    order) laid side by side and padded with fill; ``digest`` fingerprints every record so exact
    copies are found among all of them, not only among the sampled ones."""

    def __init__(self, ts, unit: str):
        self.unit = unit
        self.bits = packet_features(ts)   # addresses excluded
        n = len(ts)
        if unit == "packets":
            key, self.rows_per_record = np.arange(n), 1
        elif unit == "flows":
            key, self.rows_per_record = ts.flow, FLOW_PACKETS
        else:
            key, self.rows_per_record = ts.image, ts.layout.height
        t = np.nan_to_num(ts.ts, nan=0.0) if unit == "flows" else np.zeros(n)
        self.order = np.lexsort((np.arange(n), t, key))
        k = key[self.order]
        self.starts = np.r_[0, np.flatnonzero(k[1:] != k[:-1]) + 1] if n else np.zeros(0, np.int64)
        self.counts = np.minimum(np.diff(np.r_[self.starts, n]), self.rows_per_record)
        self.labels = ts.label[self.order[self.starts]] if n else np.zeros(0, np.int64)
        self.width = self.rows_per_record * self.bits.shape[1]

    def __len__(self) -> int:
        return len(self.starts)

    def digests(self) -> np.ndarray:
        if self.unit == "packets":
            b = np.ascontiguousarray(self.bits)
            return b.view(np.dtype((np.void, max(b.shape[1], 1))))[:, 0] if len(b) else np.zeros(0, "V1")
        out = [hashlib.blake2b(self.bits[self.order[s:s + c]].tobytes() + c.to_bytes(4, "little"),
                               digest_size=16).digest()
               for s, c in zip(self.starts.tolist(), self.counts.tolist())]
        return np.array(out, dtype="V16") if out else np.zeros(0, "V16")

    def matrix(self, idx: np.ndarray) -> np.ndarray:
        if self.rows_per_record == 1:
            return self.bits[self.order[self.starts[idx]]]
        out = np.full((len(idx), self.rows_per_record, self.bits.shape[1]), -1, dtype=np.int8)
        for j, r in enumerate(idx.tolist()):
            s, c = self.starts[r], self.counts[r]
            out[j, :c] = self.bits[self.order[s:s + c]]
        return out.reshape(len(idx), -1)


def dcr(query: Records, ref: Records, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(DCR per audited query record, exact-copy flag per query record), class by class."""
    if query.width != ref.width or len(query) == 0:
        return np.zeros(0), np.zeros(len(query), dtype=bool)
    exact = np.isin(query.digests(), ref.digests()) if len(ref) else np.zeros(len(query), bool)
    cap = MAX_REF_IMAGES_PER_CLASS if query.unit == "images" else MAX_REF_PER_CLASS
    dists = []
    for c in np.unique(query.labels):
        qrows = np.flatnonzero(query.labels == c)
        if len(qrows) > MAX_QUERY_PER_CLASS:
            qrows = np.sort(rng.choice(qrows, MAX_QUERY_PER_CLASS, replace=False))
        rrows = np.flatnonzero(ref.labels == c)
        if len(rrows) == 0:
            continue
        if len(rrows) > cap:
            rrows = np.sort(rng.choice(rrows, cap, replace=False))
        d = nearest(query.matrix(qrows), ref.matrix(rrows))
        d[exact[qrows]] = 0.0      # a copy of a record outside the searched sample is still a copy
        dists.append(d)
    return (np.concatenate(dists) if dists else np.zeros(0)), exact


def _stats(d: np.ndarray, exact: np.ndarray) -> dict:
    if not len(d):
        return {"median": None, "p5": None, "audited": 0, "exact_copy_rate": None, "near_copy_rate": None}
    return {"median": float(np.median(d)), "p5": float(np.percentile(d, 5)), "audited": int(len(d)),
            "exact_copy_rate": float(exact.mean()) if len(exact) else None,
            "near_copy_rate": float((d <= NEAR).mean())}


def audit(synth, reference, holdout=None, rng: np.random.Generator | None = None,
          holdout_reference=None) -> dict:
    """DCR and copy rates of synthetic and held-out real records against the reference
    (training) set, for packets, flows and images. ``holdout_reference`` (default: the
    reference) is what the held-out records are compared with."""
    rng = rng if rng is not None else np.random.default_rng(0)
    out, raw = {}, {}
    for unit in ("packets", "flows", "images"):
        refs = {"synthetic": Records(reference, unit)}
        refs["holdout"] = refs["synthetic"] if holdout_reference is None else Records(holdout_reference, unit)
        row = {}
        for name, ts in (("synthetic", synth), ("holdout", holdout)):
            if ts is None or len(ts) == 0:
                continue
            q, ref = Records(ts, unit), refs[name]
            if q.width != ref.width:
                continue
            d, exact = dcr(q, ref, rng)
            row[name] = _stats(d, exact)
            raw[(unit, name)] = d
        out[unit] = row
    return {"units": out, "_raw": raw, "near_threshold": NEAR}
