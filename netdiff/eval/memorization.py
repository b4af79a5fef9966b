"""Memorisation audit: is synthetic data a copy of the training data?

For every synthetic record (packet, flow, image) the distance to the closest record of the same
class in the training set (DCR) is compared with the same distance for real records the model
never saw (a held-out real set). Distance is the Hamming distance over present bits: the share
of columns, among those where either record has a bit (not fill), whose values differ; address
columns are left out (timestamps are not in the rows). 0 is an exact copy; NEAR or less a near
copy. A generator that memorises shows DCRs well below the held-out ones and a high copy rate.
"""
from __future__ import annotations

import numpy as np

from netdiff.bits.layout import ADDRESS_FIELDS

NEAR = 0.01                 # at most 1% of present bits differ
MAX_QUERY_PER_CLASS = 400   # synthetic / held-out rows audited per class
MAX_REF_PER_CLASS = 20000   # training rows searched per class
FLOW_PACKETS = 8            # a flow is its first packets' rows, side by side
COLUMN_CHUNK = 4096


def _indicators(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (x == 1).astype(np.float32), (x == 0).astype(np.float32)


def nearest(query: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per query row, the smallest Hamming-over-present-bits distance to any ref row."""
    if len(query) == 0:
        return np.zeros(0)
    if len(ref) == 0:
        return np.full(len(query), np.nan)
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


def _no_address(ts) -> np.ndarray:
    keep = np.ones(ts.layout.width, dtype=bool)
    for name in ADDRESS_FIELDS:
        sl = ts.layout.fields.get(name)
        if sl is not None:
            keep[sl] = False
    return ts.bits[:, keep]


def packet_records(ts) -> tuple[np.ndarray, np.ndarray]:
    return _no_address(ts), ts.label


def _grouped_records(ts, key: np.ndarray, rows_per_record: int) -> tuple[np.ndarray, np.ndarray]:
    """One flattened record per key value: its first ``rows_per_record`` rows in time order,
    padded with fill."""
    if len(ts) == 0:
        return np.zeros((0, 0), dtype=np.int8), np.zeros(0, dtype=np.int64)
    bits = _no_address(ts)
    t = np.nan_to_num(ts.ts, nan=0.0)
    order = np.lexsort((np.arange(len(ts)), t, key))
    k = key[order]
    starts = np.r_[0, np.flatnonzero(k[1:] != k[:-1]) + 1]
    pos = np.arange(len(ts)) - np.repeat(starts, np.diff(np.r_[starts, len(ts)]))
    rec = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(ts)]))
    sel = pos < rows_per_record
    out = np.full((len(starts), rows_per_record, bits.shape[1]), -1, dtype=np.int8)
    out[rec[sel], pos[sel]] = bits[order[sel]]
    return out.reshape(len(starts), -1), ts.label[order[starts]]


def flow_records(ts):
    return _grouped_records(ts, ts.flow, FLOW_PACKETS)


def image_records(ts):
    return _grouped_records(ts, ts.image, ts.layout.height)


def _exact_rows(query: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Which query rows appear verbatim in ref (all rows of ref, not a sample)."""
    if len(query) == 0 or len(ref) == 0:
        return np.zeros(len(query), dtype=bool)
    q = np.ascontiguousarray(query).view(np.dtype((np.void, query.shape[1])))[:, 0]
    r = np.ascontiguousarray(ref).view(np.dtype((np.void, ref.shape[1])))[:, 0]
    return np.isin(q, r)


def dcr(query: tuple, ref: tuple, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(DCR per audited query record, exact-copy flag per query record), class by class."""
    qx, qy = query
    rx, ry = ref
    dists, exact = [], _exact_rows(qx, rx) if qx.shape[1] == rx.shape[1] else np.zeros(len(qx), bool)
    for c in np.unique(qy):
        qrows = np.flatnonzero(qy == c)
        if len(qrows) > MAX_QUERY_PER_CLASS:
            qrows = rng.choice(qrows, MAX_QUERY_PER_CLASS, replace=False)
        rrows = np.flatnonzero(ry == c)
        if len(rrows) == 0:
            continue
        if len(rrows) > MAX_REF_PER_CLASS:
            rrows = rng.choice(rrows, MAX_REF_PER_CLASS, replace=False)
        d = nearest(qx[qrows], rx[rrows])
        d[exact[qrows]] = 0.0      # a copy of a row outside the searched sample is still a copy
        dists.append(d)
    return (np.concatenate(dists) if dists else np.zeros(0)), exact


def _stats(d: np.ndarray, exact: np.ndarray) -> dict:
    if not len(d):
        return {"median": None, "p5": None, "audited": 0, "exact_copy_rate": None, "near_copy_rate": None}
    return {"median": float(np.median(d)), "p5": float(np.percentile(d, 5)), "audited": int(len(d)),
            "exact_copy_rate": float(exact.mean()) if len(exact) else None,
            "near_copy_rate": float((d <= NEAR).mean())}


def audit(synth, reference, holdout, rng: np.random.Generator) -> dict:
    """DCR and copy rates of synthetic and held-out real records against the reference
    (training) set, for packets, flows and images."""
    out, raw = {}, {}
    for unit, records in (("packets", packet_records), ("flows", flow_records),
                          ("images", image_records)):
        ref = records(reference)
        row = {}
        for name, ts in (("synthetic", synth), ("holdout", holdout)):
            if ts is None or len(ts) == 0:
                continue
            q = records(ts)
            if q[0].shape[1] != ref[0].shape[1]:
                continue
            d, exact = dcr(q, ref, rng)
            row[name] = _stats(d, exact)
            raw[(unit, name)] = d
        out[unit] = row
    return {"units": out, "_raw": raw, "near_threshold": NEAR}
