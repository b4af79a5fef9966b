"""Column roles resolved against a table's header, so a plain CSV needs no YAML.

* names: ``"x"`` written with double quotes (``--features '" enq_qdepth2",Buffer'``) must match
  a column exactly; an unquoted name matches exactly, else the one column whose name is equal
  after stripping spaces (published files have headers such as ``' enq_qdepth2'``); an unknown
  or ambiguous name is one error naming the closest column;
* features: when none are given, every numeric column that is not the sequence key, the time
  column or an attribute (plus columns listed as categorical), said in one line;
* time format ``auto``: ISO 8601; day-first or month-first dates (``19-07-2025 10:19``), the
  order taken from the data (a value above 12) or reported as ambiguous; numbers in the epoch
  range of seconds or milliseconds as epoch times, other numbers as plain numbers.
"""
from __future__ import annotations

import dataclasses
import difflib
import re

import numpy as np
import pandas as pd

from netdiff.errors import NetdiffError

_QUOTED = re.compile(r'^"(.*)"$', re.S)
_ITEM = re.compile(r'\s*("[^"]*"|[^,]*?)\s*(?:,|$)')
# d-m-y / m-d-y / y-m-d with -, / or . between the parts, then anything (a time of day)
_DATE = re.compile(r"^\s*(\d{1,4})([-/.])(\d{1,2})\2(\d{1,4})(?!\d)")
_FULL = re.compile(r"^(\d{1,4})([-/.])(\d{1,2})\2(\d{1,4})(?:([ T_])(\d{1,2})([:.])(\d{2})(?:\7(\d{2}))?)?$")
# plausible epoch values: 1973-03-03 .. 2286-11-20 in seconds, or the same in milliseconds
EPOCH_S, EPOCH_MS = (1e8, 1e10), (1e11, 1e13)


def split_names(value: str | None) -> list[str] | None:
    """``a, "b ",c`` -> ``['a', '"b "', 'c']``: unquoted names stripped, quoted ones kept with
    their quotes (which ``resolve`` reads as "match exactly")."""
    if not value:
        return None
    out = [m.group(1) for m in _ITEM.finditer(value) if m.group(1)]
    return out or None


def closest(name: str, columns) -> str | None:
    cols = [str(c) for c in columns]
    key = name.strip().lower()
    folded = {c.strip().lower(): c for c in cols}
    hit = difflib.get_close_matches(key, list(folded), n=1, cutoff=0.5)
    return folded[hit[0]] if hit else None


def _unknown(name: str, columns, role: str) -> NetdiffError:
    near = closest(name, columns)
    hint = f"; closest: {near!r}" if near is not None else ""
    shown = ", ".join(repr(str(c)) for c in list(columns)[:30])
    return NetdiffError(f"column(s) not in the data: {name!r} ({role}{hint}; columns: {shown})")


def resolve(name: str, columns, role: str = "column") -> str:
    """The column of ``columns`` that ``name`` means (see the module docstring)."""
    cols = [str(c) for c in columns]
    m = _QUOTED.match(name)
    if m:
        if m.group(1) in cols:
            return m.group(1)
        raise _unknown(m.group(1), cols, role)
    if name in cols:
        return name
    same = [c for c in cols if c.strip() == name.strip()]
    if len(same) == 1:
        return same[0]
    if len(same) > 1:
        raise NetdiffError(f"column name {name!r} ({role}) matches {len(same)} columns after stripping spaces: "
                           f"{', '.join(repr(c) for c in same)}; quote the exact one, e.g. '\"{same[0]}\"'")
    raise _unknown(name, cols, role)


def show(name: str) -> str:
    """A column name for messages: quoted when spaces at its ends would be invisible."""
    return repr(name) if name != name.strip() or not name else name


def _numeric(s: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)


def infer_features(df: pd.DataFrame, taken: list[str], categorical: list[str]) -> tuple[list[str], list[str]]:
    """(features, ignored): numeric (or categorical-listed) columns not already taken; the
    ignored are the other free columns (text, and pandas' ``Unnamed: 0`` index columns)."""
    feats, ignored = [], []
    for c in map(str, df.columns):
        if c in taken:
            continue
        if c.startswith("Unnamed: ") or not (c in categorical or _numeric(df[c])):
            ignored.append(c)
        else:
            feats.append(c)
    return feats, ignored


