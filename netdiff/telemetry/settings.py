"""YAML configuration for telemetry: several files merge in order (later wins), then CLI options
override the ``data:`` section. Sections: ``data`` (column roles, see ``ColumnRoles``) and one
per model (``doppelganger``, ``timegan``, ``ar``, ``par``, ``tvae``, ``ctgan``), ``evaluate`` and ``downstream``."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from netdiff.errors import NetdiffError
from netdiff.telemetry.data import ColumnRoles

SECTIONS = {"data", "doppelganger", "timegan", "ar", "par", "tvae", "ctgan", "evaluate", "downstream"}


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_configs(paths) -> dict:
    merged: dict = {}
    for p in paths or ():
        p = Path(p)
        try:
            doc = yaml.safe_load(p.read_text()) or {}
        except OSError as e:
            raise NetdiffError(f"{p}: cannot read config ({e.strerror})") from e
        except yaml.YAMLError as e:
            raise NetdiffError(f"{p}: invalid YAML ({str(e).splitlines()[0]})") from e
        if not isinstance(doc, dict):
            raise NetdiffError(f"{p}: a telemetry config must be a mapping of sections")
        unknown = set(doc) - SECTIONS
        if unknown:
            raise NetdiffError(f"{p}: unknown section(s) {', '.join(sorted(unknown))} "
                               f"(known: {', '.join(sorted(SECTIONS))})")
        merged = _merge(merged, doc)
    return merged


def roles_from(config: dict, **overrides) -> ColumnRoles:
    """Column roles from the ``data`` section with non-empty CLI overrides applied."""
    data = dict(config.get("data") or {})
    for k, v in overrides.items():
        if v not in (None, "", ()):
            data[k] = v
    roles = ColumnRoles.from_dict(data)
    roles.check()
    return roles


def output_sequence_column(roles: ColumnRoles) -> str:
    keys = roles.sequence_key
    if len(keys) == 1 and not roles.rows_per_sequence and keys[0] not in roles.attributes + roles.features:
        return keys[0]
    return "sequence_id"


def synthetic_roles(roles: ColumnRoles, time_is_datetime: bool | None = None,
                    header: list[str] | None = None) -> tuple[ColumnRoles, str | None]:
    """Roles that read a synthetic file against real data loaded with ``roles``, and a note.
    netdiff's own output (a sequence column, one sequence per generated window) is read as is;
    a file without that column (anyone else's generator) is one series, cut like the real data
    (``rows_per_sequence``, ``window``, ``stride``)."""
    from netdiff.telemetry.columns import resolve

    seq = output_sequence_column(roles)
    time = roles.time_column
    if time is not None and header is not None:
        try:
            resolve(time, header)
        except NetdiffError:
            time = None  # a generator that writes no time column
    if header is None or any(c.strip() == seq for c in header):
        return dataclasses.replace(
            roles, sequence_key=[seq], rows_per_sequence=None, path_attributes={}, resample_seconds=None,
            window=None, stride=None, max_length=None, time_column=time,
            time_format="iso" if time_is_datetime else "number"), None
    shape = (f"rows_per_sequence {roles.rows_per_sequence}" if roles.rows_per_sequence else
             f"window {roles.window}, stride {roles.stride or roles.window}" if roles.window else "uncut")
    note = f"no {seq!r} column: read as one series, cut like the real data ({shape})"
    out = dataclasses.replace(roles, sequence_key=[], path_attributes={}, resample_seconds=None,
                              time_column=time, time_format="auto" if time else roles.time_format)
    return out, note
