"""Statistical fidelity: per-column distances between nPrint bit distributions, distances between
decoded header fields, inter-arrival times and flow statistics.

Per column, each set is a distribution over the three values {-1 (absent), 0, 1}; JSD uses log
base 2 (in [0, 1]), TVD is half the L1 distance, Hellinger is sqrt(1 - Bhattacharyya coefficient).
Continuous quantities use the 1-D Wasserstein distance (EMD); times, sizes and counts on a
log10 scale so one long gap does not drown every other difference.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import wasserstein_distance

from netdiff.eval.fields import ABSENT, FIELD_KINDS, decode_fields
from netdiff.eval.flows import FLOW_STATS, inter_arrival_times

WORST = 10
IAT_FLOOR = 1e-6   # 1 microsecond: pcap's usual timestamp resolution


def column_probs(bits: np.ndarray) -> np.ndarray:
    """(W, 3) share of rows holding -1, 0, 1 in every column."""
    n = max(len(bits), 1)
    return np.stack([(bits == v).sum(axis=0) / n for v in (-1, 0, 1)], axis=1)


def jsd(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence (base 2) along the last axis."""
    m = 0.5 * (p + q)
    with np.errstate(divide="ignore", invalid="ignore"):
        kp = np.where(p > 0, p * np.log2(p / m), 0.0)
        kq = np.where(q > 0, q * np.log2(q / m), 0.0)
    return np.clip(0.5 * (kp.sum(-1) + kq.sum(-1)), 0.0, 1.0)


def tvd(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return 0.5 * np.abs(p - q).sum(-1)


def hellinger(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return np.sqrt(np.clip(1.0 - np.sqrt(p * q).sum(-1), 0.0, 1.0))


def column_distances(real: np.ndarray, synth: np.ndarray) -> dict[str, np.ndarray]:
    """Per-column JSD, TVD and Hellinger between two bit matrices with the same columns."""
    p, q = column_probs(real), column_probs(synth)
    return {"jsd": jsd(p, q), "tvd": tvd(p, q), "hellinger": hellinger(p, q)}


def summarise_columns(dist: dict[str, np.ndarray], columns: list[str]) -> dict:
    """Mean over columns and the worst columns, per measure."""
    out = {}
    for name, d in dist.items():
        worst = np.argsort(-d, kind="stable")[:WORST]
        out[name] = {"mean": float(d.mean()) if len(d) else 0.0,
                     "worst": [{"column": columns[i], "value": float(d[i])} for i in worst]}
    return out


def field_means(d: np.ndarray, fields: dict[str, slice]) -> dict[str, float]:
    """A per-column distance averaged over each field's columns."""
    return {name: float(d[sl].mean()) for name, sl in fields.items()}


def _categorical_jsd(a: np.ndarray, b: np.ndarray) -> float:
    values, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
    ca = np.bincount(inv[:len(a)], minlength=len(values)) / max(len(a), 1)
    cb = np.bincount(inv[len(a):], minlength=len(values)) / max(len(b), 1)
    return float(jsd(ca, cb))


def emd(a: np.ndarray, b: np.ndarray) -> float | None:
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if not len(a) or not len(b):
        return None
    return float(wasserstein_distance(a, b))


def decoded_field_distances(real_fields: dict, synth_fields: dict) -> dict:
    """Per decoded header field: JSD over values (absent counted as a value); numeric fields also
    EMD over the present values, in the field's own units."""
    out = {}
    for name, kind in FIELD_KINDS.items():
        a, b = real_fields[name], synth_fields[name]
        row = {"jsd": _categorical_jsd(a, b),
               "present_real": float((a != ABSENT).mean()) if len(a) else 0.0,
               "present_synthetic": float((b != ABSENT).mean()) if len(b) else 0.0}
        if kind == "num":
            row["emd"] = emd(a[a != ABSENT].astype(float), b[b != ABSENT].astype(float))
        out[name] = row
    return out


def log_iat(ts) -> np.ndarray:
    return np.log10(np.maximum(inter_arrival_times(ts), IAT_FLOOR))


def fidelity(real, synth, real_flows, synth_flows) -> dict:
    """Every fidelity measure between two TrafficSets with the same layout (one class or all)."""
    cols = column_distances(real.bits, synth.bits)
    summary = summarise_columns(cols, real.layout.columns)
    rf, sf = decode_fields(real.bits, real.layout), decode_fields(synth.bits, synth.layout)
    fields = decoded_field_distances(rf, sf)
    ia, ib = log_iat(real), log_iat(synth)
    flows = {}
    for stat in FLOW_STATS:
        x = np.log10(1.0 + real_flows[stat].to_numpy(float)) if len(real_flows) else np.zeros(0)
        y = np.log10(1.0 + synth_flows[stat].to_numpy(float)) if len(synth_flows) else np.zeros(0)
        flows[stat] = {"emd_log10": emd(x, y)}
    return {
        "jsd": summary["jsd"]["mean"], "tvd": summary["tvd"]["mean"],
        "hellinger": summary["hellinger"]["mean"],
        "worst_columns": {k: v["worst"] for k, v in summary.items()},
        "field_jsd": field_means(cols["jsd"], real.layout.fields),
        "decoded_fields": fields,
        "decoded_field_jsd_mean": float(np.mean([v["jsd"] for v in fields.values()])),
        "inter_arrival": {"emd_log10_s": emd(ia, ib),
                          "median_real_s": float(10 ** np.median(ia)) if len(ia) else None,
                          "median_synthetic_s": float(10 ** np.median(ib)) if len(ib) else None},
        "flows": {**flows, "count_real": int(len(real_flows)), "count_synthetic": int(len(synth_flows))},
        "_column_jsd": cols["jsd"],   # for the heat-map; dropped from report.json
    }
