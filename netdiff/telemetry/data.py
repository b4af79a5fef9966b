"""Telemetry tables -> padded arrays (and back).

A telemetry data set is a set of sequences. Each sequence has attributes (fixed for the sequence,
categorical or continuous) and features (one value per time step). Sources:

* long form: one row per (sequence, time step); the sequence is named by one or more key
  columns, or by the row number (``rows_per_sequence``: fcc_mba has no key column);
* wide form: one row per sequence, feature columns ``<feature>_<t>`` (trailing blanks end a
  shorter sequence);
* a zip of CSV files, one sequence per file, attributes taken from the path (the 5G data set).

Everything is held as ``TelemetryData``: an attribute frame, a float array (n, T, F) padded with
NaN after each sequence's length, the lengths, and the keys. Categorical features are stored as
category codes; their labels live in ``feature_categories``.
"""
from __future__ import annotations

import dataclasses
import io
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from netdiff.errors import NetdiffError
from netdiff.io.atomic import atomic_path

SOURCE_COLUMN = "source_file"  # sequence key of zip sources: the member path


@dataclass
class ColumnRoles:
    """What each column is. Settable from YAML (``data:`` section) or CLI options."""

    sequence_key: list[str] = field(default_factory=list)
    time_column: str | None = None
    # "auto" (detected: ISO, day-/month-first, epoch s/ms, plain numbers), "iso", "dayfirst",
    # "monthfirst", "epoch", "epoch_ms", "number" or a strptime format such as "%Y.%m.%d_%H.%M.%S"
    time_format: str = "auto"
    attributes: list[str] = field(default_factory=list)
    features: list[str] = field(default_factory=list)  # empty: every free numeric column
    categorical: list[str] = field(default_factory=list)  # others: continuous if numeric
    layout: str = "long"  # or "wide"
    rows_per_sequence: int | None = None  # sequence = row // N (no key column); no key at all: one series
    path_attributes: dict[str, int] = field(default_factory=dict)  # zip: name -> path part
    missing_values: list[str] = field(default_factory=lambda: ["-", ""])
    resample_seconds: float | None = None  # mean over time bins (long, datetime sources)
    max_length: int | None = None  # keep the first N steps
    window: int | None = None  # cut sequences into windows of this length ...
    stride: int | None = None  # ... every `stride` steps (default: window)

    @classmethod
    def from_dict(cls, d: dict | None) -> "ColumnRoles":
        d = dict(d or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise NetdiffError(f"unknown data option(s): {', '.join(sorted(unknown))}")
        for name in ("sequence_key", "attributes", "features", "categorical"):
            if isinstance(d.get(name), str):
                from netdiff.telemetry.columns import split_names

                d[name] = split_names(d[name]) or []
        return cls(**d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def check(self) -> None:
        if not self.features and self.layout == "wide":
            raise NetdiffError("wide layout needs data.features (the <name> of columns <name>_0, <name>_1, ...)")
        if self.layout not in ("long", "wide"):
            raise NetdiffError(f"data.layout must be 'long' or 'wide', not {self.layout!r}")
        both = set(self.attributes) & set(self.features)
        if both:
            raise NetdiffError(f"column(s) both attribute and feature: {', '.join(sorted(both))}")
        if self.window is not None and self.window < 2:
            raise NetdiffError("data.window must be at least 2")
        if self.stride is not None and self.stride < 1:
            raise NetdiffError("data.stride must be at least 1")
        if self.stride is not None and self.window is None:
            raise NetdiffError("data.stride (--stride) needs data.window (--window)")


@dataclass
class TelemetryData:
    attributes: pd.DataFrame  # one row per sequence
    features: np.ndarray  # (n, T, F) float64, NaN after each length; categorical as codes
    lengths: np.ndarray  # (n,) int64, >= 1
    keys: list[str]  # one label per sequence
    attribute_names: list[str]
    feature_names: list[str]
    attribute_kinds: dict[str, str]  # "categorical" | "continuous"
    feature_kinds: dict[str, str]
    feature_categories: dict[str, list] = field(default_factory=dict)
    times: np.ndarray | None = None  # (n, T) seconds (epoch for datetimes), NaN padded
    time_is_datetime: bool = False

    @property
    def n(self) -> int:
        return len(self.lengths)

    @property
    def max_length(self) -> int:
        return self.features.shape[1]

    def mask(self) -> np.ndarray:
        return np.arange(self.max_length)[None, :] < self.lengths[:, None]

    def continuous_features(self) -> list[int]:
        return [i for i, n in enumerate(self.feature_names) if self.feature_kinds[n] == "continuous"]

    def subset(self, index) -> "TelemetryData":
        index = np.asarray(index)
        return dataclasses.replace(
            self,
            attributes=self.attributes.iloc[index].reset_index(drop=True),
            features=self.features[index],
            lengths=self.lengths[index],
            keys=[self.keys[i] for i in index],
            times=None if self.times is None else self.times[index],
        )


# --------------------------------------------------------------------------- reading tables
def read_table(path: str | os.PathLike, roles: ColumnRoles) -> pd.DataFrame:
    """Read a CSV, Parquet or zip-of-CSVs file into one frame (strings kept as strings)."""
    path = Path(path)
    if not path.is_file():
        raise NetdiffError(f"{path}: no such file")
    na = list(roles.missing_values)
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            try:
                return pd.read_parquet(path)
            except ImportError as e:
                raise NetdiffError(f"{path}: reading Parquet needs pyarrow (pip install netdiff[parquet])") from e
        if suffix == ".zip":
            return _read_zip(path, roles, na)
        return pd.read_csv(path, na_values=na, keep_default_na=True, low_memory=False)
    except NetdiffError:
        raise
    except (ValueError, OSError, pd.errors.ParserError, zipfile.BadZipFile) as e:
        raise NetdiffError(f"{path}: cannot read table: {_first_line(e)}") from e


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [e.__class__.__name__])[0]


def _read_zip(path: Path, roles: ColumnRoles, na: list[str]) -> pd.DataFrame:
    frames = []
    with zipfile.ZipFile(path) as zf:
        names = sorted(n for n in zf.namelist() if n.lower().endswith(".csv")
                       and not n.startswith("__MACOSX/") and "/." not in "/" + n)
        if not names:
            raise NetdiffError(f"{path}: no CSV files in the archive")
        for name in names:
            with zf.open(name) as fh:
                df = pd.read_csv(io.BytesIO(fh.read()), na_values=na, low_memory=False)
            df[SOURCE_COLUMN] = name
            parts = name.split("/")[:-1]
            for attr, idx in roles.path_attributes.items():
                if not -len(parts) <= idx < len(parts):
                    raise NetdiffError(f"{path}: {name} has no path part {idx} for attribute {attr!r}")
                df[attr] = parts[idx]
            frames.append(df)
    return pd.concat(frames, ignore_index=True)


def parse_times(values: pd.Series, fmt: str = "auto") -> tuple[np.ndarray, bool]:
    """Time column -> (float seconds, is_datetime). ``auto`` is made concrete by
    ``columns.detect_time_format``; ``number`` keeps numbers as numbers (steps, seconds)."""
    name = values.name
    if fmt == "auto":
        from netdiff.telemetry.columns import detect_time_format

        fmt = detect_time_format(values)[0]
    try:
        if fmt == "number":
            return pd.to_numeric(values).to_numpy(np.float64), False
        if fmt in ("epoch", "epoch_s"):
            return pd.to_numeric(values).to_numpy(np.float64), True
        if fmt == "epoch_ms":
            return pd.to_numeric(values).to_numpy(np.float64) / 1e3, True
        if fmt == "iso":
            ts = pd.to_datetime(values, format="ISO8601", utc=True)
        elif fmt in ("dayfirst", "monthfirst"):
            ts = pd.to_datetime(values, dayfirst=fmt == "dayfirst", format="mixed", utc=True)
        else:
            ts = pd.to_datetime(values, format=fmt, utc=True)
    except (ValueError, TypeError) as e:
        raise NetdiffError(f"time column {name!r}: cannot parse with format {fmt!r} ({_first_line(e)}); "
                           "set data.time_format (iso, dayfirst, monthfirst, epoch, epoch_ms or a strptime format)") from e
    if ts.isna().any():
        raise NetdiffError(f"time column {name!r}: {int(ts.isna().sum())} empty value(s)")
    # resolution-independent (pandas may hold s, ms, us or ns)
    return ((ts - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(1, "s")).to_numpy(np.float64), True


# --------------------------------------------------------------------------- long / wide -> arrays
def load(path: str | os.PathLike, roles: ColumnRoles) -> TelemetryData:
    """Read a file and build ``TelemetryData`` according to ``roles``."""
    return load_table(path, roles).data


@dataclass
class Loaded:
    data: TelemetryData  # as ``roles`` say (windows cut when data.window is set)
    roles: ColumnRoles  # resolved against the file's header (names, features, time format)
    notes: list[str]  # what was inferred, one line each, for the user
    rows: TelemetryData  # the same before windowing: every row once


def load_table(path: str | os.PathLike, roles: ColumnRoles) -> Loaded:
    """Read a file; names are matched as ``columns.resolve`` says, missing features inferred,
    an ``auto`` time format detected."""
    from netdiff.telemetry.columns import resolve_roles

    roles.check()
    df = read_table(path, roles)
    notes: list[str] = []
    if roles.layout == "wide":
        data = from_wide(df, roles)
    else:
        roles, notes = resolve_roles(df, roles, extra=(SOURCE_COLUMN,) if SOURCE_COLUMN in df.columns else ())
        data = from_long(df, roles)
    rows = postprocess(data, dataclasses.replace(roles, window=None, stride=None))
    return Loaded(postprocess(data, roles) if roles.window else rows, roles, notes, rows)


def read_header(path: str | os.PathLike) -> list[str]:
    """Column names of a CSV or Parquet file (without reading its rows)."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        return list(map(str, pd.read_csv(path, nrows=0).columns))
    except (ImportError, ValueError, OSError, pd.errors.ParserError) as e:
        raise NetdiffError(f"{path}: cannot read table: {_first_line(e)}") from e


def _kinds(df: pd.DataFrame, names: list[str], categorical: list[str]) -> dict[str, str]:
    kinds = {}
    for c in names:
        numeric = pd.api.types.is_numeric_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c])
        kinds[c] = "categorical" if (c in categorical or not numeric) else "continuous"
    return kinds


def _need(df: pd.DataFrame, cols: list[str]) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise NetdiffError(f"column(s) not in the data: {', '.join(missing)} "
                           f"(columns: {', '.join(map(str, df.columns[:30]))})")


def from_long(df: pd.DataFrame, roles: ColumnRoles) -> TelemetryData:
    keys = list(roles.sequence_key)
    if roles.rows_per_sequence:
        df = df.assign(sequence_id=np.arange(len(df)) // int(roles.rows_per_sequence))
        keys = ["sequence_id"]
    elif not keys and SOURCE_COLUMN in df.columns:
        keys = [SOURCE_COLUMN]
    if not keys:  # no key column: the whole table is one series (cut it with data.window)
        df = df.assign(__series="series")
        keys = ["__series"]
    _need(df, keys + roles.attributes + roles.features + ([roles.time_column] if roles.time_column else []))
    if len(df) == 0:
        raise NetdiffError("the table has no rows")

    attr_kinds = _kinds(df, roles.attributes, roles.categorical)
    feat_kinds = _kinds(df, roles.features, roles.categorical)

    seq = df.groupby(keys, sort=True, dropna=False).ngroup().to_numpy()
    if roles.time_column:
        t, is_dt = parse_times(df[roles.time_column], roles.time_format)
    else:
        t, is_dt = np.arange(len(df), dtype=np.float64), False
    order = np.lexsort((np.arange(len(df)), t, seq))  # stable: equal times keep file order
    df = df.iloc[order].reset_index(drop=True)
    seq, t = seq[order], t[order]

    if roles.resample_seconds:
        df, seq, t = _resample(df, seq, t, roles, feat_kinds, keys)

    # Attributes must be fixed within a sequence: a varying one is a role mistake.
    for a in roles.attributes:
        per = pd.Series(df[a].to_numpy()).groupby(seq).nunique(dropna=False)
        if (per > 1).any():
            raise NetdiffError(f"attribute {a!r} varies within {int((per > 1).sum())} sequence(s); "
                               "make it a feature or fix the sequence key")

    n = int(seq.max()) + 1
    starts = np.r_[0, np.flatnonzero(np.diff(seq)) + 1]
    lengths = np.diff(np.r_[starts, len(seq)])
    pos = np.arange(len(seq)) - np.repeat(starts, lengths)
    T = int(lengths.max())

    values, categories = _feature_matrix(df, roles.features, feat_kinds)
    values = _fill_missing(values, seq)
    features = np.full((n, T, len(roles.features)), np.nan)
    features[seq, pos] = values
    times = np.full((n, T), np.nan)
    times[seq, pos] = t

    first = df.iloc[starts]
    attributes = first[roles.attributes].reset_index(drop=True)
    key_labels = first[keys].astype(str).agg("/".join, axis=1).tolist()
    return TelemetryData(
        attributes=attributes, features=features, lengths=lengths.astype(np.int64), keys=key_labels,
        attribute_names=list(roles.attributes), feature_names=list(roles.features),
        attribute_kinds=attr_kinds, feature_kinds=feat_kinds, feature_categories=categories,
        times=times if roles.time_column else None, time_is_datetime=is_dt)


def _feature_matrix(df, names, kinds):
    cols, categories = [], {}
    for c in names:
        if kinds[c] == "categorical":
            codes, uniques = pd.factorize(df[c].astype("string"), sort=True)
            col = codes.astype(np.float64)
            col[codes < 0] = np.nan
            categories[c] = [str(u) for u in uniques]
            cols.append(col)
        else:
            try:
                cols.append(pd.to_numeric(df[c]).to_numpy(np.float64))
            except (ValueError, TypeError) as e:
                raise NetdiffError(f"feature {c!r} is not numeric ({_first_line(e)}); list it under data.categorical") from e
    return np.stack(cols, axis=1), categories


def _fill_missing(values: np.ndarray, seq: np.ndarray) -> np.ndarray:
    """Gaps inside a sequence take the previous value (else the next); a feature missing for a
    whole sequence takes the column median (DoppelGANger cannot train on NaN)."""
    if not np.isnan(values).any():
        return values
    frame = pd.DataFrame(values)
    median = frame.median()  # of the observed values, before any filling
    frame = frame.groupby(seq).ffill()
    frame = frame.groupby(seq).bfill()
    frame = frame.fillna(median).fillna(0.0)
    return frame.to_numpy(np.float64)


def _resample(df, seq, t, roles, kinds, keys):
    """Mean of each feature per (sequence, time bin); categorical features take the first value."""
    start = pd.Series(t).groupby(seq).transform("min").to_numpy()
    bins = np.floor((t - start) / float(roles.resample_seconds)).astype(np.int64)
    others = list(dict.fromkeys(c for c in roles.attributes + keys if c not in roles.features))
    work = df[roles.features + others].copy()
    for c in roles.features:
        if kinds[c] == "continuous":
            work[c] = pd.to_numeric(work[c], errors="coerce")
    work["__seq"], work["__bin"] = seq, bins
    work["__t"] = start + bins * float(roles.resample_seconds)
    agg = {c: ("mean" if kinds[c] == "continuous" else "first") for c in roles.features}
    agg.update({a: "first" for a in others})
    agg["__t"] = "first"
    out = work.groupby(["__seq", "__bin"], sort=True).agg(agg).reset_index()
    return out, out["__seq"].to_numpy(), out["__t"].to_numpy(np.float64)


def from_wide(df: pd.DataFrame, roles: ColumnRoles) -> TelemetryData:
    _need(df, roles.attributes)
    blocks, kinds, categories = [], {}, {}
    for f in roles.features:
        pat = re.compile(rf"^{re.escape(f)}_(\d+)$")
        cols = sorted(((int(m.group(1)), c) for c in df.columns if (m := pat.match(str(c)))), key=lambda x: x[0])
        if not cols:
            raise NetdiffError(f"wide layout: no columns named {f}_0, {f}_1, ...")
        block = df[[c for _, c in cols]]
        if f in roles.categorical or not all(pd.api.types.is_numeric_dtype(block[c]) for c in block):
            stacked = block.astype("string")
            codes, uniques = pd.factorize(stacked.to_numpy().ravel(), sort=True)
            vals = codes.astype(np.float64).reshape(block.shape)
            vals[codes.reshape(block.shape) < 0] = np.nan
            kinds[f], categories[f] = "categorical", [str(u) for u in uniques]
        else:
            vals, kinds[f] = block.to_numpy(np.float64), "continuous"
        blocks.append(vals)
    T = max(b.shape[1] for b in blocks)
    features = np.full((len(df), T, len(blocks)), np.nan)
    for i, b in enumerate(blocks):
        features[:, : b.shape[1], i] = b
    present = ~np.isnan(features).all(axis=2)
    # length = last step with any value; gaps before it are filled like long form
    lengths = np.where(present.any(axis=1), T - np.argmax(present[:, ::-1], axis=1), 0)
    keep = lengths > 0
    features, lengths, df = features[keep], lengths[keep], df[keep].reset_index(drop=True)
    n = len(df)
    mask = np.arange(T)[None, :] < lengths[:, None]
    seq, pos = np.nonzero(mask)
    features[seq, pos] = _fill_missing(features[seq, pos], seq)
    keys = (df[roles.sequence_key].astype(str).agg("/".join, axis=1).tolist()
            if roles.sequence_key else [str(i) for i in range(n)])
    return TelemetryData(
        attributes=df[roles.attributes].reset_index(drop=True), features=features,
        lengths=lengths.astype(np.int64), keys=keys, attribute_names=list(roles.attributes),
        feature_names=list(roles.features), attribute_kinds=_kinds(df, roles.attributes, roles.categorical),
        feature_kinds=kinds, feature_categories=categories)


def postprocess(data: TelemetryData, roles: ColumnRoles) -> TelemetryData:
    """Truncate to ``max_length`` and cut into windows, in that order."""
    if roles.max_length and data.max_length > roles.max_length:
        L = int(roles.max_length)
        data = dataclasses.replace(
            data, features=data.features[:, :L], lengths=np.minimum(data.lengths, L),
            times=None if data.times is None else data.times[:, :L])
    if roles.window:
        data = windows(data, int(roles.window), int(roles.stride or roles.window))
    return data


def windows(data: TelemetryData, window: int, stride: int) -> TelemetryData:
    """Every full window of each sequence as its own sequence (attributes repeated)."""
    seq_idx, starts = [], []
    for i, L in enumerate(data.lengths):
        s = np.arange(0, int(L) - window + 1, stride)
        seq_idx.append(np.full(len(s), i))
        starts.append(s)
    seq_idx, starts = np.concatenate(seq_idx), np.concatenate(starts)
    if len(seq_idx) == 0:
        raise NetdiffError(f"no sequence is at least {window} steps long (data.window)")
    steps = starts[:, None] + np.arange(window)[None, :]
    return dataclasses.replace(
        data,
        attributes=data.attributes.iloc[seq_idx].reset_index(drop=True),
        features=data.features[seq_idx[:, None], steps],
        lengths=np.full(len(seq_idx), window, dtype=np.int64),
        keys=[f"{data.keys[i]}@{s}" for i, s in zip(seq_idx, starts)],
        times=None if data.times is None else data.times[seq_idx[:, None], steps])


def renamed(data: TelemetryData, mapping: dict[str, str]) -> TelemetryData:
    """The same data with attribute / feature names mapped (names not in ``mapping`` kept)."""
    m = lambda n: mapping.get(n, n)  # noqa: E731
    return dataclasses.replace(
        data, attributes=data.attributes.rename(columns=mapping),
        attribute_names=[m(n) for n in data.attribute_names], feature_names=[m(n) for n in data.feature_names],
        attribute_kinds={m(k): v for k, v in data.attribute_kinds.items()},
        feature_kinds={m(k): v for k, v in data.feature_kinds.items()},
        feature_categories={m(k): v for k, v in data.feature_categories.items()})


# --------------------------------------------------------------------------- arrays -> table
def to_frame(data: TelemetryData, sequence_column: str = "sequence_id",
             time_column: str | None = None) -> pd.DataFrame:
    """Long-form frame: sequence id, optional time, attributes, features (labels restored)."""
    seq, pos = np.nonzero(data.mask())
    out = {sequence_column: np.asarray(data.keys, dtype=object)[seq]}
    if time_column:
        if data.times is not None:
            t = data.times[seq, pos]
            out[time_column] = (pd.to_datetime(np.round(t * 1e9).astype("int64"), utc=True)
                                .strftime("%Y-%m-%dT%H:%M:%SZ") if data.time_is_datetime else t)
        else:
            out[time_column] = pos
    for a in data.attribute_names:
        out[a] = data.attributes[a].to_numpy()[seq]
    for j, f in enumerate(data.feature_names):
        v = data.features[seq, pos, j]
        if data.feature_kinds[f] == "categorical":
            labels = np.asarray(data.feature_categories[f], dtype=object)
            v = labels[np.clip(np.round(v).astype(np.int64), 0, len(labels) - 1)]
        out[f] = v
    return pd.DataFrame(out)


def write_frame(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """CSV or Parquet (by suffix), written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        if path.suffix.lower() in (".parquet", ".pq"):
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False)
