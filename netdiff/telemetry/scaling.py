"""Per-column encoding between ``TelemetryData`` and network tensors, saved with the model.

Continuous columns are min-max scaled to [0, 1] (optionally after log1p, for counters that span
orders of magnitude), or, for ``quantile`` scaling, placed at a mix of their probability under
the training values' distribution function and their min-max position (``knot_positions``:
``QUANTILE_KNOTS`` quantiles saved with the model); categorical columns become one-hot blocks.
``Encoder.to_dict`` is plain JSON so a saved model carries its own scaling.

Why the quantile map: a GAN's sigmoid outputs spread over [0, 1] far more easily than they
squeeze into the bottom 2% of it, which is where min-max puts most values of a heavy-tailed
load (device_data: the median sits at 0.006 of the range). Its inverse also brings a point
mass back exactly: a feature that is 0 in 98% of the rows (fcc_mba's ping loss) is encoded
in the middle of the zeros' interval, and everything generated inside that interval decodes
to 0 again. The min-max share keeps resolution at the top, where a pure distribution
function turns a small generator error into a large one in the original units.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd

from netdiff.errors import NetdiffError
from netdiff.telemetry.data import TelemetryData


@dataclass
class ColumnSpec:
    name: str
    kind: str  # "continuous" | "categorical"
    lo: float = 0.0
    hi: float = 1.0
    log: bool = False
    categories: list | None = None
    # quantile scaling: the values at probabilities 0, 1/(K-1), .., 1 (nondecreasing); None: min-max.
    # Models saved before it existed have no such key and keep min-max.
    quantiles: list | None = None
    quantile_weight: float = 1.0  # see knot_positions

    @property
    def dim(self) -> int:
        return len(self.categories) if self.kind == "categorical" else 1

    def encode(self, values: np.ndarray) -> np.ndarray:
        """values -> (..., dim) float32; categorical values are labels (attributes) or codes."""
        if self.kind == "categorical":
            codes = np.asarray(values)
            out = np.zeros(codes.shape + (self.dim,), np.float32)
            valid = ~np.isnan(codes)
            idx = np.clip(np.where(valid, codes, 0).astype(np.int64), 0, self.dim - 1)
            np.put_along_axis(out, idx[..., None], valid[..., None].astype(np.float32), axis=-1)
            return out
        v = np.asarray(values, np.float64)
        if self.quantiles is not None:
            u = quantile_encode(v, np.asarray(self.quantiles, np.float64), self.quantile_weight)
            return u.astype(np.float32)[..., None]
        if self.log:
            v = np.log1p(np.maximum(v, 0.0))
        span = self.hi - self.lo
        scaled = (v - self.lo) / span if span > 0 else np.full_like(v, 0.5)
        return np.clip(scaled, 0.0, 1.0).astype(np.float32)[..., None]

    def decode(self, block: np.ndarray) -> np.ndarray:
        """(..., dim) -> codes (categorical, float) or values (continuous)."""
        if self.kind == "categorical":
            return np.argmax(block, axis=-1).astype(np.float64)
        if self.quantiles is not None:
            return quantile_decode(block[..., 0].astype(np.float64), np.asarray(self.quantiles, np.float64),
                                   self.quantile_weight)
        v = self.lo + np.clip(block[..., 0].astype(np.float64), 0.0, 1.0) * (self.hi - self.lo)
        return np.expm1(v) if self.log else v


QUANTILE_KNOTS = 1001
SCALINGS = ("minmax", "quantile")


def knot_positions(q: np.ndarray, weight: float = 1.0) -> np.ndarray:
    """Where knots ``q`` sit in [0, 1]: ``weight`` times their probability (evenly spaced) plus
    ``1 - weight`` times their min-max position. Strictly increasing for weight > 0."""
    p = np.linspace(0.0, 1.0, len(q))
    span = q[-1] - q[0]
    return weight * p + (1.0 - weight) * ((q - q[0]) / span if span > 0 else p)


def quantile_encode(v: np.ndarray, q: np.ndarray, weight: float = 1.0) -> np.ndarray:
    """Values -> [0, 1], piecewise linear through knots ``q`` at ``knot_positions``; a value
    equal to a run of equal knots (a point mass) maps to the middle of that run. NaN stays NaN."""
    pos = knot_positions(q, weight)
    knots, first = np.unique(q, return_index=True)
    last = np.r_[first[1:] - 1, len(q) - 1]
    left, right = pos[first], pos[last]
    if len(knots) == 1:
        return np.where(np.isnan(v), np.nan, 0.5)
    i = np.clip(np.searchsorted(knots, v, side="right") - 1, 0, len(knots) - 2)
    with np.errstate(invalid="ignore"):
        t = np.clip((v - knots[i]) / (knots[i + 1] - knots[i]), 0.0, 1.0)
    u = right[i] + t * (left[i + 1] - right[i])
    j = np.clip(np.searchsorted(knots, v, side="left"), 0, len(knots) - 1)
    u = np.where(knots[j] == v, (left[j] + right[j]) / 2, u)
    return np.where(np.isnan(v), np.nan, u)


def quantile_decode(u: np.ndarray, q: np.ndarray, weight: float = 1.0) -> np.ndarray:
    """Inverse of ``quantile_encode``: [0, 1] -> values; a point mass's whole interval maps to it."""
    return np.interp(np.clip(u, 0.0, 1.0), knot_positions(q, weight), q)


