"""The one engine that applies ``protocol_rules/*.yaml``.

A protocol file declares fields (name, width, legal values or range, or how the value is
computed), an option grammar, legal flag combinations, dependencies and its checksum. This module
loads and checks those files and offers the generic operations repair and validation share:
moving generated field bits to the nearest legal value, walking an option area, checking values.
Adding a protocol is adding a file: nothing here names a protocol.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import yaml

from netdiff.bits.layout import SECTION_BITS, SECTIONS
from netdiff.errors import NetdiffError
from netdiff.rules import fields as F

RULES_ENV = "NETDIFF_RULES"
_POPCOUNT = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(axis=1).astype(np.int16)


def rules_dir() -> Path:
    """``$NETDIFF_RULES``; else ``netdiff/protocol_rules`` when an installed wheel ships the
    files inside the package; else ``protocol_rules/`` at the repository root."""
    env = os.environ.get(RULES_ENV)
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    packaged = here.parents[1] / "protocol_rules"
    return packaged if packaged.is_dir() else here.parents[2] / "protocol_rules"


@dataclass(frozen=True)
class FieldRule:
    name: str
    bits: int
    offset: int                       # first bit within the section
    values: tuple[int, ...] | None = None
    range: tuple[int, int] | None = None
    compute: str | None = None
    check: bool = True
    per: str | None = None
    prior: dict | None = field(default=None, compare=False)   # class-learnt (packet_repair/priors.py)

    def legal(self, v: np.ndarray) -> np.ndarray:
        ok = np.ones(len(v), dtype=bool)
        if self.values is not None:
            ok &= np.isin(v, self.values)
        if self.range is not None:
            ok &= (v >= self.range[0]) & (v <= self.range[1])
        return ok

    def snap(self, bits: np.ndarray) -> np.ndarray:
        """Generated (N, bits) ternary bits -> the nearest legal integer values."""
        if self.values is not None:
            return F.snap_values(bits, list(self.values))
        v = F.to_int(bits)
        if self.range is not None:
            v = F.clamp(v, *self.range)
        return v


@dataclass(frozen=True)
class OptionKind:
    kind: int
    name: str
    lengths: tuple[int, ...]          # total option lengths allowed (1 = single byte kind)
    only_with: str | None = None      # a flag field that must be set for the option to appear
    value_bits: int = 0
    value_values: tuple[int, ...] | None = None
    value_range: tuple[int, int] | None = None


@dataclass(frozen=True)
class OptionGrammar:
    max_bytes: int
    align: int
    kinds: tuple[OptionKind, ...]

    def kind(self, name: str) -> OptionKind:
        return next(k for k in self.kinds if k.name == name)


@dataclass(frozen=True)
class ProtocolRules:
    protocol: str
    section: str
    layer: int
    bind: dict
    header: dict
    fields: tuple[FieldRule, ...]
    options: OptionGrammar | None = None
    flags: dict | None = None
    dependencies: tuple[dict, ...] = ()
    checksum: dict | None = None
    types: tuple[dict, ...] = ()
    ports: tuple[str, ...] = ()
    path: str = field(default="", compare=False)
    prior: dict = field(default_factory=dict, compare=False)    # protocol-level class priors

    def field(self, name: str) -> FieldRule:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"{self.protocol} has no field {name!r}")

    def column(self, name: str) -> str:
        """The nPrint field name (``tcp_doff``) of one of this protocol's fields."""
        return f"{self.section}_{name}"

    @property
    def number(self) -> int | None:
        """The IP protocol number binding this protocol (layer 4), if any."""
        for k, v in self.bind.items():
            if k.endswith(".proto") or k.endswith(".nh"):
                return int(v)
        return None

    def flag_table(self) -> tuple[list[str], np.ndarray]:
        """(flag field names, (k, n_flags) 0/1 table of the legal combinations)."""
        names = list(self.flags["fields"])
        table = np.array([[int(n in combo) for n in names] for combo in self.flags["legal"]],
                         dtype=np.int8)
        return names, table

    def icmp_pairs(self) -> np.ndarray:
        """(k, 2) legal (type, code) pairs, in the file's order."""
        return np.array([(t["type"], c) for t in self.types for c in t["codes"]], dtype=np.int64)


def _bad(path, msg):
    raise NetdiffError(f"{path}: {msg}")


