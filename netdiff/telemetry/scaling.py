"""Per-column encoding between ``TelemetryData`` and network tensors, saved with the model.

Continuous columns are min-max scaled to [0, 1] (optionally after log1p, for counters that span
orders of magnitude); categorical columns become one-hot blocks. ``Encoder.to_dict`` is plain
JSON so a saved model carries its own scaling.
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
        if self.log:
            v = np.log1p(np.maximum(v, 0.0))
        span = self.hi - self.lo
        scaled = (v - self.lo) / span if span > 0 else np.full_like(v, 0.5)
        return np.clip(scaled, 0.0, 1.0).astype(np.float32)[..., None]

    def decode(self, block: np.ndarray) -> np.ndarray:
        """(..., dim) -> codes (categorical, float) or values (continuous)."""
        if self.kind == "categorical":
            return np.argmax(block, axis=-1).astype(np.float64)
        v = self.lo + np.clip(block[..., 0].astype(np.float64), 0.0, 1.0) * (self.hi - self.lo)
        return np.expm1(v) if self.log else v


def _fit_column(name, kind, values, log, categories=None) -> ColumnSpec:
    if kind == "categorical":
        return ColumnSpec(name, kind, categories=list(categories))
    v = np.asarray(values, np.float64)
    v = v[~np.isnan(v)]
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
    def fit(cls, data: TelemetryData, log_columns=()) -> "Encoder":
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
                                     data.feature_categories.get(f)))
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