def detect_time_format(values: pd.Series) -> tuple[str, str]:
    """(format for ``parse_times``, a description) of a time column under ``auto``."""
    name = values.name
    if _numeric(values):
        v = pd.to_numeric(values, errors="coerce").to_numpy(np.float64)
        v = v[np.isfinite(v)]
        med = float(np.median(np.abs(v))) if len(v) else 0.0
        if EPOCH_S[0] <= med < EPOCH_S[1]:
            return "epoch", "epoch seconds"
        if EPOCH_MS[0] <= med < EPOCH_MS[1]:
            return "epoch_ms", "epoch milliseconds"
        return "number", "plain numbers (not dates)"
    text = values.dropna().astype(str)
    if text.empty:
        raise NetdiffError(f"time column {name!r} is empty")
    try:
        pd.to_datetime(text, format="ISO8601", utc=True)
        return "iso", "ISO 8601"
    except (ValueError, TypeError):
        pass
    parts = text.str.extract(_DATE)
    if parts[0].isna().any():
        bad = text[parts[0].isna()].iloc[0]
        raise NetdiffError(f"time column {name!r}: cannot tell the date format of {bad!r}; "
                           "set --time-format (iso, dayfirst, monthfirst, epoch, epoch_ms or a strptime format)")
    first, second = parts[0].astype(int), parts[2].astype(int)
    sample = text.iloc[0]
    if (parts[0].str.len() == 4).all():
        order, dayfirst = "year-first", False
    else:
        day1, day2 = bool((first > 12).any()), bool((second > 12).any())
        if day1 and day2:
            raise NetdiffError(f"time column {name!r}: values above 12 in both the first and the second "
                               f"date field (e.g. {sample!r}); set --time-format to a strptime format")
        if not day1 and not day2:
            raise NetdiffError(f"time column {name!r}: day and month order is ambiguous (no value above 12 in "
                               f"either field, e.g. {sample!r}); set --time-format dayfirst or monthfirst")
        order, dayfirst = ("day-first", True) if day1 else ("month-first", False)
    fmt = _strptime_format(sample, order)
    if fmt is None:
        from pandas.tseries.api import guess_datetime_format

        fmt = guess_datetime_format(sample, dayfirst=dayfirst)
    if fmt is None:
        fmt = "dayfirst" if dayfirst else "monthfirst"
        return fmt, f"{order} dates"
    return fmt, f"{order} dates ({fmt})"


def _strptime_format(sample: str, order: str) -> str | None:
    """``19-07-2025 10:19`` + day-first -> ``%d-%m-%Y %H:%M`` (None for other shapes)."""
    m = _FULL.match(sample.strip())
    if not m:
        return None
    a, sep, _, c, tsep, _, colon, _, sec = m.groups()
    year = "%Y" if len(c if order != "year-first" else a) == 4 else "%y"
    date = {"year-first": ["%Y", "%m", "%d"], "day-first": ["%d", "%m", year],
            "month-first": ["%m", "%d", year]}[order]
    fmt = sep.join(date)
    if tsep:
        fmt += f"{tsep}%H{colon}%M" + (f"{colon}%S" if sec else "")
    return fmt


def resolve_roles(df: pd.DataFrame, roles, extra: tuple[str, ...] = ()) -> tuple[object, list[str]]:
    """``roles`` with every name matched to ``df``'s columns, features inferred when none are
    given and an ``auto`` time format made concrete; plus notes for the user (one line each).
    ``extra``: generated columns (the zip member name) that are never features."""
    cols = list(map(str, df.columns))
    notes: list[str] = []
    r = lambda names, role: [resolve(n, cols, role) for n in names]  # noqa: E731
    keys = r(roles.sequence_key, "sequence key")
    time = resolve(roles.time_column, cols, "time column") if roles.time_column else None
    attributes = r(roles.attributes, "attribute")
    categorical = [resolve(n, cols, "categorical") for n in roles.categorical]
    renamed = [f"{a!r} -> {b!r}" for a, b in zip(roles.sequence_key + roles.attributes + roles.categorical
                                                 + roles.features + ([roles.time_column] if time else []),
                                                 keys + attributes + categorical
                                                 + r(roles.features, "feature") + ([time] if time else []))
               if a != b and not _QUOTED.match(a)]
    if renamed:
        notes.append("matched after stripping spaces: " + ", ".join(dict.fromkeys(renamed)))
    if roles.features:
        features = r(roles.features, "feature")
    else:
        taken = keys + attributes + ([time] if time else []) + list(extra) + list(roles.path_attributes)
        features, ignored = infer_features(df, taken, categorical)
        if not features:
            raise NetdiffError("no numeric column left to use as a feature; give --features "
                               f"(columns: {', '.join(repr(c) for c in cols[:30])})")
        notes.append(f"features (every numeric column not key/time/attribute): {', '.join(map(show, features))}"
                     + (f"; ignored: {', '.join(map(show, ignored))}" if ignored else ""))
    both = set(attributes) & set(features)
    if both:
        raise NetdiffError(f"column(s) both attribute and feature: {', '.join(sorted(both))}")
    fmt = roles.time_format
    if time and fmt == "auto":
        fmt, what = detect_time_format(df[time])
        notes.append(f"time column {time!r}: {what}")
    return dataclasses.replace(roles, sequence_key=keys, time_column=time, attributes=attributes,
                               categorical=categorical, features=features, time_format=fmt), notes