def _fit_column(name, kind, values, log, categories=None, scaling="minmax", weight=1.0) -> ColumnSpec:
    if kind == "categorical":
        return ColumnSpec(name, kind, categories=list(categories))
    v = np.asarray(values, np.float64)
    v = v[~np.isnan(v)]
    if scaling == "quantile" and len(v):
        # log1p is monotone, so a log column has the same distribution function: ``log`` stays off
        q = np.quantile(v, np.linspace(0.0, 1.0, min(QUANTILE_KNOTS, max(2, len(v)))))
        return ColumnSpec(name, kind, float(v.min()), float(v.max()), False, quantiles=q.tolist(),
                          quantile_weight=weight)
    if log:
        if (v < 0).any():
            raise NetdiffError(f"column {name!r} has negative values: cannot log-scale it")
        v = np.log1p(v)
    lo, hi = (float(v.min()), float(v.max())) if len(v) else (0.0, 1.0)
    return ColumnSpec(name, kind, lo, hi, log)


@dataclass
class Encoder:
    attributes: list[ColumnSpec]
    features: list[ColumnSpec]

    @classmethod
    def fit(cls, data: TelemetryData, log_columns=(), feature_scaling: str = "minmax",
            quantile_weight: float = 1.0) -> "Encoder":
        """``feature_scaling`` ("minmax" or "quantile") applies to continuous features; attributes
        are always min-max (one value per sequence: too few for a smooth distribution function)."""
        if feature_scaling not in SCALINGS:
            raise NetdiffError(f"feature scaling must be one of {', '.join(SCALINGS)}, not {feature_scaling!r}")
        if not 0.0 < quantile_weight <= 1.0:  # above 1 the map stops being monotone
            raise NetdiffError(f"quantile_weight must be in (0, 1], not {quantile_weight}")
        attrs = []
        for a in data.attribute_names:
            col = data.attributes[a]
            if data.attribute_kinds[a] == "categorical":
                cats = sorted(col.astype(str).unique().tolist())
                attrs.append(_fit_column(a, "categorical", None, False, cats))
            else:
                attrs.append(_fit_column(a, "continuous", col.to_numpy(np.float64), a in log_columns))
        mask = data.mask()
        feats = []
        for j, f in enumerate(data.feature_names):
            kind = data.feature_kinds[f]
            feats.append(_fit_column(f, kind, data.features[..., j][mask], f in log_columns,
                                     data.feature_categories.get(f), feature_scaling, quantile_weight))
        return cls(attrs, feats)

    # ---- sizes and output groups (for per-group activations)
    @property
    def attribute_dim(self) -> int:
        return sum(c.dim for c in self.attributes)

    @property
    def feature_dim(self) -> int:
        return sum(c.dim for c in self.features)

    @staticmethod
    def groups(specs) -> list[tuple[str, int, int]]:
        out, start = [], 0
        for c in specs:
            out.append((c.kind, start, start + c.dim))
            start += c.dim
        return out

    def continuous_feature_slots(self) -> list[int]:
        return [s for kind, s, e in self.groups(self.features) if kind == "continuous"]

    # ---- encode / decode
    def encode_attributes(self, frame: pd.DataFrame) -> np.ndarray:
        blocks = []
        for c in self.attributes:
            if c.kind == "categorical":
                labels = frame[c.name].astype(str).to_numpy()
                lookup = {v: i for i, v in enumerate(c.categories)}
                codes = np.array([lookup.get(v, np.nan) for v in labels], np.float64)
                blocks.append(c.encode(codes))
            else:
                blocks.append(c.encode(frame[c.name].to_numpy(np.float64)))
        if not blocks:
            return np.zeros((len(frame), 0), np.float32)
        return np.concatenate(blocks, axis=-1)

    def encode_features(self, data: TelemetryData) -> np.ndarray:
        """(n, T, feature_dim) float32 with zeros after each length."""
        out = np.concatenate([c.encode(data.features[..., j]) for j, c in enumerate(self.features)], axis=-1)
        out[~data.mask()] = 0.0
        return out

    def decode_attributes(self, enc: np.ndarray) -> pd.DataFrame:
        cols = {}
        for c, (_, s, e) in zip(self.attributes, self.groups(self.attributes)):
            v = c.decode(enc[:, s:e])
            cols[c.name] = (np.asarray(c.categories, dtype=object)[v.astype(np.int64)]
                            if c.kind == "categorical" else v)
        return pd.DataFrame(cols, index=range(len(enc)))

    def decode_features(self, enc: np.ndarray) -> np.ndarray:
        return np.stack([c.decode(enc[..., s:e]) for c, (_, s, e) in
                         zip(self.features, self.groups(self.features))], axis=-1)

    # ---- persistence
    def to_dict(self) -> dict:
        return {"attributes": [dataclasses.asdict(c) for c in self.attributes],
                "features": [dataclasses.asdict(c) for c in self.features]}

    @classmethod
    def from_dict(cls, d: dict) -> "Encoder":
        return cls([ColumnSpec(**c) for c in d["attributes"]], [ColumnSpec(**c) for c in d["features"]])

    def make_data(self, attributes: pd.DataFrame, features: np.ndarray, lengths: np.ndarray,
                  prefix: str = "syn") -> TelemetryData:
        """Decoded generator output as ``TelemetryData`` (NaN after each length)."""
        features = features.copy()
        T = features.shape[1]
        features[~(np.arange(T)[None, :] < lengths[:, None])] = np.nan
        return TelemetryData(
            attributes=attributes, features=features, lengths=lengths.astype(np.int64),
            keys=[f"{prefix}{i}" for i in range(len(lengths))],
            attribute_names=[c.name for c in self.attributes],
            feature_names=[c.name for c in self.features],
            attribute_kinds={c.name: c.kind for c in self.attributes},
            feature_kinds={c.name: c.kind for c in self.features},
            feature_categories={c.name: list(c.categories) for c in self.features if c.kind == "categorical"})
