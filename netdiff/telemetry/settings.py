"""YAML configuration for telemetry: several files merge in order (later wins), then CLI options
override the ``data:`` section. Sections: ``data`` (column roles, see ``ColumnRoles``) and one
per model (``doppelganger``, ``timegan``, ``ar``, ``par``), ``evaluate`` and ``downstream``."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from netdiff.errors import NetdiffError
from netdiff.telemetry.data import ColumnRoles

SECTIONS = {"data", "doppelganger", "timegan", "ar", "par", "evaluate", "downstream"}


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


def synthetic_roles(roles: ColumnRoles, time_is_datetime: bool | None = None) -> ColumnRoles:
    """Roles that read back what ``generate`` wrote: one key column, ISO times, no reshaping."""
    return dataclasses.replace(
        roles, sequence_key=[output_sequence_column(roles)], rows_per_sequence=None,
        path_attributes={}, resample_seconds=None, window=None, stride=None, max_length=None,
        time_format="iso" if time_is_datetime else "auto",
        time_column=roles.time_column)
