"""Bidirectional flows and their statistics.

A flow is the bidirectional 5-tuple (addresses, ports, protocol) within one source file or image.
Images without address columns (the NetDiffusion layout) key flows by protocol and port pair
within the image, which is what the image itself can say.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from netdiff.eval.fields import ABSENT, decode_fields, field_bytes

# Flow features (one row per flow) used for flow statistics, flow classifiers and audits.
FLOW_FEATURES = ("packets", "bytes", "duration", "mean_length", "std_length", "min_length",
                 "max_length", "mean_iat", "std_iat", "forward_share", "protocol", "server_port",
                 "syn", "fin", "rst", "psh", "mean_ttl", "mean_window")
# Statistics compared with EMD (on log10(1 + x)): the NetShare flow measures.
FLOW_STATS = ("packets", "bytes", "duration")

_MIX = np.random.default_rng(0x6E6574646966).integers(1, 2 ** 62, size=(64,), dtype=np.int64)


def _endpoint_hash(addr: np.ndarray, port: np.ndarray) -> np.ndarray:
    """int64 hash of (address bytes, port) per row; wraps on overflow on purpose."""
    cols = np.concatenate([addr.astype(np.int64), port[:, None] & 0xFFFF], axis=1)
    with np.errstate(over="ignore"):
        return (cols * _MIX[:cols.shape[1]]).sum(axis=1)


def flow_ids(ts) -> np.ndarray:
    """(N,) int flow id of every row of a TrafficSet (ids are dense, 0..flows-1)."""
    n = len(ts)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    f = decode_fields(ts.bits, ts.layout)
    src = np.concatenate([field_bytes(ts.bits, ts.layout, "ipv4_src"),
                          field_bytes(ts.bits, ts.layout, "ipv6_src")], axis=1)
    dst = np.concatenate([field_bytes(ts.bits, ts.layout, "ipv4_dst"),
                          field_bytes(ts.bits, ts.layout, "ipv6_dst")], axis=1)
    a = _endpoint_hash(src, np.maximum(f["sport"], 0))
    b = _endpoint_hash(dst, np.maximum(f["dport"], 0))
    key = np.stack([np.minimum(a, b), np.maximum(a, b), f["protocol"], ts.group], axis=1)
    _, inv = np.unique(key, axis=0, return_inverse=True)
    return inv.reshape(-1).astype(np.int64)


def flow_table(ts) -> pd.DataFrame:
    """One row per flow: FLOW_FEATURES plus its class label and the source group."""
    cols = list(FLOW_FEATURES) + ["label", "group"]
    if len(ts) == 0:
        return pd.DataFrame(columns=cols)
    f = decode_fields(ts.bits, ts.layout)
    length = np.where(f["packet_length"] == ABSENT, np.nan, f["packet_length"]).astype(float)
    flags = np.maximum(f["tcp_flags"], 0)
    order = np.lexsort((ts.ts, ts.flow))   # by flow, then time (NaN last)
    flow = ts.flow[order]
    t = ts.ts[order]
    iat = np.diff(t, prepend=np.nan)
    iat[np.r_[True, flow[1:] != flow[:-1]]] = np.nan
    sport = f["sport"][order]
    first_sport = pd.Series(sport).groupby(flow).transform("first").to_numpy()
    df = pd.DataFrame({
        "flow": flow, "length": length[order], "t": t, "iat": iat,
        "forward": (sport == first_sport).astype(float),
        "protocol": f["protocol"][order].astype(float),
        "port": np.minimum(np.where(f["sport"] < 0, 1 << 16, f["sport"]),
                           np.where(f["dport"] < 0, 1 << 16, f["dport"]))[order].astype(float),
        "syn": ((flags[order] >> 1) & 1).astype(float), "fin": (flags[order] & 1).astype(float),
        "rst": ((flags[order] >> 2) & 1).astype(float), "psh": ((flags[order] >> 3) & 1).astype(float),
        "ttl": np.where(f["ttl"] < 0, np.nan, f["ttl"])[order].astype(float),
        "window": np.where(f["tcp_window"] < 0, np.nan, f["tcp_window"])[order].astype(float),
        "label": ts.label[order], "group": ts.group[order],
    })
    g = df.groupby("flow", sort=True)
    out = pd.DataFrame({
        "packets": g.size().astype(float),
        "bytes": g["length"].sum(min_count=1).fillna(0.0),
        "duration": g["t"].max() - g["t"].min(),       # NaN without timestamps
        "mean_length": g["length"].mean(), "std_length": g["length"].std(ddof=0),
        "min_length": g["length"].min(), "max_length": g["length"].max(),
        "mean_iat": g["iat"].mean(), "std_iat": g["iat"].std(ddof=0),
        "forward_share": g["forward"].mean(), "protocol": g["protocol"].first(),
        "server_port": g["port"].first(),
        "syn": g["syn"].sum(), "fin": g["fin"].sum(), "rst": g["rst"].sum(), "psh": g["psh"].sum(),
        "mean_ttl": g["ttl"].mean(), "mean_window": g["window"].mean(),
        "label": g["label"].first(), "group": g["group"].first(),
    })
    return out.reset_index(drop=True)[cols]


def flow_matrix(table: pd.DataFrame) -> np.ndarray:
    """Flow features as a float matrix for classifiers: counts and sizes on log scale,
    missing values (no timestamps, no TCP) as -1."""
    x = table[list(FLOW_FEATURES)].to_numpy(dtype=float, copy=True).reshape(-1, len(FLOW_FEATURES))
    logged = [FLOW_FEATURES.index(c) for c in ("packets", "bytes", "duration", "mean_iat", "std_iat",
                                                "syn", "fin", "rst", "psh")]
    x[:, logged] = np.log10(1.0 + np.clip(x[:, logged], 0, None))
    return np.nan_to_num(x, nan=-1.0)


def inter_arrival_times(ts) -> np.ndarray:
    """Gaps between consecutive packets of each source file/image, in seconds (time order)."""
    ok = np.isfinite(ts.ts)
    if ok.sum() < 2:
        return np.zeros(0)
    t, g = ts.ts[ok], ts.group[ok]
    order = np.lexsort((t, g))
    t, g = t[order], g[order]
    gaps = np.diff(t)
    return gaps[g[1:] == g[:-1]]
