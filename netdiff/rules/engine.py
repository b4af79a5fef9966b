"""The one engine that applies ``protocol_rules/*.yaml``.

A protocol file declares fields (name, width; legal values or range, or the registered
computation that fills them), an option grammar, legal flag combinations, dependencies, its
checksum and how a lower layer binds it. This module loads and checks those files and offers the
generic operations repair and validation share: moving generated field bits to the nearest legal
value, walking an option area, applying and checking dependencies. Adding a protocol is adding a
file: nothing here names a protocol.

Every key a file may hold is declared in ``SCHEMA``; an unknown key (a typo like ``rnage:``) is
an error when loading. The loaded objects record which keys the code reads (``unused_keys``), so
a test can show that no key of the shipped files is parsed and then ignored.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

import numpy as np
import yaml

from netdiff.bits.fields import FIXED_BYTES, LENGTH_FIELDS, PROTO_SECTIONS, VERSION_SECTIONS
from netdiff.bits.layout import SECTION_BITS, SECTIONS
from netdiff.errors import NetdiffError
from netdiff.rules import compute as CR
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


# --- the file format ----------------------------------------------------------------------------

LEAF = None             # a value (scalar or list) the parser checks itself
DATA = "data"           # a mapping whose keys are values (ICMP codes), not names
BIND = "bind"           # ethertype / version (layer 3), or "<protocol>.<field>" (a next_protocol field)
SCHEMA = {
    "protocol": LEAF, "section": LEAF, "layer": LEAF, "bind": BIND, "ports": LEAF,
    "header": {"max_total_length": LEAF},
    "fields": [{"name": LEAF, "bits": LEAF, "values": LEAF, "range": LEAF, "compute": LEAF,
                "check": LEAF, "per": LEAF, "hold": LEAF, "prior": {"kind": LEAF, "by": LEAF, "per": LEAF}}],
    "options": {"max_bytes": LEAF, "align": LEAF,
                "kinds": [{"kind": LEAF, "name": LEAF, "length": LEAF, "only_with": LEAF,
                           "value": {"bits": LEAF, "values": LEAF, "range": LEAF}, "compute": LEAF,
                           "echo_with": LEAF}]},
    "flags": {"fields": LEAF, "legal": LEAF},
    "session": {"open": {"flag": LEAF, "client": LEAF, "server": LEAF, "refused": LEAF}, "established": LEAF,
                "close": LEAF, "reset": LEAF, "no_payload": LEAF, "answer_clears": LEAF},
    "dependencies": [{"field": LEAF, "zero_unless": LEAF, "within_payload": LEAF, "requires": LEAF,
                      "requires_payload": LEAF, "check": LEAF}],
    "checksum": {"field": LEAF, "covers": LEAF, "pseudo_header": LEAF, "zero_becomes": LEAF,
                 "optional_over": LEAF},
    "types": [{"type": LEAF, "codes": LEAF, "request": LEAF, "rest": LEAF, "rest_by_code": DATA,
               "body": LEAF}],
    "prior": {"payload": {"by": LEAF, "empty": LEAF, "repeat": LEAF, "scripts": LEAF}, "flags": {"fields": LEAF, "fixed": LEAF},
              "options": {"by": LEAF, "per": LEAF, "values": LEAF}},
}
# A field held per flow direction keeps the median of the direction's generated values (numbers:
# TTL) or its first row's value (categories: a central value favours the commonest, and 72% of
# generated rows with DF set became 85% of directions by majority).
HOLDS = ("median", "first")
BIND_KEYS = ("ethertype", "version")
DERIVED_HEADER_KEYS = ("fixed_bytes", "length_field", "length_unit", "options_field")   # header_shape
COVERS = ("header", "segment")      # this protocol's header, or its header and all it carries
DEPENDENCY_KINDS = ("zero_unless", "requires", "requires_payload")


def _check_keys(path, node, schema, where: str, present: set, label: str = "") -> None:
    """Unknown keys are errors; every key path found is added to ``present`` (lists as ``[]``;
    ``label`` names the entry in messages: ``fields[4] (id).prior``)."""
    if schema is LEAF or schema == DATA:
        present.add(where)
        return
    if schema == BIND:
        if not isinstance(node, dict):
            _bad(path, f"{where} must be a mapping")
        for k in node:
            if k not in BIND_KEYS and not (isinstance(k, str) and k.count(".") == 1):
                _bad(path, f"unknown key {k!r} in {where} (allowed: {', '.join(BIND_KEYS)}, "
                           "<protocol>.<field>)")
            present.add(f"{where}.{k}")
        return
    if isinstance(schema, list):
        if not isinstance(node, list):
            _bad(path, f"{where} must be a list")
        for i, item in enumerate(node):
            item_label = f"{label}[{i}]" + \
                (f" ({item['name']})" if isinstance(item, dict) and "name" in item else "")
            if not isinstance(item, dict):
                _bad(path, f"{item_label} must be a mapping")
            _walk_mapping(path, item, schema[0], item_label, f"{where}[]", present)
        return
    if not isinstance(node, dict):          # ``prior: true`` where a mapping is also allowed
        present.add(where)
        return
    _walk_mapping(path, node, schema, label, where, present)


def _walk_mapping(path, node: dict, schema: dict, label: str, where: str, present: set) -> None:
    for k, v in node.items():
        if k not in schema:
            derived = " (header lengths come from the field table, bits/fields.py)" \
                if where == "header" and k in DERIVED_HEADER_KEYS else ""
            _bad(path, f"unknown key {k!r} in {label or 'the file'} "
                       f"(allowed: {', '.join(sorted(schema))}){derived}")
        _check_keys(path, v, schema[k], f"{where}.{k}" if where else k, present,
                    f"{label}.{k}" if label else k)


class RuleMap(Mapping):
    """A mapping read from a rule file that records the keys code reads (``unused_keys``)."""

    __slots__ = ("_data", "_where", "_used")

    def __init__(self, data: dict, where: str, used: set):
        self._data, self._where, self._used = data, where, used

    def __getitem__(self, key):
        self._used.add(self._where + str(key))
        return self._data[key]

    def __contains__(self, key):
        self._used.add(self._where + str(key))
        return key in self._data

    def __iter__(self):
        return iter(self._data)

    def __len__(self):
        return len(self._data)

    def __repr__(self):
        return repr(self._data)


def _recorded(value, schema, where: str, used: set):
    """``value`` with its mappings (those the schema names keys of) wrapped as RuleMaps."""
    if isinstance(schema, list) and isinstance(value, list):
        return tuple(_recorded(v, schema[0], f"{where}[]", used) for v in value)
    if isinstance(schema, dict) and isinstance(value, dict):
        return RuleMap({k: _recorded(v, schema.get(k), f"{where}.{k}", used) for k, v in value.items()},
                       where + ".", used)
    if schema == BIND and isinstance(value, dict):
        return RuleMap(dict(value), where + ".", used)
    return value


class _Recorder:
    """Attribute reads of the listed attributes mark their file keys as used."""

    KEYS: ClassVar[dict[str, str]] = {}

    def __getattribute__(self, name):
        key = type(self).KEYS.get(name)
        if key is not None:
            object.__getattribute__(self, "used").add(object.__getattribute__(self, "where") + key)
        return object.__getattribute__(self, name)


# --- loaded rules -------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class FieldRule(_Recorder):
    name: str
    bits: int
    offset: int                       # first bit within the section
    values: tuple[int, ...] | None = None
    range: tuple[int, int] | None = None
    compute: str | None = None
    check: bool = True
    per: str | None = None            # "direction": one value per flow direction
    hold: str = "median"              # which generated value the direction keeps (HOLDS)
    prior: Mapping | None = None      # class-learnt (packet_repair/priors.py)
    used: set = field(default_factory=set, repr=False)
    where: str = field(default="fields[].", repr=False)
    KEYS: ClassVar[dict[str, str]] = {k: k for k in ("name", "bits", "values", "range", "compute",
                                                      "check", "per", "hold", "prior")}

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


@dataclass(frozen=True, eq=False)
class OptionKind(_Recorder):
    kind: int
    name: str
    lengths: tuple[int, ...]          # total option lengths allowed (1 = single byte kind)
    only_with: str | None = None      # a flag field that must be set for the option to appear
    value_bits: int = 0
    value_values: tuple[int, ...] | None = None
    value_range: tuple[int, int] | None = None
    compute: str | None = None        # a registered computation fills the option's value
    echo_with: str | None = None      # a flag field without which the option echoes nothing
    used: set = field(default_factory=set, repr=False)
    where: str = field(default="options.kinds[].", repr=False)
    KEYS: ClassVar[dict[str, str]] = {"kind": "kind", "name": "name", "lengths": "length",
                                      "only_with": "only_with", "value_bits": "value.bits",
                                      "value_values": "value.values", "value_range": "value.range",
                                      "compute": "compute", "echo_with": "echo_with"}


@dataclass(frozen=True, eq=False)
class OptionGrammar(_Recorder):
    max_bytes: int
    align: int
    kinds: tuple[OptionKind, ...]
    used: set = field(default_factory=set, repr=False)
    where: str = field(default="options.", repr=False)
    KEYS: ClassVar[dict[str, str]] = {"max_bytes": "max_bytes", "align": "align"}

    def kind(self, name: str) -> OptionKind:
        return next(k for k in self.kinds if k.name == name)

    def flag_names(self) -> list[str]:
        """The flag fields some kind's ``only_with`` needs (walk_options' ``flags`` keys)."""
        return sorted({k.only_with for k in self.kinds if k.only_with is not None})


@dataclass(frozen=True, eq=False)
class ProtocolRules(_Recorder):
    protocol: str
    section: str
    layer: int
    bind: Mapping
    header: Mapping
    fields: tuple[FieldRule, ...]
    options: OptionGrammar | None = None
    flags: Mapping | None = None
    session: Mapping | None = None      # where a connection's control flags sit in a trace
    dependencies: tuple[Mapping, ...] = ()
    checksum: Mapping | None = None
    types: tuple[Mapping, ...] = ()
    ports: tuple[str, ...] = ()
    path: str = ""
    prior: Mapping = field(default_factory=dict)    # protocol-level class priors
    used: set = field(default_factory=set, repr=False)
    present: frozenset = field(default=frozenset(), repr=False)    # key paths the file holds
    where: str = field(default="", repr=False)
    KEYS: ClassVar[dict[str, str]] = {k: k for k in ("section", "layer", "ports")}

    def field(self, name: str) -> FieldRule:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"{self.protocol} has no field {name!r}")

    def column(self, name: str) -> str:
        """The nPrint field name (``tcp_doff``) of one of this protocol's fields."""
        return f"{self.section}_{name}"

    def computed(self, name: str) -> FieldRule | None:
        """The field whose rule is ``compute: name``, if any."""
        return next((f for f in self.fields if f.compute == name), None)

    @property
    def number(self) -> int | None:
        """The number a lower layer's next_protocol field holds for this protocol (its bind
        entries agree, checked when loading), if any."""
        for k, v in self.bind.items():
            if "." in k:
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


