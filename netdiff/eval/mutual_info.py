"""Joint structure: how decoded header fields go together, real vs synthetic.

Each decoded field is cut into categories fixed by the real data (numeric fields: real quantile
bins; categorical: the most common real values plus "other"; "absent" is always its own
category). The normalised mutual information NMI(X, Y) = I(X; Y) / sqrt(H(X) H(Y)) of every pair
of fields forms a matrix per set; the distance is the mean absolute difference of the two
matrices over field pairs (0 = same dependencies; a sampler drawing columns independently has
NMI near 0 where real traffic has strong dependencies). Flows add the joint distribution of size
and duration.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr

from netdiff.eval.fields import ABSENT, FIELD_KINDS

BINS = 16
TOP_VALUES = 16
FLOW_GRID = 12


def _codes_for(real: np.ndarray, kind: str):
    """A function mapping values to category codes, fitted on the real values."""
    present = real[real != ABSENT]
    if kind == "num" and len(np.unique(present)) > BINS:
        edges = np.unique(np.quantile(present, np.linspace(0, 1, BINS + 1)[1:-1]))
        return lambda v: np.where(v == ABSENT, 0, 1 + np.searchsorted(edges, v, side="right"))
    vals, counts = np.unique(present, return_counts=True)
    top = np.sort(vals[np.argsort(-counts, kind="stable")[:TOP_VALUES]])

    def code(v):
        pos = np.clip(np.searchsorted(top, v), 0, max(len(top) - 1, 0))
        hit = (top[pos] == v) if len(top) else np.zeros(len(v), dtype=bool)
        return np.where(v == ABSENT, 0, np.where(hit, 2 + pos, 1))
    return code


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def nmi_matrix(codes: dict[str, np.ndarray]) -> np.ndarray:
    names = list(codes)
    k = len(names)
    out = np.eye(k)
    h = {n: _entropy(np.bincount(codes[n])) for n in names}
    for i in range(k):
        for j in range(i + 1, k):
            a, b = codes[names[i]], codes[names[j]]
            if h[names[i]] <= 0 or h[names[j]] <= 0:
                v = 0.0
            else:
                joint = np.bincount(a * (b.max() + 1) + b)
                mi = h[names[i]] + h[names[j]] - _entropy(joint)
                v = float(np.clip(mi / np.sqrt(h[names[i]] * h[names[j]]), 0.0, 1.0))
            out[i, j] = out[j, i] = v
    return out


def field_nmi(real_fields: dict, synth_fields: dict) -> dict:
    """NMI matrices of real and synthetic decoded fields and their mean absolute difference."""
    names = [n for n in FIELD_KINDS if n in real_fields]
    rc, sc = {}, {}
    for n in names:
        code = _codes_for(real_fields[n], FIELD_KINDS[n])
        rc[n], sc[n] = code(real_fields[n]), code(synth_fields[n])
    if not names or not len(next(iter(rc.values()))) or not len(next(iter(sc.values()))):
        return {"distance": None, "fields": names}
    mr, ms = nmi_matrix(rc), nmi_matrix(sc)
    iu = np.triu_indices(len(names), 1)
    diff = np.abs(mr - ms)[iu]
    worst = np.argsort(-diff, kind="stable")[:5]
    return {"distance": float(diff.mean()), "fields": names,
            "worst_pairs": [{"pair": [names[iu[0][w]], names[iu[1][w]]], "real": float(mr[iu][w]),
                             "synthetic": float(ms[iu][w])} for w in worst],
            "_real": mr, "_synthetic": ms}


def flow_joint(real_flows, synth_flows) -> dict:
    """Bytes vs duration per flow: JSD of the 2-D histograms (log10 scales, real-quantile grid)
    and Spearman correlations of each set."""
    def xy(t):
        x, y = np.log10(1 + t["bytes"].to_numpy(float)), np.log10(1 + t["duration"].to_numpy(float))
        ok = np.isfinite(x) & np.isfinite(y)     # flows without timestamps have no duration
        return x[ok], y[ok]
    rx, ry = xy(real_flows)
    sx, sy = xy(synth_flows)
    if len(rx) < 3 or len(sx) < 3:
        return {"size_duration_jsd": None}
    ex = np.unique(np.quantile(rx, np.linspace(0, 1, FLOW_GRID + 1)[1:-1]))
    ey = np.unique(np.quantile(ry, np.linspace(0, 1, FLOW_GRID + 1)[1:-1]))

    def hist(x, y):
        cell = np.searchsorted(ex, x, side="right") * (len(ey) + 1) + np.searchsorted(ey, y, side="right")
        h = np.bincount(cell, minlength=(len(ex) + 1) * (len(ey) + 1)).astype(float)
        return h / h.sum()
    from netdiff.eval.fidelity import jsd
    def rho(x, y):
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            return None
        return float(spearmanr(x, y).statistic)
    r_rho, s_rho = rho(rx, ry), rho(sx, sy)
    return {"size_duration_jsd": float(jsd(hist(rx, ry), hist(sx, sy))),
            "spearman_real": r_rho, "spearman_synthetic": s_rho,
            "spearman_difference": None if r_rho is None or s_rho is None else abs(r_rho - s_rho)}