def _parse(path: Path) -> ProtocolRules:
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        _bad(path, f"not valid YAML ({e.__class__.__name__})")
    if not isinstance(doc, dict) or "protocol" not in doc or "fields" not in doc:
        _bad(path, "a protocol file needs 'protocol' and 'fields'")
    section = doc.get("section", doc["protocol"])
    if section not in SECTIONS:
        _bad(path, f"section {section!r} is not an nPrint section ({', '.join(SECTIONS)})")
    rules, pos = [], 0
    for f in doc["fields"]:
        try:
            fr = FieldRule(name=str(f["name"]), bits=int(f["bits"]), offset=pos,
                           values=tuple(int(v) for v in f["values"]) if "values" in f else None,
                           range=tuple(int(v) for v in f["range"]) if "range" in f else None,
                           compute=f.get("compute"), check=bool(f.get("check", True)),
                           per=f.get("per"), prior=_prior_entry(path, f.get("prior")))
        except (KeyError, TypeError, ValueError) as e:
            _bad(path, f"bad field entry {f!r} ({e})")
        if fr.values is not None and any(v < 0 or v >= 1 << fr.bits for v in fr.values):
            _bad(path, f"field {fr.name}: a legal value does not fit {fr.bits} bits")
        rules.append(fr)
        pos += fr.bits
    expected = [(n, w) for n, w in SECTIONS[section]]
    got = [(f"{section}_{r.name}", r.bits) for r in rules]
    if got != expected:
        _bad(path, f"fields {got} do not match the nPrint section {section} "
                   f"({SECTION_BITS[section]} bits: {expected})")
    options = None
    if "options" in doc:
        o = doc["options"]
        kinds = []
        for k in o["kinds"]:
            ln = k["length"]
            v = k.get("value") or {}
            kinds.append(OptionKind(
                kind=int(k["kind"]), name=str(k["name"]),
                lengths=tuple(int(x) for x in (ln if isinstance(ln, list) else [ln])),
                only_with=k.get("only_with"), value_bits=int(v.get("bits", 0)),
                value_values=tuple(v["values"]) if "values" in v else None,
                value_range=tuple(v["range"]) if "range" in v else None))
        options = OptionGrammar(int(o["max_bytes"]), int(o.get("align", 1)), tuple(kinds))
    return ProtocolRules(
        protocol=str(doc["protocol"]), section=section, layer=int(doc.get("layer", 0)),
        bind=dict(doc.get("bind", {})), header=dict(doc.get("header", {})), fields=tuple(rules),
        options=options, flags=doc.get("flags"), dependencies=tuple(doc.get("dependencies", ())),
        checksum=doc.get("checksum"), types=tuple(doc.get("types", ())),
        ports=tuple(doc.get("ports", ())), path=str(path),
        prior={k: e for k, v in (doc.get("prior") or {}).items()
               if (e := _prior_entry(path, v)) is not None})


def _prior_entry(path, v) -> dict | None:
    """A ``prior:`` entry: ``true`` or a mapping (kind, by, per, ...); see packet_repair/priors.py."""
    if v is None or v is False:
        return None
    if v is True:
        return {}
    if not isinstance(v, dict):
        _bad(path, f"prior entry {v!r} must be true or a mapping")
    return dict(v)


@lru_cache(maxsize=4)
def _load(directory: str) -> dict[str, ProtocolRules]:
    d = Path(directory)
    files = sorted(d.glob("*.yaml"))
    if not files:
        raise NetdiffError(f"{d}: no protocol rule files (*.yaml); set {RULES_ENV} to the "
                           "protocol_rules folder")
    out = {}
    for p in files:
        r = _parse(p)
        out[r.protocol] = r
    return out


def load_rules(directory=None) -> dict[str, ProtocolRules]:
    """Every protocol file of the rules folder, by protocol name (parsed once, then cached)."""
    return _load(str(directory or rules_dir()))


# --- option areas -------------------------------------------------------------------------------