def unused_keys(pr: ProtocolRules) -> list[str]:
    """Key paths of ``pr``'s file that no code has read since it was loaded (containers count
    through their keys)."""
    return sorted(k for k in pr.present if k not in pr.used)


def _bad(path, msg):
    raise NetdiffError(f"{path}: {msg}")


def _parse(path: Path) -> ProtocolRules:
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        _bad(path, f"not valid YAML ({e.__class__.__name__})")
    if not isinstance(doc, dict) or "protocol" not in doc or "fields" not in doc:
        _bad(path, "a protocol file needs 'protocol' and 'fields'")
    present: set = set()
    _check_keys(path, doc, SCHEMA, "", present)
    used = {"protocol"}             # the loader's own: the key of the loaded rules
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
                           per=f.get("per"), hold=str(f.get("hold", "median")),
                           prior=_recorded(_prior_entry(path, f.get("prior")),
                                           SCHEMA["fields"][0]["prior"], "fields[].prior", used),
                           used=used)
        except (KeyError, TypeError, ValueError) as e:
            _bad(path, f"bad field entry {f!r} ({e})")
        if fr.per not in (None, "direction"):
            _bad(path, f"field {fr.name}: per must be direction, not {fr.per!r}")
        if fr.hold not in HOLDS or ("hold" in f and fr.per is None):
            _bad(path, f"field {fr.name}: hold must be one of {', '.join(HOLDS)}, with per: direction")
        if fr.values is not None and any(v < 0 or v >= 1 << fr.bits for v in fr.values):
            _bad(path, f"field {fr.name}: a legal value does not fit {fr.bits} bits")
        if fr.compute is not None and (CR.computation(fr.compute) is None or CR.computation(fr.compute).option):
            _bad(path, f"field {fr.name}: unknown compute {fr.compute!r} (field computations in "
                       f"netdiff/rules/compute.py: "
                       f"{', '.join(c.name for c in CR.REGISTRY.values() if not c.option)})")
        rules.append(fr)
        pos += fr.bits
    expected = [(n, w) for n, w in SECTIONS[section]]
    got = [(f"{section}_{r.name}", r.bits) for r in rules]
    if got != expected:
        _bad(path, f"fields {got} do not match the nPrint section {section} "
                   f"({SECTION_BITS[section]} bits: {expected})")
    names = {r.name for r in rules}
    options = None
    if "options" in doc:
        o = doc["options"]
        kinds = []
        try:
            for k in o["kinds"]:
                ln = k["length"]
                v = k.get("value") or {}
                kinds.append(OptionKind(
                    kind=int(k["kind"]), name=str(k["name"]),
                    lengths=tuple(int(x) for x in (ln if isinstance(ln, list) else [ln])),
                    only_with=k.get("only_with"), value_bits=int(v.get("bits", 0)),
                    value_values=tuple(v["values"]) if "values" in v else None,
                    value_range=tuple(v["range"]) if "range" in v else None,
                    compute=k.get("compute"), echo_with=k.get("echo_with"), used=used))
            options = OptionGrammar(int(o["max_bytes"]), int(o.get("align", 1)), tuple(kinds),
                                    used=used)
        except (KeyError, TypeError, ValueError) as e:
            _bad(path, f"bad option grammar ({e})")
        for j, k in enumerate(kinds):
            # names and kind numbers are identifiers (priors and OptionGrammar.kind refer to
            # kinds by name): each once per grammar
            if any(k.name == o.name or k.kind == o.kind for o in kinds[:j]):
                _bad(path, f"option {k.name} ({k.kind}): name or kind number listed twice")
            if k.only_with is not None and k.only_with not in names:
                _bad(path, f"option {k.name}: only_with {k.only_with!r} is not a field")
            if k.echo_with is not None and k.echo_with not in names:
                _bad(path, f"option {k.name}: echo_with {k.echo_with!r} is not a field")
            if k.compute is not None:
                c = CR.computation(k.compute)
                if c is None or not c.option:
                    _bad(path, f"option {k.name}: unknown compute {k.compute!r} (option computations "
                               f"in netdiff/rules/compute.py: "
                               f"{', '.join(c.name for c in CR.REGISTRY.values() if c.option)})")
                if c.option_length and k.lengths != (c.option_length,):
                    _bad(path, f"option {k.name}: compute {k.compute} writes an option of "
                               f"{c.option_length} bytes, not {'/'.join(map(str, k.lengths))}")
    for d in doc.get("dependencies", ()):
        kinds_ = [k for k in DEPENDENCY_KINDS if k in d]
        if d.get("field") not in names or len(kinds_) != 1:
            _bad(path, f"dependency {d!r} needs a field and one of {', '.join(DEPENDENCY_KINDS)}")
        gate = d.get("zero_unless", d.get("requires"))
        if isinstance(gate, str) and gate not in names:
            _bad(path, f"dependency {d!r}: {gate!r} is not a field")
        if "within_payload" in d and "zero_unless" not in d:
            _bad(path, f"dependency {d!r}: within_payload goes with zero_unless")
    ck = doc.get("checksum")
    if ck is not None:
        if ck.get("field") not in names or ck.get("covers") not in COVERS or \
                not isinstance(ck.get("pseudo_header"), bool):
            _bad(path, "checksum needs field (a field of the file), covers "
                       f"({' or '.join(COVERS)}) and pseudo_header (true/false)")
        cf = next(r for r in rules if r.name == ck["field"])
        if cf.bits != 16 or cf.offset % 8:
            _bad(path, f"checksum field {cf.name} must be 16 bits on a byte boundary")
    for key in ("ports",):
        for nm in doc.get(key, ()):
            if nm not in names:
                _bad(path, f"{key}: {nm!r} is not a field")
    return ProtocolRules(
        protocol=str(doc["protocol"]), section=section, layer=int(doc.get("layer", 0)),
        bind=_recorded(doc.get("bind", {}), BIND, "bind", used),
        header=_recorded({**header_shape(section), **doc.get("header", {})}, SCHEMA["header"],
                         "header", used),
        fields=tuple(rules), options=options,
        flags=_recorded(doc.get("flags"), SCHEMA["flags"], "flags", used),
        session=_recorded(_session(path, doc.get("session"), {r.name: r.bits for r in rules}),
                          SCHEMA["session"], "session", used),
        dependencies=_recorded(list(doc.get("dependencies", ())), SCHEMA["dependencies"],
                               "dependencies", used),
        checksum=_recorded(ck, SCHEMA["checksum"], "checksum", used),
        types=_recorded(list(doc.get("types", ())), SCHEMA["types"], "types", used),
        ports=tuple(doc.get("ports", ())), path=str(path),
        prior=_recorded({k: e for k, v in (doc.get("prior") or {}).items()
                         if (e := _prior_entry(path, v)) is not None}, SCHEMA["prior"], "prior", used),
        used=used, present=frozenset(present))


def _session(path, s, bits: dict) -> dict | None:
    """A ``session:`` block: every name it gives is a one-bit field of the file."""
    if s is None:
        return None
    o = s.get("open") or {}
    names = [o.get("flag"), *o.get("client", ()), *o.get("server", ()), *o.get("refused", ()),
             *s.get("established", ()),
             s.get("close"), s.get("reset"), *s.get("no_payload", ()), *s.get("answer_clears", ())]
    for nm in names:
        if bits.get(nm) != 1:
            _bad(path, f"session: {nm!r} is not a one-bit field of the file")
    return s


def header_shape(section: str) -> dict:
    """How long a section's header is, from the field table (``bits/fields.py``), never restated
    in a rule file: ``fixed_bytes``, and for headers that say their own length the field that
    says it (``length_field``, counting ``length_unit`` bytes) and the ``options_field`` it covers
    beyond the fixed part. A rule file's ``header:`` holds only rules (``max_total_length``)."""
    out = {"fixed_bytes": FIXED_BYTES[section]}
    if section in LENGTH_FIELDS:
        length, unit, options = LENGTH_FIELDS[section]
        cut = len(section) + 1
        out.update(length_field=length[cut:], length_unit=unit, options_field=options[cut:])
    return out


def _prior_entry(path, v) -> dict | None:
    """A ``prior:`` entry: ``true`` or a mapping (kind, by, per, ...); see packet_repair/priors.py."""
    if v is None or v is False:
        return None
    if v is True:
        return {}
    if not isinstance(v, dict):
        _bad(path, f"prior entry {v!r} must be true or a mapping")
    return dict(v)