def walk_options(grammar: OptionGrammar, vals: np.ndarray, optlen: np.ndarray,
                 flags: dict[str, np.ndarray], keep_unknown: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Walk every row's option area at once and return (repaired bytes, changed per row).

    At each cursor the generated kind byte moves to the nearest kind (Hamming distance) among
    those that fit the room left and whose ``only_with`` flag is set; a variable length moves
    to the nearest allowed length that fits; values move into their declared range. After EOL
    everything is zero. ``keep_unknown`` keeps kinds the grammar does not list when their
    length byte is sane (RFC 9293 3.1: receivers skip unknown options): the checker's mode.
    """
    n, width = vals.shape
    col = np.arange(width)
    inside = col[None, :] < optlen[:, None]
    out = np.where(inside, vals, 0).astype(np.uint8)
    kinds = grammar.kinds
    K = len(kinds)
    kcodes = np.array([k.kind for k in kinds], dtype=np.int64)
    kmin = np.array([min(k.lengths) for k in kinds], dtype=np.int64)
    single = np.array([k.lengths == (1,) for k in kinds])
    eol = np.array([k.kind == 0 for k in kinds])
    # Hamming distance of every byte value to every kind: a (256, K) table.
    dist_table = _POPCOUNT[np.arange(256)[:, None] ^ kcodes[None, :]].astype(np.int64)
    flag_cols = [(j, flags[k.only_with]) for j, k in enumerate(kinds) if k.only_with is not None]
    known = np.zeros(256, dtype=bool)
    known[kcodes] = True
    cursor = np.zeros(n, dtype=np.int64)
    r = np.flatnonzero(optlen > 0)
    while len(r):
        cur = cursor[r]
        room = optlen[r] - cur
        gen_kind = out[r, cur]
        gen_len = np.where(room > 1, out[r, np.minimum(cur + 1, width - 1)], 0).astype(np.int64)
        dist = dist_table[gen_kind]
        allowed = kmin[None, :] <= room[:, None]
        for j, fl in flag_cols:
            allowed[:, j] &= fl[r].astype(bool)
        pick = np.argmin(np.where(allowed, dist, 1 << 20), axis=1)
        length = kmin[pick].copy()
        if keep_unknown:
            sane = ~known[gen_kind] & (gen_len >= 2) & (gen_len <= room)
        else:
            sane = np.zeros(len(r), dtype=bool)
        fix = ~sane
        out[r[fix], cur[fix]] = kcodes[pick[fix]]
        for j, k in enumerate(kinds):
            if single[j] or not k.value_bits and len(k.lengths) == 1:
                continue
            m = fix & (pick == j)
            if not m.any():
                continue
            rr, cc = r[m], cur[m]
            if len(k.lengths) > 1:
                opts = np.array(k.lengths, dtype=np.int64)
                d = np.abs(gen_len[m][:, None] - opts[None, :])
                d = np.where(opts[None, :] <= room[m][:, None], d, 1 << 20)
                length[m] = opts[np.argmin(d, axis=1)]
            if k.value_bits:
                nb = k.value_bits // 8
                v = np.zeros(len(rr), dtype=np.int64)
                for b in range(nb):
                    v = (v << 8) | out[rr, cc + 2 + b]
                if k.value_values is not None:
                    v = np.asarray(k.value_values, dtype=np.int64)[
                        F.nearest(F.to_bits(v, k.value_bits), list(k.value_values))]
                if k.value_range is not None:
                    v = np.clip(v, *k.value_range)
                for b in range(nb):
                    out[rr, cc + 2 + b] = (v >> (8 * (nb - 1 - b))) & 0xFF
        multi = fix & ~single[pick]
        out[r[multi], cur[multi] + 1] = length[multi]
        ends = fix & eol[pick]                 # EOL: the rest of the area is padding
        if ends.any():
            re_, ce = r[ends], cur[ends]
            out[re_] = np.where(col[None, :] > ce[:, None], 0, out[re_])
            length[ends] = room[ends]
        length[sane] = gen_len[sane]
        cursor[r] = cur + length
        r = r[cursor[r] < optlen[r]]
    changed = np.any((out != vals) & inside, axis=1)
    return out, changed


def options_length_from_coverage(present_share: np.ndarray, grammar: OptionGrammar) -> np.ndarray:
    """Option bytes a row's generated structure asks for: bytes whose bits are mostly not fill,
    rounded to the grammar's alignment."""
    nbytes = (present_share >= 0.5).sum(axis=1)
    a = grammar.align
    return np.minimum((np.rint(nbytes / a).astype(np.int64)) * a, grammar.max_bytes)


# --- flags and ICMP types -----------------------------------------------------------------------

def snap_flags(rules: ProtocolRules, flag_bits: np.ndarray) -> np.ndarray:
    """(N, n_flags) ternary bits of ``rules.flags['fields']`` -> nearest legal 0/1 combination."""
    _, table = rules.flag_table()
    ones = (flag_bits == 1).astype(np.int32)
    zeros = (flag_bits == 0).astype(np.int32)
    t = table.astype(np.int32)
    dist = ones @ (1 - t).T + zeros @ t.T
    return table[np.argmin(dist, axis=1)]


def flags_legal(rules: ProtocolRules, flags: np.ndarray) -> np.ndarray:
    _, table = rules.flag_table()
    return np.any(np.all(flags[:, None, :] == table[None, :, :], axis=2), axis=1)


def snap_icmp(rules: ProtocolRules, type_code_bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 16) ternary bits of type+code -> nearest legal (type, code)."""
    pairs = rules.icmp_pairs()
    idx = F.nearest(type_code_bits, (pairs[:, 0] << 8) | pairs[:, 1])
    return pairs[idx, 0], pairs[idx, 1]


def icmp_type_info(rules: ProtocolRules) -> dict[int, dict]:
    return {int(t["type"]): t for t in rules.types}