def _check_bindings(rules: dict[str, ProtocolRules]) -> None:
    """``bind`` entries name a lower protocol's next_protocol field; a protocol's numbers agree
    and no two protocols share one under the same field."""
    taken: dict[tuple[str, int], str] = {}
    for pr in rules.values():
        raw = pr.bind._data
        numbers = set()
        for k, v in raw.items():
            if "." not in k:
                continue
            lower, fld = k.split(".")
            low = rules.get(lower)
            fr = next((f for f in low.fields if f.name == fld), None) if low else None
            if fr is None or fr.compute != "next_protocol":
                _bad(pr.path, f"bind {k}: {lower!r} has no field {fld!r} with compute: next_protocol")
            if not isinstance(v, int) or not 0 <= v < 1 << fr.bits:
                _bad(pr.path, f"bind {k}: {v!r} is not a {fr.bits}-bit number")
            if taken.setdefault((k, v), pr.protocol) != pr.protocol:
                _bad(pr.path, f"bind {k}: {v} is already {taken[(k, v)]}'s")
            numbers.add(v)
        if len(numbers) > 1:
            _bad(pr.path, f"bind: one protocol number for every lower layer, not {sorted(numbers)}")
        # The encoder finds a section by these numbers (bits/fields.py): a bind that disagrees
        # would make repair write packets that read back as another protocol.
        table, number = (PROTO_SECTIONS, pr.number) if pr.layer == 4 else \
            (VERSION_SECTIONS, raw.get("version")) if pr.layer == 3 else (None, None)
        if table is not None and pr.section in table.values() and table.get(number) != pr.section:
            want = next(k for k, s in table.items() if s == pr.section)
            _bad(pr.path, f"bind: the field table reads section {pr.section} under number {want} "
                          f"(bits/fields.py), not {number}")


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
    _check_bindings(out)
    return out


def load_rules(directory=None) -> dict[str, ProtocolRules]:
    """Every protocol file of the rules folder, by protocol name (parsed once, then cached)."""
    return _load(str(directory or rules_dir()))


def layer_protocols(rules: dict, layer: int) -> dict[int, str]:
    """{IP version: protocol} for layer 3 (``bind: version``), {protocol number: protocol} for
    layer 4 (``bind: ipv4.proto`` ...)."""
    out = {}
    for name, pr in rules.items():
        if pr.layer == layer == 3 and "version" in pr.bind:
            out[int(pr.bind["version"])] = name
        elif pr.layer == layer == 4 and pr.number is not None:
            out[pr.number] = name
    return out


def bound_number(rules: dict, lower: str, upper: str) -> int | None:
    """The number ``lower``'s next_protocol field holds for ``upper`` (``upper``'s ``bind``), or
    None where ``upper`` does not bind itself to ``lower``."""
    nf = rules[lower].computed("next_protocol")
    v = rules[upper].bind.get(f"{lower}.{nf.name}") if nf is not None else None
    return None if v is None else int(v)


def icmp_requests(rules: ProtocolRules) -> list[int]:
    """Types marked ``request: true``: sent client -> server (the others answer or report)."""
    return [int(t["type"]) for t in rules.types if t.get("request", False)]


# --- payload templates --------------------------------------------------------------------------
#
# ``protocol_rules/payloads/*.yaml``: what repair writes after the transport header, per port.
# A template is a message in wire order; exactly one entry (``fill``) takes the bytes the
# generated length leaves, and ``compute:`` entries (registered in rules/compute.py, phase
# ``length``) are filled from the lengths once the row's length is known.

PAYLOAD_SCHEMA = {
    "about": LEAF,
    "templates": [{"name": LEAF, "transport": LEAF, "ports": LEAF, "sent_by": LEAF, "default": LEAF, "empty": LEAF,
                   "min_length": LEAF, "max_length": LEAF, "grow_below": LEAF, "step": LEAF,
                   "message": [{"name": LEAF, "bytes": LEAF, "value": LEAF, "hex": LEAF,
                                "text": LEAF, "compute": LEAF, "covers": LEAF, "fill": LEAF,
                                "chunks": LEAF}]}],
}
PAYLOAD_CONTENT = ("value", "hex", "text", "compute", "fill")     # one per message entry
WHOLE_MESSAGE = "message"       # ``covers: message``: a length of the whole payload
# ``sent_by``: a template for the rows sent to its ports (``client``: a query), from them
# (``server``: an answer) or both ways (``any``, the default)
SENDERS = ("any", "client", "server")


@dataclass(frozen=True, eq=False)      # loaded once; identity is equality (cheap cache keys)
class MessagePart:
    """One entry of a template's message: ``data`` fixed bytes, or a computed length
    (``compute``, ``width`` bytes, over ``covers``), or the fill (``fill`` pattern, optionally
    cut into ``chunks``-byte character strings each led by its length)."""
    name: str
    data: bytes = b""
    compute: str | None = None
    width: int = 0
    covers: tuple[str, ...] = ()      # entry names (or WHOLE_MESSAGE); () = all after this one
    fill: bytes = b""
    chunks: int = 0


@dataclass(frozen=True, eq=False)
class PayloadTemplate:
    name: str
    transports: tuple[str, ...]
    ports: tuple[int, ...]
    parts: tuple[MessagePart, ...]
    min_length: int                   # shortest payload the message fits (and tshark accepts)
    max_length: int | None
    grow_below: int                   # shorter payloads are lengthened to min_length
    step: int                         # the fill's size is a multiple of it (lengths grow to one)
    default: bool
    empty: bool                       # no payload at all: no content measured passes
    path: str
    sent_by: str = "any"              # SENDERS: which way a row goes for this message

    @property
    def fixed(self) -> int:
        """Bytes of every part but the fill."""
        return sum(len(p.data) + p.width for p in self.parts)


def _message_part(path, name, e: dict) -> MessagePart:
    where = f"template {name}: message entry {e.get('name')!r}"
    kinds = [k for k in PAYLOAD_CONTENT if k in e]
    if "name" not in e or len(kinds) != 1:
        _bad(path, f"{where} needs a name and one of {', '.join(PAYLOAD_CONTENT)}")
    kind = kinds[0]
    try:
        if kind == "value":
            width = int(e["bytes"])
            return MessagePart(e["name"], data=int(e["value"]).to_bytes(width, "big"))
        if kind == "hex":
            return MessagePart(e["name"], data=bytes.fromhex(str(e["hex"])))
        if kind == "text":
            return MessagePart(e["name"], data=str(e["text"]).encode("latin-1"))
        if kind == "compute":
            c = CR.computation(e["compute"])
            if c is None or c.stage != "bodies" or c.phase != "length":
                _bad(path, f"{where}: unknown length computation {e['compute']!r}")
            covers = e.get("covers", ())
            return MessagePart(e["name"], compute=e["compute"], width=int(e["bytes"]),
                               covers=(covers,) if isinstance(covers, str) else tuple(covers))
        fill = e["fill"]
        pattern = bytes([int(fill)]) if isinstance(fill, int) else str(fill).encode("latin-1")
        if not pattern:
            _bad(path, f"{where}: an empty fill")
        return MessagePart(e["name"], fill=pattern, chunks=int(e.get("chunks", 0)))
    except (KeyError, TypeError, ValueError, OverflowError) as err:
        _bad(path, f"{where}: {err.__class__.__name__}: {err}")


def payload_template(path, t: dict) -> PayloadTemplate:
    """One template entry of a payload file (``path`` names it in errors)."""
    name = str(t.get("name"))
    parts = tuple(_message_part(path, name, e) for e in t.get("message") or ())
    if sum(bool(p.fill) for p in parts) != (0 if t.get("empty", False) else 1):
        _bad(path, f"template {name}: exactly one message entry must be the fill (none, and no "
                   "message, with empty: true)")
    names = [p.name for p in parts]
    for p in parts:
        for c in p.covers:
            if c not in names and c != WHOLE_MESSAGE:
                _bad(path, f"template {name}: {p.name} covers {c!r}, not an entry nor "
                           f"{WHOLE_MESSAGE!r}")
    transports = t.get("transport", ())
    transports = (transports,) if isinstance(transports, str) else tuple(transports)
    ports = tuple(int(x) for x in t.get("ports", ()))
    default = bool(t.get("default", False))
    if default == bool(ports) or not transports or \
            any(not 0 < x < 65536 for x in ports):
        _bad(path, f"template {name}: a transport and either ports (1-65535) or default: true")
    fixed = sum(len(p.data) + p.width for p in parts)
    tpl = PayloadTemplate(name, transports, ports, parts, int(t.get("min_length", fixed)),
                          None if t.get("max_length") is None else int(t["max_length"]),
                          int(t.get("grow_below", 0)), int(t.get("step", 1)), default,
                          bool(t.get("empty", False)), str(path), str(t.get("sent_by", "any")))
    if tpl.sent_by not in SENDERS or (default and tpl.sent_by != "any"):
        _bad(path, f"template {name}: sent_by must be one of {', '.join(SENDERS)} (a default: any)")
    if tpl.min_length < fixed or tpl.grow_below > tpl.min_length or tpl.step < 1:
        _bad(path, f"template {name}: min_length below the message's {fixed} fixed bytes, "
                   "grow_below above min_length, or a step below 1")
    return tpl


@lru_cache(maxsize=4)
def _load_payloads(directory: str) -> tuple[PayloadTemplate, ...]:
    out = []
    for p in sorted(Path(directory).glob("*.yaml")):
        try:
            doc = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            _bad(p, f"not valid YAML ({e.__class__.__name__})")
        if not isinstance(doc, dict) or not isinstance(doc.get("templates"), list):
            _bad(p, "a payload file needs a 'templates' list")
        _check_keys(p, doc, PAYLOAD_SCHEMA, "", set())
        out += [payload_template(p, t) for t in doc["templates"]]
    return tuple(out)


def load_payloads(directory=None, rules: dict | None = None) -> tuple[PayloadTemplate, ...]:
    """Every payload template of ``<rules folder>/payloads`` in file order (parsed once, then
    cached); each transport must be a protocol file's name, and exactly one template per
    transport is the default."""
    d = Path(directory) if directory is not None else rules_dir() / "payloads"
    templates = _load_payloads(str(d))
    rules = rules if rules is not None else load_rules(d.parent if directory is None else None)
    for t in templates:
        for x in t.transports:
            if x not in rules or not rules[x].ports:
                _bad(t.path, f"template {t.name}: transport {x!r} is not a protocol with ports")
    for x in {x for t in templates for x in t.transports}:
        if sum(t.default and x in t.transports for t in templates) != 1:
            _bad(d, f"exactly one default payload template for {x}")
    return templates


# --- dependencies -------------------------------------------------------------------------------

def apply_dependencies(rules: ProtocolRules, f: dict, mask: np.ndarray,
                       payload_len: np.ndarray) -> None:
    """Repair: make the fields of ``f`` (nPrint column -> int array, replaced in place) hold
    every dependency of the file on the rows of ``mask``, ``check: false`` ones included.

    ``requires``/``requires_payload`` clear the field where its condition is missing;
    ``zero_unless`` zeroes it where its flag is clear, and with ``within_payload`` keeps it in
    [1, payload length] where the flag is set. Entries are applied until nothing changes, so a
    flag cleared by a later entry still clears the fields that need it."""
    col = rules.column
    for _ in range(len(rules.dependencies) + 1):
        changed = False
        for d in rules.dependencies:
            c = col(d["field"])
            v = f[c]
            if "requires" in d:
                new = np.where(mask & (f[col(d["requires"])] == 0), 0, v)
            elif "requires_payload" in d:
                new = np.where(mask & (payload_len == 0) & bool(d["requires_payload"]), 0, v)
            else:
                gate = f[col(d["zero_unless"])] != 0
                new = np.where(mask & ~gate, 0, v)
                if d.get("within_payload", False):
                    new = np.where(mask & gate, np.clip(new, 1, np.maximum(payload_len, 1)), new)
            if not np.array_equal(new, v):
                f[c] = new
                changed = True
        if not changed:
            return


def dependency_failures(rules: ProtocolRules, vals: dict, payload_len: np.ndarray) -> dict[str, np.ndarray]:
    """Validation: {rule: bad mask} for the checked dependencies (``check`` not false) over field
    values ``vals`` (field name -> array). ``within_payload`` is repair's choice: RFC 9293 lets
    an urgent pointer reach past the segment, so real captures are not held to it."""
    out = {}
    for d in rules.dependencies:
        if d.get("check", True) is False:
            continue
        c = rules.column(d["field"])
        v = vals[d["field"]]
        if "zero_unless" in d:
            out[f"{c} set without {d['zero_unless']}"] = (v != 0) & (vals[d["zero_unless"]] == 0)
        elif "requires" in d:
            out[f"{c} without {d['requires']}"] = (v != 0) & (vals[d["requires"]] == 0)
        elif d["requires_payload"]:
            out[f"{c} without payload"] = (v != 0) & (payload_len == 0)
    return out


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


def settle_flags(rules: ProtocolRules, f: dict, mask: np.ndarray, fixed: tuple[str, ...]) -> None:
    """Repair: on the rows of ``mask``, the flag-table fields not in ``fixed`` move to the
    nearest legal combination (file order breaks ties) that agrees with the ``fixed`` ones
    (``f``: nPrint column -> array, replaced in place); rows no combination agrees with keep
    theirs."""
    names, table = rules.flag_table()
    cur = np.stack([f[rules.column(n)] for n in names], axis=1)
    fx = np.array([n in fixed for n in names])
    agree = np.all(table[None, :, fx] == cur[:, None, fx], axis=2)
    dist = np.sum(table[None, :, ~fx] != cur[:, None, ~fx], axis=2)
    j = np.argmin(np.where(agree, dist, 1 << 20), axis=1)
    ok = mask & agree.any(axis=1)
    for i, n in enumerate(names):
        if not fx[i]:
            f[rules.column(n)] = np.where(ok, table[j, i], f[rules.column(n)])


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
