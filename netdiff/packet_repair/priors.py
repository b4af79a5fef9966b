"""Class priors: what a traffic class's header fields look like, so that repair can replace a
legal value the class never shows (DNS from port 1 to port 1 with TTL 1, SSH segments with
ECE+URG set and window 65535 on every packet).

Learnt at ``pcap2img`` time and written next to ``timing.json`` as ``field_priors.json``
(``PriorsLearner.add(class, batch)`` per image, ``.result().save(path)``); used by
``repair(..., priors=FieldPriors.load(path), klass=...)`` and ``img2pcap --priors``.

Which fields are learnt, and what shares one replacement (a flow direction, a host...), is
declared in the rule files (``prior:`` on a field, a protocol's ``prior:`` block; see the
comment at the top of ``protocol_rules/ipv4.yaml``). This module names no header field.

The file holds distributions only: per class and statistic, at most ``TOP_K`` values with
their probabilities (a value is listed only when seen in ``MIN_COUNT`` packets of ``MIN_FLOWS``
flows or more), the mass of all other values and, for fields of 16 bits or more, coarsened
quantiles of those other values (each (value, flow) pair counted once); per class and transport,
the payload length sequences several short flows share (``SCRIPT_FLOWS``). No address, no packet.

A value is *plausible* when the class gives it at least ``min(threshold, 1 / number of values
the field can take)``: at least as likely as a uniform draw over the field, or 1%. Repair keeps
plausible values (the model's output stays visible) and replaces the others: with the first
plausible value of the same group (a host's TTL, a flow direction's window) or with one draw
per group from the class's plausible values, deterministic with the seed. Payload lengths are
the exception (``ClassPriors.payload``): the model decides whether a packet carries data, the
class's lengths for its direction, its flow's size and its service how much.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np

from netdiff.bits.codec import address_words
from netdiff.bits.fields import (FIXED_BYTES, LENGTH_FIELDS, ByteSource, header_bytes,
                                 header_length, read_field, read_field_bytes)
from netdiff.errors import NetdiffError
from netdiff.io.jsonfile import read_json_file
from netdiff.io.atomic import atomic_write_text
from netdiff.rules import engine as E

FORMAT = "netdiff-field-priors/1"
TOP_K = 16                  # values listed per distribution
MAX_SERVICES = 64           # service conditions kept per statistic and class
MIN_COUNT = 5               # ... each seen in at least this many packets
MIN_FLOWS = 2               # ... of at least this many flows
THRESHOLD = 0.01            # plausible: p >= min(THRESHOLD, 1 / field's value count)
LEVELS = np.linspace(0.01, 0.99, 21)     # quantile levels of the unlisted values
BIN_SLACK = 4               # a quantile bin's density is an estimate: judged 4x more leniently
STACK_WEIGHT = 0.1          # stack score bonus: decides rows whose sections are near-equally filled
ID_BEHAVIOURS = ("increment", "zero", "random")
_VALUE_BITS = 20            # accumulator keys: 44 bits of flow hash, 20 bits of value
# A flow first seen in an image's first rows may have begun before the image: its first row is then
# the client's about as often as a going flow's next packet is (QUIC's going flows: mostly the
# server's), where a flow that opens later opens from its client (DNS: always). Learnt apart.
OPEN_EARLY_ROWS = 8
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)
# ``by: flow_size``: how many packets the row's flow has among FLOW_SIZE_ROWS consecutive packets
# (the tallest generated image), in buckets 1, 2, 3-7, 8 or more. Lengths drawn by direction and
# service alone gave every flow its class's mix: at 1024 packets generated video-conferencing
# flows of 2 and 3-7 packets carried 534 and 513 bytes a packet at the median where the
# captures' carry 134 (docs/results.md, stop 29).
FLOW_SIZE_EDGES = (2, 3, 8)
FLOW_SIZE_ROWS = 1024
# ``by: role``: in the same blocks, 0 a packet of a flow that goes one way only, 1 of the side that
# sent a two-way flow's first packet, 2 of the side that answered. Direction alone (client by the
# higher port) mixes BitTorrent's unanswered 30-byte retries with DHT queries and their answers,
# which peers send between two random ports: answered two-packet flows carried 116 bytes where
# the captures' carry 567 at the median.
# ``by: pace``: 0 for a flow's first packet, else 1 + the bucket of the time since its flow's
# previous packet (edges 0.5, 5, 50 and 500 ms; learnt from the captures' timestamps, drawn from the
# times repair stamps). A flow's size and duration go together with its lengths: DNS answers a
# local cache sends within a millisecond carry other lengths than a resolver's after half a
# second, and lengths drawn without the pace gave each answer the blend (flow size-duration of
# repaired real windows 0.084 -> 0.077, docs/results.md, stop 36).
PACE_EDGES_NS = (500_000, 5_000_000, 50_000_000, 500_000_000)
# ``by: place``: the row's place among its flow direction's rows in time, 0 the first, 1 the
# second, 2 the third, 3 any later. A connection's first data follows its handshake (BitTorrent's
# client sends its 68-byte handshake and more in its third segment, after SYN and ACK; uTP a
# SYN, then data after the answer's state packet): drawn without it, the data fell on any
# segment of the flow (docs/results.md, stop 36).
PLACE_MAX = 3
# A short flow's payload lengths go together as a whole: messaging's eight-segment connections
# are one of two or three length sequences (no data, no data, 4, 273, no data, ...), where lengths
# drawn place by place (places past PLACE_MAX pooled) mixed them. Per class and transport, the
# sequences of flows of at most SCRIPT_PACKETS packets, by the flow's size and which way each
# packet runs against its first, each kept when SCRIPT_FLOWS flows or more and SCRIPT_SHARE of the
# flows of its size and ways showed it: a sequence many flows share is what the class does, not
# what one flow did. DNS's exchanges are a long tail of name lengths (the commonest pair 7% of
# them); kept, its pairs were the training captures' names and the held-back flows' bytes moved
# away (flow size-duration in distribution 0.0657 -> 0.0672 with them, 0.0633 without; eight
# repair draws, docs/results.md, stop 43).
SCRIPT_PACKETS = 16
SCRIPT_FLOWS = 3
SCRIPT_SHARE = 0.1
CONDITIONS = ("direction", "service", "flow_size", "role", "pace", "place")   # ``by`` names that are not fields
# conditions a file learnt before them does not name (it draws as it was learnt)
LATER_CONDITIONS = ("flow_size", "role", "pace", "place")


# --- what is learnt: read from the rule files ---------------------------------------------------

# Whether a packet carries data, for a rule file's ``prior: payload: empty:``: "model" keeps the
# generated choice (an empty payload stays empty where the class lists empty ones), "class" draws
# it with the length from the class's distribution for the row's ``by`` values (zero included).
EMPTY = ("model", "class")


@dataclass(frozen=True)
class Stat:
    name: str               # "ipv4.ttl", "tcp.server_port", "tcp.options", "stack.l3"
    protocol: str           # rule file ("" for stack statistics)
    kind: str               # value, port, id, payload, repeat, scripts, flags, options, option_value, stack
    field: str | None = None
    by: tuple | None = None     # learnt apart per: "direction", "service" (the flow's server
                                # port), "flow_size" (FLOW_SIZE_EDGES), "role" (flow_roles), "pace" (flow_paces), "place" (flow_places) or a field of the same
                                # protocol; several = nested
    per: str = "packet"     # packet, direction, flow, endpoint
    bits: int = 16
    weight: str = "packets"     # probabilities over packets or over flows
    empty: str = "model"        # payload: who decides whether a packet carries data (EMPTY)


def stats(rules: dict) -> list[Stat]:
    """The statistics the rule files ask for, in a fixed order (layer, protocol, field)."""
    out: list[Stat] = []
    for name in sorted(rules, key=lambda k: (rules[k].layer, k)):
        pr = rules[name]
        ports_done = False
        for fr in pr.fields:
            if fr.prior is None:
                continue
            kind = fr.prior.get("kind", "value")
            if kind == "port":
                if not pr.ports or fr.name not in pr.ports:
                    raise NetdiffError(f"{pr.path}: field {fr.name} has prior kind port but is "
                                       "not one of the protocol's ports")
                if not ports_done:
                    out += [Stat(f"{name}.{role}", name, "port", role, None, "flow", fr.bits, "flows")
                            for role in ("server_port", "client_port")]
                    ports_done = True
            elif kind == "id":
                out.append(Stat(f"{name}.{fr.name}", name, "id", fr.name, None, "endpoint", fr.bits))
            elif kind == "value":
                out.append(Stat(f"{name}.{fr.name}", name, "value", fr.name, _by(pr, fr.prior.get("by")),
                                fr.prior.get("per", "packet"), fr.bits))
            else:
                raise NetdiffError(f"{pr.path}: field {fr.name}: unknown prior kind {kind!r} "
                                   "(value, port, id)")
        pp = pr.prior
        if "payload" in pp:
            empty = pp["payload"].get("empty", "model")
            if empty not in EMPTY:
                raise NetdiffError(f"{pr.path}: prior payload empty {empty!r}: one of {', '.join(EMPTY)}")
            by = _by(pr, pp["payload"].get("by"))
            out.append(Stat(f"{name}.payload", name, "payload", None, by, "packet", 16, empty=empty))
            repeat = pp["payload"].get("repeat", False)
            if not isinstance(repeat, bool):
                raise NetdiffError(f"{pr.path}: prior payload repeat {repeat!r}: true or false")
            if repeat:
                # by the flow's conditions only: a header field (PSH) of the packet says nothing
                # about whether its length is the one before
                out.append(Stat(f"{name}.payload_repeat", name, "repeat", None,
                                tuple(b for b in by or () if b in CONDITIONS) or None,
                                "packet", 1))
            scripts = pp["payload"].get("scripts", False)
            if not isinstance(scripts, bool):
                raise NetdiffError(f"{pr.path}: prior payload scripts {scripts!r}: true or false")
            if scripts:
                out.append(Stat(f"{name}.payload_scripts", name, "scripts", None, None, "flow", 16))
        if "flags" in pp:
            out.append(Stat(f"{name}.flags", name, "flags", None, None, "packet",
                            len(pp["flags"]["fields"])))
        if "options" in pp and pr.options is not None:
            spec = pp["options"]
            out.append(Stat(f"{name}.options", name, "options", None, _by(pr, spec.get("by")),
                            spec.get("per", "direction"), 0))
            if spec.get("values"):
                out += [Stat(f"{name}.options.{k.name}", name, "option_value", k.name, None,
                             spec.get("per", "direction"), k.value_bits)
                        for k in pr.options.kinds if k.value_bits]
    out += [Stat("stack.l3", "", "stack", "3", None, "flow", 8, "flows"),
            Stat("stack.l4", "", "stack", "4", None, "packet", 8)]
    return out


def _by(pr, by) -> tuple | None:
    """A rule file's ``by:`` (one name or a list, outermost first) as a tuple, checked."""
    if by is None:
        return None
    names = (by,) if isinstance(by, str) else tuple(by) if isinstance(by, list) else None
    fields = {f.name for f in pr.fields}
    if not names or not all(isinstance(b, str) and (b in CONDITIONS or b in fields) for b in names):
        raise NetdiffError(f"{pr.path}: prior by {by!r}: each must be 'direction', 'service', "
                           "'flow_size', 'role', 'pace', 'place' or a field of the protocol")
    return names


def flow_paces(flow: np.ndarray, times_ns: np.ndarray) -> np.ndarray:
    """(n,) int64 pace of each row (``PACE_EDGES_NS``): 0 the first of its flow (any integer key
    per row) in time, else 1 + the bucket of the time since its flow's previous row in time."""
    f = np.asarray(flow).ravel()
    t = np.asarray(times_ns, dtype=np.int64).ravel()
    if len(f) != len(t):
        raise ValueError(f"{len(f)} flow keys for {len(t)} times")
    if not len(f):
        return np.zeros(0, dtype=np.int64)
    _, dense = np.unique(f, return_inverse=True)
    dense = dense.reshape(-1)
    order = np.lexsort((np.arange(len(f)), t, dense))
    same = np.r_[False, dense[order][1:] == dense[order][:-1]]
    gap = np.r_[0, np.diff(t[order])]
    out = np.empty(len(f), dtype=np.int64)
    out[order] = np.where(same, 1 + np.searchsorted(PACE_EDGES_NS, gap, side="right"), 0)
    return out


def flow_places(flow: np.ndarray, direction: np.ndarray, times_ns: np.ndarray) -> np.ndarray:
    """(n,) int64 place of each row among the rows of its flow (any integer key per row) and
    direction in time: 0 the first, 1 the second, ... ``PLACE_MAX`` any later."""
    f = np.asarray(flow).ravel()
    d = np.asarray(direction).ravel().astype(np.int64)
    t = np.asarray(times_ns, dtype=np.int64).ravel()
    if not len(f) == len(d) == len(t):
        raise ValueError(f"{len(f)} flow keys, {len(d)} directions, {len(t)} times")
    if not len(f):
        return np.zeros(0, dtype=np.int64)
    _, dense = np.unique(f, return_inverse=True)
    key = dense.reshape(-1) * 2 + d
    order = np.lexsort((np.arange(len(f)), t, key))
    at = np.arange(len(f))
    start = np.maximum.accumulate(np.where(np.r_[True, key[order][1:] != key[order][:-1]], at, 0))
    out = np.empty(len(f), dtype=np.int64)
    out[order] = np.minimum(at - start, PLACE_MAX)
    return out


def flow_sizes(flow: np.ndarray, rows: int = FLOW_SIZE_ROWS) -> np.ndarray:
    """(n,) int64 bucket (0: 1 packet, 1: 2, 2: 3-7, 3: 8 or more; FLOW_SIZE_EDGES) of the
    packets each row's flow (any integer key per row) has within its block of ``rows``
    consecutive rows."""
    f = np.asarray(flow).ravel()
    if not len(f):
        return np.zeros(0, dtype=np.int64)
    _, dense = np.unique(f, return_inverse=True)
    key = np.arange(len(f), dtype=np.int64) // rows * (int(dense.max()) + 1) + dense.reshape(-1)
    _, inv, counts = np.unique(key, return_inverse=True, return_counts=True)
    return np.searchsorted(FLOW_SIZE_EDGES, counts[inv.reshape(-1)], side="right").astype(np.int64)


def flow_roles(flow: np.ndarray, direction: np.ndarray, rows: int = FLOW_SIZE_ROWS) -> np.ndarray:
    """(n,) int64 role of each row within its flow's block of ``rows`` consecutive rows (as
    ``flow_sizes``): 0 the flow goes one way only there, 1 the row runs the way of the flow's
    first row in the block and the flow goes both ways, 2 it runs the other way."""
    f = np.asarray(flow).ravel()
    d = np.asarray(direction).ravel().astype(np.int64)
    if not len(f):
        return np.zeros(0, dtype=np.int64)
    _, dense = np.unique(f, return_inverse=True)
    key = np.arange(len(f), dtype=np.int64) // rows * (int(dense.max()) + 1) + dense.reshape(-1)
    _, first, inv = np.unique(key, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    ways = np.zeros((len(first), 2), dtype=bool)
    ways[inv, d] = True
    two_way = ways.all(1)[inv]
    return np.where(~two_way, 0, np.where(d == d[first][inv], 1, 2)).astype(np.int64)


def short_flows(flow: np.ndarray, direction: np.ndarray, times_ns: np.ndarray,
                limit: int = SCRIPT_PACKETS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The flows of 2 to ``limit`` rows among ``flow`` (any integer key per row, negative: no
    flow): (F, limit) their rows in time order (-1 past a flow's last), (F,) their sizes and (F,)
    which way each packet runs, bit k set where the k-th runs against the flow's first."""
    f = np.asarray(flow, dtype=np.int64).ravel()
    d = np.asarray(direction).ravel()
    t = np.asarray(times_ns, dtype=np.int64).ravel()
    if not len(f) == len(d) == len(t):
        raise ValueError(f"{len(f)} flow keys, {len(d)} directions, {len(t)} times")
    idx = np.flatnonzero(f >= 0)
    none = (np.zeros((0, limit), dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    if not len(idx):
        return none
    _, dense, counts = np.unique(f[idx], return_inverse=True, return_counts=True)
    dense = dense.reshape(-1)
    o = np.lexsort((idx, t[idx], dense))
    rows, key = idx[o], dense[o]
    place = np.arange(len(o)) - np.r_[0, np.cumsum(counts)[:-1]][key]
    short = (counts >= 2) & (counts <= limit)
    if not short.any():
        return none
    at = np.cumsum(short) - 1
    m = short[key]
    grid = np.full((int(short.sum()), limit), -1, dtype=np.int64)
    grid[at[key[m]], place[m]] = rows[m]
    against = (grid >= 0) & (d[np.maximum(grid, 0)] != d[grid[:, :1]])
    return grid, counts[short].astype(np.int64), (against * (1 << np.arange(limit))).sum(1)


def script_key(size: int, ways: int) -> str:
    """Key of a length script: "n3-010" for three packets, the second against the first."""
    return f"n{size}-" + "".join("1" if ways >> k & 1 else "0" for k in range(size))


_SCRIPT_KEY = re.compile(r"n(\d+)-([01]+)")


def _learnt_by(st: Stat, learnt: dict) -> Stat:
    """A statistic as a file learnt it: one learnt before flow sizes, roles, paces or places
    split it draws as it did."""
    if not st.by or not learnt:
        return st
    named = {part.split("=")[0] for k in learnt for part in k.split("|")}
    gone = [b for b in LATER_CONDITIONS if b in st.by and b not in named]
    return replace(st, by=tuple(b for b in st.by if b not in gone) or None) if gone else st


def _previous_data(flow: np.ndarray, direction: np.ndarray, payload: np.ndarray,
                   mask: np.ndarray) -> np.ndarray:
    """Per row: the row before it in its flow and direction that carries data, for rows of
    ``mask`` that carry data themselves (-1: none, or not such a row)."""
    from netdiff.packet_repair.trace import group_previous

    idx = np.flatnonzero(mask & (payload > 0))
    prev = np.full(len(payload), -1, dtype=np.int64)
    # dense flow ids first: keys may be 64-bit hashes (learning), which times two would overflow
    _, dense = np.unique(np.asarray(flow)[idx], return_inverse=True)
    before = group_previous(dense.reshape(-1) * 2 + np.asarray(direction)[idx].astype(np.int64))
    prev[idx] = np.where(before >= 0, idx[np.maximum(before, 0)], -1)
    return prev


def _cond_key(by: tuple | None, v) -> str:
    """"*", or "direction=0", "direction=1|service=443" ... for the values ``v`` of ``by``."""
    return "*" if not by else "|".join(f"{b}={int(x)}" for b, x in zip(by, v))


def _combos(comps: list, mask: np.ndarray):
    """(values, rows) for every distinct combination of the condition arrays ``comps`` among
    the rows of ``mask`` (one ((), rows) without conditions)."""
    idx = np.flatnonzero(mask)
    if not comps:
        yield (), idx
        return
    sub = np.stack([np.asarray(c)[idx] for c in comps], axis=1)
    uniq, inv = np.unique(sub, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    order = np.argsort(inv, kind="stable")
    bounds = np.searchsorted(inv[order], np.arange(len(uniq) + 1))
    for j, combo in enumerate(uniq.tolist()):
        yield tuple(combo), idx[order[bounds[j]:bounds[j + 1]]]


# --- reading packets ----------------------------------------------------------------------------

def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser over uint64 arrays (wrapping arithmetic)."""
    x = x.astype(np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _hash(*parts: np.ndarray) -> np.ndarray:
    h = np.zeros(len(parts[0]), dtype=np.uint64)
    for p in parts:
        h = _mix(h ^ p.astype(np.uint64))
    return h


@dataclass
class _View:
    """Per-packet arrays of one batch: header offsets, flows, directions, hosts."""

    g: np.ndarray
    l3: np.ndarray
    l4: np.ndarray
    version: np.ndarray
    proto: np.ndarray
    payload: np.ndarray
    flow_hash: np.ndarray
    direction: np.ndarray
    server_port: np.ndarray
    client_port: np.ndarray
    pair: np.ndarray        # hash of the ordered (source, destination) address pair
    flow_size: np.ndarray   # flow_sizes of the rows
    role: np.ndarray        # flow_roles of the rows
    pace: np.ndarray        # flow_paces of the rows
    place: np.ndarray       # flow_places of the rows
    t: np.ndarray           # arrival times (ns)


def _headers(batch) -> dict | None:
    """The header bytes (each packet's first bytes, enough for IP + transport headers), offsets
    and times of a batch's readable packets: what learning needs, without the payload."""
    from netdiff.bits import codec

    p = codec.parse(batch)
    ok = np.flatnonzero(p.reason == 0)
    if len(ok) == 0:
        return None
    t = np.asarray(batch.ts_sec, dtype=np.int64) * 10 ** 9 + np.asarray(batch.ts_nsec, dtype=np.int64)
    return {"g": p.window[ok], "l3": p.l3[ok], "l4": p.l4[ok], "version": p.version[ok],
            "proto": p.proto[ok], "payload": p.payload_len[ok], "t": t[ok]}


def _view(h: dict, rules: dict) -> _View:
    g, l3, l4, version, proto = h["g"], h["l3"], h["l4"], h["version"], h["proto"]
    n = len(g)
    rows = np.arange(n)
    v4 = version == 4

    sh, sl = address_words(g, l3, v4, "src")
    dh, dl = address_words(g, l3, v4, "dst")
    transport = header_bytes(g, l4)
    sp = np.zeros(n, dtype=np.int64)
    dp = np.zeros(n, dtype=np.int64)
    for pr in rules.values():
        if pr.ports and pr.number:
            m = proto == pr.number
            if m.any():
                sp = np.where(m, read_field(transport, pr.column(pr.ports[0])), sp)
                dp = np.where(m, read_field(transport, pr.column(pr.ports[1])), dp)
    icmp = proto == rules["icmp"].number
    itype = np.where(icmp, read_field(transport, rules["icmp"].column("type")), -1)
    if icmp.any():      # ICMP flows: the echo/timestamp identifier (types whose rest is id_seq)
        id_seq = np.isin(itype, [t for t, d in E.icmp_type_info(rules["icmp"]).items()
                                 if d["rest"] == "id_seq"])
        ident = read_field(transport, rules["icmp"].column("roh")) >> 16   # the rest of header's first half
        sp = np.where(icmp & id_seq, ident, sp)
    a_first = (sh < dh) | ((sh == dh) & ((sl < dl) | ((sl == dl) & (sp <= dp))))
    pa, pb = np.where(a_first, sp, dp), np.where(a_first, dp, sp)
    flow_hash = _hash(proto, np.where(a_first, sh, dh), np.where(a_first, sl, dl), pa,
                      np.where(a_first, dh, sh), np.where(a_first, dl, sl), pb)
    _, first, flow = np.unique(flow_hash, return_index=True, return_inverse=True)
    flow = flow.reshape(-1)
    F = len(first)
    # The client: a TCP flow's first SYN without ACK is sent by it; otherwise the higher port is
    # the client's (equal ports: the first packet's sender), as repair decides.
    tcp = rules.get("tcp")
    tcp_rows = proto == (tcp.number if tcp else -1)
    client_is_a = np.where(pa[first] > pb[first], True,
                           np.where(pa[first] < pb[first], False, a_first[first]))
    if tcp is not None and tcp_rows.any():
        syn = read_field(transport, tcp.column("syn")) == 1
        ack = read_field(transport, tcp.column("ackf")) == 1
        opener = tcp_rows & syn & ~ack
        first_syn = np.full(F, n, dtype=np.int64)
        np.minimum.at(first_syn, flow[opener], rows[opener])
        has = first_syn < n
        client_is_a[has] = a_first[first_syn[has]]
    direction = np.where(a_first == client_is_a[flow], 0, 1)
    direction = np.where(icmp, np.where(np.isin(itype, E.icmp_requests(rules["icmp"])), 0, 1), direction)
    c_a = client_is_a[flow]
    server_port = np.where(c_a, pb, pa)
    client_port = np.where(c_a, pa, pb)
    return _View(g=g, l3=l3, l4=l4, version=version, proto=proto, payload=h["payload"],
                 flow_hash=flow_hash, direction=direction, server_port=server_port,
                 client_port=client_port, pair=_hash(sh, sl, dh, dl), flow_size=flow_sizes(flow),
                 role=flow_roles(flow, direction), pace=flow_paces(flow, h["t"]),
                 place=flow_places(flow, direction, h["t"]), t=h["t"])


def option_kinds(vals: np.ndarray, optlen: np.ndarray, grammar) -> tuple[np.ndarray, np.ndarray]:
    """Kinds (n, max) int16 (-1 after the last) and their start bytes, walking every row's
    option area at once (single-byte kinds from the grammar; others by their length byte;
    EOL or a malformed length ends the walk)."""
    n, width = vals.shape
    single = np.zeros(256, dtype=bool)
    single[[k.kind for k in grammar.kinds if k.lengths == (1,)]] = True
    kinds = np.full((n, width), -1, dtype=np.int16)
    starts = np.zeros((n, width), dtype=np.int16)
    cursor = np.zeros(n, dtype=np.int64)
    rows = np.flatnonzero(optlen > 0)
    step = 0
    while len(rows) and step < width:
        c = cursor[rows]
        k = vals[rows, np.minimum(c, width - 1)].astype(np.int64)
        kinds[rows, step] = k
        starts[rows, step] = c
        one = single[k]
        ln = np.where(one, 1, vals[rows, np.minimum(c + 1, width - 1)].astype(np.int64))
        bad = ~one & ((c + 1 >= optlen[rows]) | (ln < 2))
        cursor[rows] = c + np.maximum(ln, 1)
        rows = rows[(k != 0) & ~bad & (cursor[rows] < optlen[rows])]
        step += 1
    return kinds, starts


def layout_keys(kinds: np.ndarray) -> np.ndarray:
    """uint64 key per row of option kinds (-1 after the last): base-257 digits, exact up to 7
    kinds, hashed beyond. Equal layouts have equal keys whatever the matrix width."""
    kinds = np.atleast_2d(kinds)
    cnt = (kinds >= 0).sum(axis=1)
    key = np.zeros(len(kinds), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(int(cnt.max(initial=0))):
            nk = key * np.uint64(257) + (kinds[:, j].astype(np.int64) + 1).astype(np.uint64)
            if j >= 7:
                nk = _mix(nk)
            key = np.where(j < cnt, nk, key)
    return key


def _layout_key(s: str) -> int:
    return int(layout_keys(np.array([[int(x) for x in s.split(",")] if s else [-1]]))[0])


_LAYOUT_STRING = re.compile(r"(\d+(,\d+)*)?")


def _well_formed_value(v) -> bool:
    """A listed value as priors files hold them: a number, or an option layout (kinds, comma-separated)."""
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, str) and bool(_LAYOUT_STRING.fullmatch(v)))


def _layout_bytes(s: str, grammar) -> int:
    """Bytes an option layout string (kinds, comma-separated) takes, aligned; 1 << 20 for a
    kind the grammar does not know."""
    if s == "":
        return 0
    known = {k.kind: k for k in grammar.kinds}
    tot = 0
    for x in str(s).split(","):
        kk = known.get(int(x)) if x.strip().isdigit() else None
        if kk is None:
            return 1 << 20
        tot += 1 if kk.lengths == (1,) else min(kk.lengths)
    return -(-tot // grammar.align) * grammar.align


def layout_strings(kinds: np.ndarray) -> np.ndarray:
    """Object array of "2,4,8,1,3" per row ("" for no options)."""
    n = len(kinds)
    if n == 0:
        return np.zeros(0, dtype=object)
    _, first, inv = np.unique(layout_keys(kinds), return_index=True, return_inverse=True)
    names = np.array([",".join(str(int(k)) for k in kinds[i] if k >= 0) for i in first], dtype=object)
    return names[inv.reshape(-1)]


def _option_area(src: ByteSource, rules_p, mask) -> tuple[np.ndarray, np.ndarray]:
    """(n, max_bytes) option bytes and lengths of a protocol's header (``src``: its byte source;
    rows outside ``mask`` or without options: zero)."""
    sec = rules_p.section
    mx = rules_p.options.max_bytes
    optlen = np.where(mask, np.clip(header_length(src, sec) - FIXED_BYTES[sec], 0, mx), 0)
    got = read_field_bytes(src, LENGTH_FIELDS[sec][2])[:, :mx]
    vals = np.where(np.arange(mx) < optlen[:, None], got, 0).astype(np.uint8)
    return vals, optlen


# --- learning -----------------------------------------------------------------------------------

class _Acc:
    """Counts of (flow, value) pairs: raw keys are buffered and merged with one np.unique when
    the buffer is large, so memory is bounded by the distinct pairs."""

    def __init__(self):
        self.keys = np.zeros(0, dtype=np.uint64)
        self.counts = np.zeros(0, dtype=np.int64)
        self.parts: list[np.ndarray] = []
        self.size = 0

    def add(self, flow_hash: np.ndarray, values: np.ndarray) -> None:
        if len(values) == 0:
            return
        v = np.clip(np.asarray(values, dtype=np.int64), 0, (1 << _VALUE_BITS) - 1).astype(np.uint64)
        self.parts.append(((flow_hash >> np.uint64(_VALUE_BITS)) << np.uint64(_VALUE_BITS)) | v)
        self.size += len(v)
        if self.size > 1 << 20:
            self.compact()

    def compact(self) -> None:
        if not self.parts:
            return
        k = np.concatenate([self.keys] + self.parts)
        c = np.concatenate([self.counts, np.ones(len(k) - len(self.keys), dtype=np.int64)])
        u, inv = np.unique(k, return_inverse=True)
        self.keys = u
        self.counts = np.bincount(inv.reshape(-1), weights=c, minlength=len(u)).astype(np.int64)
        self.parts = []
        self.size = len(u)

    def table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(values, packets per value, flows per value, pair values, pair flows)."""
        self.compact()
        pv = (self.keys & np.uint64((1 << _VALUE_BITS) - 1)).astype(np.int64)
        pf = self.keys >> np.uint64(_VALUE_BITS)
        values, inv = np.unique(pv, return_inverse=True)
        inv = inv.reshape(-1)
        packets = np.bincount(inv, weights=self.counts, minlength=len(values)).astype(np.int64)
        flows = np.bincount(inv, minlength=len(values)).astype(np.int64)
        return values, packets, flows, pv, pf


def _quantile_step(bits: int) -> int:
    """Quantiles of a ``bits``-wide field are stored as multiples of this (16 for 16 bits)."""
    return 1 << max(0, bits - 12)


def _distribution(acc: _Acc, bits: int, weight: str, names: list[str] | None = None) -> dict | None:
    values, packets, flows, pv, pf = acc.table()
    if len(values) == 0:
        return None
    w = (flows if weight == "flows" else packets).astype(np.float64)
    total = w.sum()
    eligible = np.flatnonzero((packets >= MIN_COUNT) & (flows >= MIN_FLOWS))
    order = eligible[np.lexsort((values[eligible], -w[eligible]))][:TOP_K]
    listed = values[order]
    p = w[order] / total
    other = max(0.0, 1.0 - float(w[order].sum() / total))
    d: dict = {"values": [names[v] for v in listed] if names is not None else [int(v) for v in listed],
               "p": [round(float(x), 5) for x in p], "other": round(other, 5), "n": int(total)}
    if names is None and bits >= 16 and other > 0:
        rest = ~np.isin(pv, listed)
        pts = np.sort(pv[rest])
        if len(pts) >= 2 * MIN_COUNT and len(np.unique(pf[rest])) >= MIN_FLOWS:
            # each (value, flow) pair once; quantiles coarsened to 2^(bits-12)
            step = _quantile_step(bits)
            q = np.rint(np.quantile(pts, LEVELS) / step) * step
            d["q"] = [int(x) for x in np.clip(np.maximum.accumulate(q), 0, (1 << bits) - 1)]
    return d


def _openers(h: dict, rules: dict, seen: set) -> tuple[np.ndarray, set]:
    """(2, 2) counts over one image's flows with two ports told apart and no opening SYN, by
    whether the client (``_view``'s) sent the flow's first row in the image (column 0) or the
    server: row 0, the flows first seen in the image's first ``OPEN_EARLY_ROWS`` rows (going on
    or new, as where a generated image starts); row 1, the flows that open later (not ``seen``
    earlier in the capture). Also the image's flow hashes."""
    v = _view(h, rules)
    hashes, first, inv = np.unique(v.flow_hash, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    ok = (first < OPEN_EARLY_ROWS) | ~np.isin(hashes, np.fromiter(seen, dtype=hashes.dtype, count=len(seen)))
    ok &= v.server_port[first] != v.client_port[first]
    ok &= np.isin(v.proto[first], [pr.number for pr in rules.values() if pr.ports and pr.number])
    tcp = rules.get("tcp")
    if tcp is not None:
        rows = np.flatnonzero(v.proto == tcp.number)
        if len(rows):
            seg = header_bytes(v.g[rows], v.l4[rows])
            opens = (read_field(seg, tcp.column("syn")) == 1) & (read_field(seg, tcp.column("ackf")) == 0)
            ok[np.unique(inv[rows[opens]])] = False
    out = np.zeros((2, 2), dtype=np.int64)
    np.add.at(out, ((first >= OPEN_EARLY_ROWS).astype(np.int64)[ok], v.direction[first][ok]), 1)
    return out, set(hashes.tolist())


def _flow_coupling(acc: dict, st: Stat) -> float | None:
    """How much a flow's lengths go together beyond what their cells say: each packet's place in
    the distribution of its finest cell (``st.by`` all given) as a normal score, then the mean
    product of two scores of one flow over the mean square, per flow with two or more packets and
    the flows weighed alike (a 1,000-packet transfer counts as much as a DNS exchange). None
    without such flows. A query's and its answer's lengths, a video flow's segments: drawn each
    from its cell alone, real flows' bytes shuffled within their cells (class, direction, flow
    size, place) put the held-back flows' size-duration JSD up from 0.056 to 0.078
    (docs/results.md, stop 41)."""
    from scipy.special import ndtri

    depth = len(st.by or ())
    flows, scores, counts = [], [], []
    for (stat, cond), a in acc.items():
        if stat != st.name or (cond == "*") != (depth == 0) or (depth and cond.count("|") != depth - 1):
            continue
        a.compact()
        if not len(a.keys):
            continue
        value = (a.keys & np.uint64((1 << _VALUE_BITS) - 1)).astype(np.int64)
        flow = a.keys >> np.uint64(_VALUE_BITS)
        vals, inv = np.unique(value, return_inverse=True)
        per_value = np.bincount(inv.reshape(-1), weights=a.counts, minlength=len(vals))
        below = np.cumsum(per_value) - per_value
        cdf = (below + per_value / 2) / per_value.sum()         # mid-rank: ties share their place
        flows.append(flow)
        scores.append(ndtri(np.clip(cdf[inv.reshape(-1)], 1e-6, 1 - 1e-6)))
        counts.append(a.counts.astype(np.float64))
    if not flows:
        return None
    flow, z, c = np.concatenate(flows), np.concatenate(scores), np.concatenate(counts)
    spread = float((c * z * z).sum() / c.sum())
    uf, fi = np.unique(flow, return_inverse=True)
    fi = fi.reshape(-1)
    n = np.bincount(fi, weights=c, minlength=len(uf))
    tot = np.bincount(fi, weights=c * z, minlength=len(uf))
    sq = np.bincount(fi, weights=c * z * z, minlength=len(uf))
    many = n >= 2
    if many.sum() < MIN_FLOWS or spread <= 0:
        return None
    pairs = (tot[many] ** 2 - sq[many]) / (n[many] * (n[many] - 1))
    return round(float(np.clip(pairs.mean() / spread, 0.0, 0.95)), 4)


def _kept_scripts(acc: dict) -> dict:
    """statistic -> {script_key: {"flows": short flows of that size and ways, "scripts": [[flows,
    [payload lengths]], ...]}}, the sequences SCRIPT_FLOWS flows or more and SCRIPT_SHARE of the
    flows of their size and ways showed, most shown first."""
    out = {}
    for stat, counter in sorted(acc.items()):
        total: Counter = Counter()
        for (size, ways, *_), n in counter.items():
            total[(size, ways)] += n
        kept: dict = {}
        for (size, ways, *lengths), n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])):
            if n >= SCRIPT_FLOWS and n >= SCRIPT_SHARE * total[(size, ways)]:
                kept.setdefault((size, ways), []).append([int(n), [int(x) for x in lengths[:size]]])
        if kept:
            out[stat] = {script_key(s, w): {"flows": int(total[(s, w)]), "scripts": v}
                         for (s, w), v in sorted(kept.items())}
    return out


def _well_formed_scripts(by_key) -> bool:
    if not isinstance(by_key, dict):
        return False
    for key, e in by_key.items():
        m = _SCRIPT_KEY.fullmatch(key) if isinstance(key, str) else None
        if m is None or int(m.group(1)) != len(m.group(2)) or int(m.group(1)) < 2 or not isinstance(e, dict) \
                or not isinstance(e.get("flows"), int) or not isinstance(e.get("scripts"), list) or not e["scripts"]:
            return False
        shown = 0
        for item in e["scripts"]:
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], int) and item[0] >= 1
                    and isinstance(item[1], list) and len(item[1]) == len(m.group(2))
                    and all(isinstance(x, int) and 0 <= x < 1 << 16 for x in item[1])):
                return False
            shown += item[0]
        if shown > e["flows"]:
            return False
    return True


class PriorsLearner:
    """Accumulates per class what ``stats(rules)`` asks for; ``result()`` gives the priors.

    ``add`` keeps only the header bytes of each batch and learns from them in blocks of
    ``BLOCK`` packets (whole-array work amortised; a flow cut by an image boundary is still one
    flow: flows are keyed by a hash of their 5-tuple)."""

    BLOCK = 16384

    def __init__(self, rules: dict | None = None):
        self.rules = rules if rules is not None else E.load_rules()
        self.stats = stats(self.rules)
        self.acc: dict[str, dict[tuple[str, str], _Acc]] = {}
        self.ids: dict[str, Counter] = {}
        self.packets: Counter = Counter()
        self.layouts: dict[str, int] = {}           # layout string -> accumulator value
        self.pending: dict[str, list[dict]] = {}
        self.pending_n: Counter = Counter()
        self.openers: dict[str, np.ndarray] = {}
        self.seen: dict[str, set] = {}      # class -> flow hashes of the capture so far
        # class -> statistic -> Counter of (size, ways, payload lengths... padded -1): short flows
        self.scripts: dict[str, dict[str, Counter]] = {}

    def _a(self, klass: str, stat: str, cond: str) -> _Acc:
        return self.acc.setdefault(klass, {}).setdefault((stat, cond), _Acc())

    def _add(self, klass, st: Stat, mask, cond, values, fh) -> None:
        """``cond``: the arrays of ``st.by`` (None: none). Learnt for every prefix of them, so
        repair can fall back to a coarser condition (direction alone) when the finer one
        (direction and service) was too rare to learn."""
        if not mask.any():
            return
        if not cond:
            self._a(klass, st.name, "*").add(fh[mask], values[mask])
            return
        for depth in range(1, len(cond) + 1):
            for combo, rows in _combos(cond[:depth], mask):
                self._a(klass, st.name, _cond_key(st.by, combo)).add(fh[rows], values[rows])

    def add(self, klass: str, batch, start: bool = True) -> None:
        """Learn from one batch of a class's packets (an image's worth); ``start``: the first
        image of a capture (False: the next image of the one before)."""
        h = _headers(batch)
        if h is None:
            return
        klass = str(klass)
        if start:
            self.seen[klass] = set()
        opened, flows = _openers(h, self.rules, self.seen.setdefault(klass, set()))
        self.seen[klass] |= flows
        self.openers[klass] = self.openers.get(klass, np.zeros((2, 2), dtype=np.int64)) + opened
        self.packets[klass] += len(h["g"])
        self.pending.setdefault(klass, []).append(h)
        self.pending_n[klass] += len(h["g"])
        if self.pending_n[klass] >= self.BLOCK:
            self._flush(klass)

    def _flush(self, klass: str) -> None:
        parts = self.pending.pop(klass, [])
        self.pending_n[klass] = 0
        if not parts:
            return
        width = max(p["g"].shape[1] for p in parts)
        h = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != "g"}
        h["g"] = np.concatenate([np.pad(p["g"], ((0, 0), (0, width - p["g"].shape[1]))) for p in parts])
        self._learn(klass, _view(h, self.rules))

    def _learn(self, klass: str, v: _View) -> None:
        rules = self.rules
        n = len(v.g)
        fh = v.flow_hash
        l3p = E.layer_protocols(rules, 3)
        l4p = E.layer_protocols(rules, 4)
        mask_of = {name: v.version == ver for ver, name in l3p.items()}
        mask_of.update({name: v.proto == num for num, name in l4p.items()})
        headers = {3: header_bytes(v.g, v.l3), 4: header_bytes(v.g, v.l4)}
        src_of = {name: headers[3 if rules[name].layer == 3 else 4] for name in rules}
        for st in self.stats:
            if st.kind == "stack":
                self._add(klass, st, np.ones(n, bool), None,
                          v.version if st.field == "3" else v.proto, fh)
                continue
            pr = rules[st.protocol]
            mask = mask_of.get(st.protocol)
            if mask is None or not mask.any():
                continue
            src = src_of[st.protocol]
            cond = None
            if st.by:
                cond = [v.direction if b == "direction" else v.server_port if b == "service"
                        else v.flow_size if b == "flow_size" else v.role if b == "role"
                        else v.pace if b == "pace" else v.place if b == "place"
                        else read_field(src, pr.column(b))
                        for b in st.by]
            if st.kind == "value":
                self._add(klass, st, mask, cond, read_field(src, pr.column(st.field)), fh)
            elif st.kind == "port":
                self._add(klass, st, mask, cond,
                          v.server_port if st.field == "server_port" else v.client_port, fh)
            elif st.kind == "payload":
                self._add(klass, st, mask, cond, v.payload, fh)
            elif st.kind == "repeat":
                prev = _previous_data(v.flow_hash, v.direction, v.payload, mask)
                has = prev >= 0
                self._add(klass, st, has, cond,
                          (v.payload == v.payload[np.maximum(prev, 0)]).astype(np.int64), fh)
            elif st.kind == "scripts":
                _, dense = np.unique(fh, return_inverse=True)
                grid, size, ways = short_flows(np.where(mask, dense.reshape(-1), -1), v.direction, v.t)
                if len(size):
                    lengths = np.where(grid >= 0, v.payload[np.maximum(grid, 0)], -1)
                    seen, count = np.unique(np.column_stack([size, ways, lengths]), axis=0, return_counts=True)
                    acc = self.scripts.setdefault(klass, {}).setdefault(st.name, Counter())
                    for row, c in zip(seen.tolist(), count.tolist()):
                        acc[tuple(row)] += c
            elif st.kind == "flags":
                code = np.zeros(n, dtype=np.int64)
                for nm in pr.prior["flags"]["fields"]:
                    code = (code << 1) | read_field(src, pr.column(nm))
                self._add(klass, st, mask, cond, code, fh)
            elif st.kind == "options":
                vals, optlen = _option_area(src, pr, mask)
                kinds, starts = option_kinds(vals, optlen, pr.options)
                u, inv = np.unique(layout_strings(kinds[mask]).astype(str), return_inverse=True)
                ids = np.array([self.layouts.setdefault(str(x), len(self.layouts)) for x in u],
                               dtype=np.int64)
                code = np.zeros(n, dtype=np.int64)
                code[mask] = ids[inv.reshape(-1)]
                self._add(klass, st, mask, cond, code, fh)
                for vs in self.stats:       # option values of this protocol
                    if vs.kind != "option_value" or vs.protocol != st.protocol:
                        continue
                    k = pr.options.kind(vs.field)
                    hit = (kinds == k.kind) & mask[:, None]
                    r_, c_ = np.nonzero(hit)
                    if not len(r_):
                        continue
                    at = starts[r_, c_].astype(np.int64) + 2
                    val = np.zeros(len(r_), dtype=np.int64)
                    for b in range(k.value_bits // 8):
                        val = (val << 8) | vals[r_, np.minimum(at + b, vals.shape[1] - 1)]
                    self._a(klass, vs.name, "*").add(fh[r_], val)
            elif st.kind == "id":
                self._ids(klass, v, mask, read_field(src, pr.column(st.field)), pr.field(st.field).bits)

    def _ids(self, klass: str, v: _View, mask: np.ndarray, values: np.ndarray, bits: int) -> None:
        """IP ID behaviour per ordered host pair with 3+ packets: all zero, counting up (median
        step 1..4095), or random."""
        idx = np.flatnonzero(mask)
        if len(idx) < 3:
            return
        ids = values[idx]
        _, pair = np.unique(v.pair[idx], return_inverse=True)
        pair = pair.reshape(-1)
        order = np.argsort(pair, kind="stable")
        ps, is_ = pair[order], ids[order]
        same = ps[1:] == ps[:-1]
        step = (is_[1:] - is_[:-1]) & ((1 << bits) - 1)
        counts = np.bincount(pair)
        P = len(counts)
        zero_all = np.bincount(pair, weights=(ids == 0).astype(float), minlength=P) == counts
        s_pair = ps[1:][same]
        s_val = step[same]
        o = np.lexsort((s_val, s_pair))
        s_pair, s_val = s_pair[o], s_val[o]
        n_steps = np.bincount(s_pair, minlength=P)
        starts = np.r_[0, np.cumsum(n_steps)[:-1]]
        has = counts >= 3
        med = np.zeros(P, dtype=np.int64)
        med[has] = s_val[starts[has] + (n_steps[has] - 1) // 2]
        inc = has & ~zero_all & (med >= 1) & (med < 4096)
        c = self.ids.setdefault(klass, Counter())
        c["zero"] += int((has & zero_all).sum())
        c["increment"] += int(inc.sum())
        c["random"] += int((has & ~zero_all & ~inc).sum())

    def result(self) -> "FieldPriors":
        for klass in list(self.pending):
            self._flush(klass)
        names = {i: s for s, i in self.layouts.items()}
        by_name = {s.name: s for s in self.stats}
        classes = {}
        for klass in sorted(self.acc):
            fields: dict[str, dict] = {}
            for (stat, cond), acc in sorted(self.acc[klass].items()):
                st = by_name[stat]
                d = _distribution(acc, st.bits, st.weight,
                                  names if st.kind == "options" else None)
                if d is not None:
                    fields.setdefault(stat, {})[cond] = d
            for conds in fields.values():
                # per service only what says something, and for the busiest services: a
                # peer-to-peer class has a "service" per peer
                svc = [k for k in conds if "service=" in k]
                listed = sorted((k for k in svc if conds[k]["values"]), key=lambda k: (-conds[k]["n"], k))
                for k in set(svc) - set(listed[:MAX_SERVICES]):
                    del conds[k]
            ids = self.ids.get(klass)
            if ids and sum(ids.values()):
                tot = sum(ids.values())
                for st in self.stats:
                    if st.kind == "id":
                        fields[st.name] = {"*": {"shares": {b: round(ids[b] / tot, 5)
                                                            for b in ID_BEHAVIOURS},
                                                 "n": int(tot)}}
            classes[klass] = {"packets": int(self.packets[klass]), "fields": fields}
            opened = self.openers.get(klass)
            if opened is not None and opened.sum():
                classes[klass]["openers"] = {"early": [int(x) for x in opened[0]],
                                             "late": [int(x) for x in opened[1]]}
            coupling = {st.name: rho for st in self.stats if st.kind == "payload"
                        for rho in [_flow_coupling(self.acc[klass], st)] if rho is not None}
            if coupling:
                classes[klass]["flow_coupling"] = coupling
            scripts = _kept_scripts(self.scripts.get(klass, {}))
            if scripts:
                classes[klass]["scripts"] = scripts
        return FieldPriors(classes)


# --- the file -----------------------------------------------------------------------------------

class FieldPriors:
    """Per-class field distributions (``field_priors.json``, format ``netdiff-field-priors/1``)."""

    def __init__(self, classes: dict | None = None, threshold: float = THRESHOLD, levels=None):
        self.classes: dict[str, dict] = classes or {}
        self.threshold = float(threshold)
        self.levels = np.asarray(LEVELS if levels is None else levels, dtype=np.float64)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "threshold": self.threshold, "top_k": TOP_K,
                "min_count": MIN_COUNT, "min_flows": MIN_FLOWS,
                "levels": [round(float(x), 4) for x in self.levels], "classes": self.classes}

    def save(self, path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n")

    @classmethod
    def from_dict(cls, doc, where: str = "priors") -> "FieldPriors":
        try:
            return cls._checked(doc, where)
        except (TypeError, AttributeError, KeyError) as e:     # a value of the wrong kind deep inside
            raise NetdiffError(f"{where}: malformed priors file ({e.__class__.__name__}: {e})") from None

    @classmethod
    def _checked(cls, doc, where: str) -> "FieldPriors":
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise NetdiffError(f"{where}: not netdiff field priors (format {FORMAT!r} expected)")
        classes = doc.get("classes")
        if not isinstance(classes, dict) or not all(isinstance(c, dict) and isinstance(c.get("fields"), dict)
                                                    for c in classes.values()):
            raise NetdiffError(f"{where}: 'classes' must map class names to {{'fields': ...}}")
        levels = doc.get("levels", list(LEVELS))
        for k, c in classes.items():
            opened = c.get("openers", {"early": [0, 0], "late": [0, 0]})
            if not isinstance(opened, dict) or set(opened) != {"early", "late"} or not all(
                    isinstance(x, list) and len(x) == 2 and all(isinstance(n, int) and n >= 0 for n in x)
                    for x in opened.values()):
                raise NetdiffError(f"{where}: class {k!r}: openers must be {{'early': [n, n], "
                                   "'late': [n, n]} of counts")
            coupling = c.get("flow_coupling", {})
            if not isinstance(coupling, dict) or not all(
                    isinstance(v, (int, float)) and 0 <= v < 1 for v in coupling.values()):
                raise NetdiffError(f"{where}: class {k!r}: flow_coupling must map statistics to "
                                   "numbers in [0, 1)")
            if not isinstance(c.get("scripts", {}), dict) or not all(
                    _well_formed_scripts(v) for v in c.get("scripts", {}).values()):
                raise NetdiffError(f"{where}: class {k!r}: scripts must map statistics to "
                                   "{'nN-ways': {'flows': n, 'scripts': [[n, [lengths]], ...]}}")
            for stat, conds in c["fields"].items():
                for cond, d in conds.items():
                    if "shares" in d:
                        continue
                    if len(d.get("values", [])) != len(d.get("p", [])) or \
                            not 0 <= d.get("other", -1) <= 1 or len(d.get("q") or levels) != len(levels) or \
                            not all(_well_formed_value(v) for v in d.get("values", [])):
                        raise NetdiffError(f"{where}: class {k!r}, {stat} [{cond}] is malformed")
        return cls(classes, float(doc.get("threshold", THRESHOLD)), levels)

    @classmethod
    def load(cls, path) -> "FieldPriors":
        return cls.from_dict(read_json_file(path, "priors file"), str(path))

    @classmethod
    def coerce(cls, x) -> "FieldPriors | None":
        """A FieldPriors from itself, a loaded JSON document or a path (None stays None)."""
        if x is None or isinstance(x, FieldPriors):
            return x
        if isinstance(x, dict):
            return cls.from_dict(x)
        return cls.load(x)

    def for_class(self, klass: str | None, seed: int = 0, rules: dict | None = None) -> "ClassPriors | None":
        if klass is None or klass not in self.classes:
            return None
        return ClassPriors(self.classes[klass]["fields"], str(klass), rules or E.load_rules(),
                           seed, self.threshold, self.levels,
                           coupling=self.classes[klass].get("flow_coupling", {}),
                           openers=self.classes[klass].get("openers"),
                           scripts=self.classes[klass].get("scripts"))


# --- using them ---------------------------------------------------------------------------------

class Dist:
    """One learnt distribution: listed values with probabilities, the rest's mass and, for wide
    fields, quantiles of the rest (probability spread evenly between consecutive quantiles)."""

    def __init__(self, d: dict, space: float | None, threshold: float, numeric: bool = True,
                 levels=LEVELS):
        self.values = list(d.get("values", []))
        self.p = np.asarray(d.get("p", []), dtype=np.float64)
        self.other = float(d.get("other", 0.0))
        q = d.get("q")
        self.q = np.asarray(q, dtype=np.float64) if q else None
        self.space = space
        self.floor = threshold if not space else min(threshold, 1.0 / space)
        self.numeric = numeric
        if self.q is not None:
            # bins between quantiles, plus the 1% tails spread over BIN_SLACK times the width
            # they would have at the density of the bin next to them
            # (at least BIN_SLACK rounding steps: quantiles are stored rounded)
            q, lv = self.q, np.asarray(levels, dtype=np.float64)
            top = float(1 << 16) - 1 if not space else space - 1
            step = float(_quantile_step(int(np.log2(top + 1))))
            lo = max(0.0, q[0] - BIN_SLACK * max(step, (q[1] - q[0]) * lv[0] / (lv[1] - lv[0])))
            hi = min(top, q[-1] + BIN_SLACK * max(step, (q[-1] - q[-2]) * (1 - lv[-1]) / (lv[-1] - lv[-2])))
            self.edges = np.r_[np.floor(lo), q, np.ceil(hi)]
            self.bin_mass = self.other * np.diff(np.r_[0.0, lv, 1.0])
            self.bin_width = np.diff(self.edges) + 1

    def _other_prob(self, v: np.ndarray) -> np.ndarray:
        out = np.zeros(len(v))
        if self.other <= 0:
            return out
        if self.q is not None:
            vv = v.astype(np.float64)[:, None]
            inside = (vv >= self.edges[None, :-1]) & (vv <= self.edges[None, 1:])
            return BIN_SLACK * (inside * (self.bin_mass / self.bin_width)[None, :]).sum(axis=1)
        if self.space:
            return out + self.other / max(self.space - len(self.values), 1)
        return out

    def prob(self, v) -> np.ndarray:
        """The class's probability of each value (for values in quantile bins: the bin's
        density, times BIN_SLACK)."""
        v = np.asarray(v)
        if self.numeric:
            v = v.astype(np.int64)
            out = self._other_prob(v)
            for val, p in zip(self.values, self.p):
                out = np.where(v == val, p, out)
            return out
        lut = dict(zip(self.values, self.p))
        u, inv = np.unique(v.astype(str), return_inverse=True)
        return np.array([lut.get(s, 0.0) for s in u])[inv.reshape(-1)]

    def plausible(self, v) -> np.ndarray:
        return self.prob(v) >= self.floor

    def drawable(self) -> bool:
        """Whether ``sample`` has anything to draw: a level learnt from a few packets, each value
        in too few to be listed and too few for quantiles, has not."""
        if (self.p >= self.floor).any():
            return True
        return self.q is not None and self.numeric and \
            bool((BIN_SLACK * (self.bin_mass / self.bin_width) >= self.floor).any())

    def listed(self, value) -> bool:
        """Whether ``value`` is one of the listed values, with at least the plausible share."""
        return any(v == value and p >= self.floor for v, p in zip(self.values, self.p))

    def sample(self, rng: np.random.Generator, n: int, allow=None, minimum: int | None = None,
               u: np.ndarray | None = None) -> np.ndarray | None:
        """``n`` draws from the plausible part (listed values and dense enough quantile bins);
        ``allow(values) -> mask`` restricts the listed values (and leaves the bins out);
        ``minimum``: numbers at least this. None when nothing qualifies. ``u``: (n,) places in
        [0, 1) to draw at (inverse CDF over the values and bins in value order, numbers only), so
        that draws given near places come out near each other."""
        ok = self.p >= self.floor
        if allow is not None and len(self.values):
            ok &= np.asarray(allow(self.values), dtype=bool)
        if minimum is not None and len(self.values):
            ok &= np.asarray(self.values, dtype=np.float64) >= minimum
        w = list(np.where(ok, self.p, 0.0))
        bins = []
        if self.q is not None and self.numeric and allow is None:
            dense = BIN_SLACK * (self.bin_mass / self.bin_width) >= self.floor
            if minimum is not None:
                dense &= self.edges[1:] >= minimum
            bins = list(np.flatnonzero(dense))
            w += list(self.bin_mass[bins])
        w = np.asarray(w, dtype=np.float64)
        if n == 0:
            return np.zeros(0, dtype=np.int64 if self.numeric else object)
        if w.sum() <= 0:
            return None
        nv = len(self.values)
        if u is not None and self.numeric:
            return self._at(np.asarray(u, dtype=np.float64), w, bins, minimum)
        pick = rng.choice(len(w), size=n, p=w / w.sum())
        u = rng.random(n)
        if not self.numeric:
            return np.array(self.values, dtype=object)[pick]
        out = np.zeros(n, dtype=np.int64)
        lv = pick < nv
        out[lv] = np.asarray(self.values, dtype=np.int64)[pick[lv]]
        if bins:
            b = np.asarray(bins)[pick[~lv] - nv]
            lo, hi = self.edges[b], self.edges[b + 1]
            if minimum is not None:
                lo = np.maximum(lo, minimum)
            out[~lv] = np.floor(lo + u[~lv] * (hi - lo + 1)).clip(lo, hi).astype(np.int64)
        return out

    def _at(self, u: np.ndarray, w: np.ndarray, bins: list, minimum: int | None) -> np.ndarray:
        """``sample``'s draws at places ``u``: the listed values and the bins laid out by value,
        each as wide as its weight; a place inside a bin falls as far into its range."""
        nv = len(self.values)
        lo = np.asarray([float(v) for v in self.values] + [float(self.edges[b]) for b in bins])
        hi = np.asarray([float(v) for v in self.values] + [float(self.edges[b + 1]) for b in bins])
        if minimum is not None:
            lo = np.maximum(lo, minimum)
        order = np.lexsort((hi, lo))
        lo, hi, ww = lo[order], hi[order], w[order]
        edge = np.cumsum(ww) / ww.sum()
        k = np.minimum(np.searchsorted(edge, u, side="right"), len(ww) - 1)
        start = edge[k] - ww[k] / ww.sum()
        frac = np.clip((u - start) / np.maximum(ww[k] / ww.sum(), 1e-12), 0.0, 1.0)
        out = np.floor(lo[k] + frac * (hi[k] - lo[k] + 1)).clip(lo[k], hi[k])
        listed = order[k] < nv
        out[listed] = lo[k][listed]
        return out.astype(np.int64)


def _replace(cur: np.ndarray, rows: np.ndarray, ok: np.ndarray, group: np.ndarray, draw,
             rank=None) -> tuple[np.ndarray, np.ndarray]:
    """New values for ``rows`` whose value is not ``ok``: the group's most common ok value
    (ties: the higher ``rank(values)``, the class probability), else one ``draw(k)`` per group
    (groups in id order). Returns (values, changed rows)."""
    bad = ~ok
    if not bad.any():
        return cur, np.zeros(0, dtype=np.int64)
    gid = group[rows]
    ug, inv = np.unique(gid, return_inverse=True)
    inv = inv.reshape(-1)
    repl = np.empty(len(ug), dtype=cur.dtype)
    has = np.zeros(len(ug), dtype=bool)
    gi = np.flatnonzero(ok)
    if len(gi):
        vals = cur[rows[gi]]
        uv, vinv = np.unique(vals, return_inverse=True)      # value ids (works for strings too)
        vinv = vinv.reshape(-1)
        pair = inv[gi] * len(uv) + vinv
        up, cnt = np.unique(pair, return_counts=True)
        pg, pv = up // len(uv), up % len(uv)
        score = cnt.astype(np.float64)
        if rank is not None:
            score = score + 0.5 * np.asarray(rank(uv[pv]), dtype=np.float64)   # rank in [0, 1]
        o = np.lexsort((-score, pg))          # per group, best first
        firsts = o[np.r_[True, pg[o][1:] != pg[o][:-1]]]
        repl[pg[firsts]] = uv[pv[firsts]]
        has[pg[firsts]] = True
    need = np.unique(inv[bad])
    fresh = need[~has[need]]
    if len(fresh):
        d = draw(len(fresh))
        if d is None:           # nothing plausible to draw: keep the generated values there
            bad = bad & ~np.isin(inv, fresh)
        else:
            repl[fresh] = d
    out = cur.copy()
    out[rows[bad]] = repl[inv[bad]]
    changed = rows[bad][out[rows[bad]] != cur[rows[bad]]]
    return out, changed


class ClassPriors:
    """One class's priors bound to a seed: the hooks trace and option repair call."""

    def __init__(self, fields: dict, klass: str, rules: dict, seed: int, threshold: float,
                 levels=LEVELS, coupling: dict | None = None, openers: dict | None = None,
                 scripts: dict | None = None):
        self.fields = fields
        # {"early": [client, server], "late": [...]}: who sent the class's flows' first rows
        # (``_openers``); None: a file learnt before, whose flows take the higher port as the client
        self.openers = openers
        # statistic -> how much a flow's draws go together (``_flow_coupling``); a file learnt
        # before has none and draws each packet on its own, as it did
        self.coupling = dict(coupling or {})
        # statistic -> short flows' length sequences (``_kept_scripts``); a file learnt before has
        # none and draws lengths packet by packet, as it did
        self.scripts = dict(scripts or {})
        self.klass = klass
        self.rules = rules
        self.threshold = threshold
        self.levels = levels
        self.rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x9F1E1D])
        # a stream of its own: the other draws stay where they were
        self._opener_rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x09E4E2])
        self._script_rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x5C41F7])
        self.stats = [_learnt_by(st, fields.get(st.name, {})) for st in stats(rules)]
        self.by_name = {s.name: s for s in self.stats}
        self.changed: Counter = Counter()
        self._sizes: tuple | None = None        # (flow, direction, flow_sizes, flow_roles)
        self._paces: np.ndarray | None = None   # flow_paces of the rows ``payload`` draws for
        self._places: np.ndarray | None = None  # flow_places of the same
        self._dists: dict = {}
        self.l3 = E.layer_protocols(rules, 3)
        self.l4 = E.layer_protocols(rules, 4)

    def dist(self, name: str, cond: str = "*") -> Dist | None:
        # built once per repair: lengths by place and pace ask for the same levels again and again
        key = (name, cond)
        if key not in self._dists:
            self._dists[key] = self._build_dist(name, cond)
        return self._dists[key]

    def _build_dist(self, name: str, cond: str) -> Dist | None:
        d = self.fields.get(name, {}).get(cond)
        if d is None or "values" not in d:
            return None
        st = self.by_name.get(name)
        if st is None:
            return None
        if st.kind == "stack":
            space = len(self.l3 if st.field == "3" else self.l4)
        elif st.kind == "options":
            space = None
        else:
            space = float(1 << st.bits)
        return Dist(d, space, self.threshold, numeric=st.kind != "options", levels=self.levels)

    def _mask(self, r, protocol: str) -> np.ndarray:
        pr = self.rules[protocol]
        if pr.layer == 3:
            return r.v6 if int(pr.bind.get("version", 4)) == 6 else ~r.v6
        return r.proto == pr.number

    def report(self) -> dict:
        return {"class": self.klass, "changed": {k: v for k, v in sorted(self.changed.items()) if v}}

    def stacks(self, stacks) -> np.ndarray | None:
        """Score added per (layer 3, layer 4) stack when rows choose theirs: -inf for a stack
        the class never shows, else STACK_WEIGHT x its probability (a row whose sections are
        about equally filled, such as an all-zero or random row, takes the class's usual stack;
        a row the model painted clearly keeps its own). None without stack statistics."""
        d3, d4 = self.dist("stack.l3"), self.dist("stack.l4")
        if d3 is None or d4 is None:
            return None
        ver = {name: num for num, name in self.l3.items()}
        num = {name: n for n, name in self.l4.items()}
        a = np.array([ver.get(x, -1) for x, _ in stacks])
        b = np.array([num.get(y, -1) for _, y in stacks])
        ok = d3.plausible(a) & d4.plausible(b)
        if not ok.any():
            return None
        return np.where(ok, STACK_WEIGHT * d3.prob(a) * d4.prob(b), -np.inf)

    # --- trace hooks (trace.repair_trace) ---------------------------------------------------------

    def versions(self, v6_flow: np.ndarray) -> np.ndarray:
        """A flow whose IP version the class never shows takes the other one."""
        d = self.dist("stack.l3")
        if d is None or not (4 in self.l3 and 6 in self.l3):
            return v6_flow
        ok4, ok6 = d.plausible(np.array([4, 6]))
        flip = (v6_flow & ~ok6 & ok4) | (~v6_flow & ~ok4 & ok6)
        if flip.any():
            self.changed["stack.l3 (flows)"] += int(flip.sum())
        return v6_flow ^ flip

    def opener_serves(self, proto_f, opener_f, other_f, first_row) -> np.ndarray | None:
        """Per flow: whether the side that sent its first row is the server. Where only that
        side's port is one of the class's server ports (a DNS flow from port 53 to an ephemeral
        port), it is; otherwise drawn at the class's share for a flow first seen where this one
        is (``first_row`` within ``OPEN_EARLY_ROWS`` of the image's start or later). None: a file
        learnt before, without the shares."""
        if self.openers is None:
            return None
        early, late = (np.asarray(self.openers[k], dtype=np.float64) for k in ("early", "late"))
        if not early.sum():         # a class without such flows where it starts: its later ones
            early = late
        if not late.sum():
            late = early
        share = [x[1] / x.sum() if x.sum() else 0.0 for x in (early, late)]
        server_share = np.where(np.asarray(first_row) < OPEN_EARLY_ROWS, share[0], share[1])
        out = self._opener_rng.random(len(proto_f)) < server_share
        for num, name in sorted(self.l4.items()):
            m = np.flatnonzero(proto_f == num)
            d = self.dist(f"{name}.server_port")
            if not len(m) or d is None:
                continue
            ours, theirs = d.plausible(opener_f[m]), d.plausible(other_f[m])
            out[m] = np.where(ours != theirs, ours, out[m])
        return out

    def ports(self, proto_f, v6_f, server_f, client_f, claimed: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per flow: a server port the class never shows is drawn from its server ports, a client
        port likewise from its client ports; 5-tuples stay distinct. ``claimed``: protocol number
        -> (65536,) bool, the ports whose dissector reads a message of its own (payload
        templates): a client port is not one of them unless the class lists it as one (a value
        inside its quantile bins is not), or a DNS query from one carried no payload (both ends
        claim it: payloads.choose)."""
        server_f, client_f = server_f.copy(), client_f.copy()
        anyp = np.zeros(len(proto_f), dtype=bool)
        for num, name in sorted(self.l4.items()):
            pr = self.rules[name]
            m = proto_f == num
            if not m.any() or f"{name}.server_port" not in self.by_name:
                continue
            anyp |= m
            lo, hi = pr.field(pr.ports[0]).range or (0, (1 << 16) - 1)
            for role, arr in (("server_port", server_f), ("client_port", client_f)):
                d = self.dist(f"{name}.{role}")
                if d is None:
                    continue
                idx = np.flatnonzero(m)
                bad = idx[~d.plausible(arr[idx])]
                if len(bad):
                    v = d.sample(self.rng, len(bad))
                    if v is not None:
                        arr[bad] = np.clip(v, lo, hi)
                        self.changed[f"{name}.{role} (flows)"] += len(bad)
            # distinct flows keep distinct port pairs: later duplicates draw again
            d = self.dist(f"{name}.client_port")
            for attempt in range(64):
                key = (v6_f.astype(np.int64) << 40) | (server_f.astype(np.int64) << 20) | client_f
                key = np.where(m, key, -1 - np.arange(len(key)))
                _, first = np.unique(key, return_index=True)
                dup = np.ones(len(key), dtype=bool)
                dup[first] = False
                dup &= m
                if claimed is not None and num in claimed:
                    shown = np.isin(client_f, [] if d is None else
                                    [v for v, q in zip(d.values, d.p) if q >= d.floor])
                    dup |= m & ~shown & (client_f != server_f) & claimed[num][np.clip(client_f, 0, 65535)]
                if not dup.any():
                    break
                k = int(dup.sum())
                v = d.sample(self.rng, k) if (d is not None and attempt < 32) else None
                if v is None:
                    v = self.rng.integers(49152, 65536, size=k)
                client_f[dup] = np.clip(v, lo, hi)
        return server_f, client_f

    def payload(self, r, direction: np.ndarray, room: np.ndarray, service: np.ndarray | None = None,
                flow: np.ndarray | None = None, arrival: np.ndarray | None = None) -> None:
        """Payload lengths: the model decides whether a packet carries data, the class how much.
        Every non-empty payload gets a length drawn from the class's lengths for its direction and
        service (within the MTU); an empty one stays empty where the class lists empty payloads
        (TCP acknowledgements) and is drawn like the others where it does not (an empty DNS
        datagram). The model's own lengths are right in magnitude at best: their dependence on
        port, direction and flags is a fraction of the real one (NMI packet length x source port
        0.06 vs 0.35 on the held-back flows), and a model's 16-bit length is noisy in its low bits.
        ``service``: each row's server port (conditions that name "service"). ``flow``: each
        row's flow, for ``repeat`` (then a data packet keeps the length of its flow direction's
        previous data packet at the class's share: a retry resends its packet, RTP and bulk TCP
        send one size again and again; drawn one by one, the two packets of a BitTorrent retry
        had different lengths, 73 bytes at the median where the captures' repeat 58).
        ``arrival``: each row's time in ns, for conditions that name "pace" (without it, or
        without ``flow``, those draw at the level above) and "place" (without it: rows in image
        order)."""
        self._paces = flow_paces(flow, arrival) if flow is not None and arrival is not None else None
        self._places = None if flow is None else flow_places(
            flow, direction, arrival if arrival is not None else np.arange(len(flow)))
        self._payload_lengths(r, direction, room, service, flow)
        if flow is not None:
            for st in self.stats:
                if st.kind == "repeat":
                    self._repeat(r, st, flow, direction, room, service)
            for st in self.stats:
                if st.kind == "scripts" and st.name in self.scripts:
                    self._scripted(r, st, flow, direction, room, arrival)

    def _scripted(self, r, st: Stat, flow, direction, room, arrival) -> None:
        """A short flow's payload lengths as one: at the share of the class's flows of its size and
        ways that its kept scripts cover, one script, drawn by how many flows showed it."""
        table = self.scripts[st.name]
        grid, size, ways = short_flows(np.where(self._mask(r, st.protocol), flow, -1), direction,
                                       arrival if arrival is not None else np.arange(len(flow)))
        if not len(size):
            return
        u = self._script_rng.random((len(size), 2))      # per flow: whether scripted, which script
        combos, inv = np.unique(np.stack([size, ways], axis=1), axis=0, return_inverse=True)
        inv = inv.reshape(-1)
        new = r.payload_len.copy()
        for j, (s, w) in enumerate(combos.tolist()):
            e = table.get(script_key(s, w))
            if e is None:
                continue
            shown = np.array([x[0] for x in e["scripts"]], dtype=np.float64)
            at = np.flatnonzero((inv == j) & (u[:, 0] < shown.sum() / e["flows"]))
            if not len(at):
                continue
            pick = np.minimum(np.searchsorted(np.cumsum(shown) / shown.sum(), u[at, 1], side="right"),
                              len(shown) - 1)
            rows = grid[at, :s]
            new[rows] = np.minimum(np.array([x[1] for x in e["scripts"]], dtype=np.int64)[pick],
                                   np.maximum(room[rows], 0))
        self.changed[st.name] += int((new != r.payload_len).sum())
        r.payload_len = new

    def _repeat(self, r, st: Stat, flow, direction, room, service) -> None:
        prev = _previous_data(flow, direction, r.payload_len, self._mask(r, st.protocol))
        share = np.zeros(len(r))
        for combo, rows in _combos(self._cond(r, st, direction, service, flow), prev >= 0):
            d = self._dist_for(st, combo)
            if d is not None:
                share[rows] = d.prob(np.ones(len(rows), dtype=np.int64))
        if not share.any():         # nothing learnt (a file from before repeats): no draw either
            return
        again = (prev >= 0) & (self.rng.random(len(r)) < share)
        if not again.any():
            return
        # a run of repeats keeps the length of the packet before the run: follow the links back
        # (pointer jumping, each pass doubles the reach) to the first packet that is no repeat
        chain = np.flatnonzero(again)
        target = np.where(again, prev, np.arange(len(r)))
        while True:
            nxt = target[target]
            if (nxt == target).all():
                break
            target = nxt
        new = r.payload_len.copy()
        new[chain] = np.minimum(r.payload_len[target[chain]], np.maximum(room[chain], 0))
        self.changed[st.name] += int((new != r.payload_len).sum())
        r.payload_len = new

    def _payload_lengths(self, r, direction: np.ndarray, room: np.ndarray, service, flow=None) -> None:
        for st in self.stats:
            if st.kind != "payload":
                continue
            mask = self._mask(r, st.protocol)
            if st.by and st.by[0] not in CONDITIONS:
                learnt = self.fields.get(st.name, {})
                if learnt and not any(k.startswith(f"{st.by[0]}=") for k in learnt):
                    # a file learnt before the lengths were split by this field: as it was learnt
                    st = replace(st, by=st.by[1:] or None, empty="model")
                elif st.empty == "class":
                    self._draw_leading_flag(r, st, mask, direction, service, flow)
            place = self._flow_uniforms(flow, self.coupling.get(st.name, 0.0))
            for combo, rows in _combos(self._cond(r, st, direction, service, flow), mask):
                d = self._dist_for(st, combo)
                if d is None:
                    continue
                cur = r.payload_len
                if st.empty == "class":
                    fill = rows
                    drawn = d.sample(self.rng, len(fill), u=None if place is None else place[fill]) \
                        if len(fill) else None
                else:
                    fill = rows[(cur[rows] > 0) | (not d.listed(0))]
                    drawn = d.sample(self.rng, len(fill), minimum=1, u=None if place is None else place[fill]) \
                        if len(fill) else None
                if drawn is None:
                    continue
                new = cur.copy()
                new[fill] = drawn
                r.payload_len = np.clip(new, 0, np.maximum(room, 0))
                self.changed[st.name] += int((r.payload_len[fill] != cur[fill]).sum())

    def _flow_uniforms(self, flow: np.ndarray | None, rho: float) -> np.ndarray | None:
        """Per row, where in its cell's distribution it draws: a Gaussian copula whose rows of one
        flow correlate by ``rho`` (each row's normal is sqrt(rho) times its flow's plus
        sqrt(1 - rho) times its own). None without flows or coupling: draws as before."""
        if flow is None or rho <= 0:
            return None
        from scipy.special import ndtr

        _, fi = np.unique(np.asarray(flow), return_inverse=True)
        fi = fi.reshape(-1)
        shared = self.rng.standard_normal(int(fi.max()) + 1 if len(fi) else 0)
        own = self.rng.standard_normal(len(fi))
        return ndtr(np.sqrt(rho) * shared[fi] + np.sqrt(1 - rho) * own)

    def _draw_leading_flag(self, r, st: Stat, mask: np.ndarray, direction, service, flow=None) -> None:
        """``empty: class`` with lengths learnt by a one-bit field first (TCP's PSH): the field is
        drawn with them, at the class's share for the row's other ``by`` values (the finest level
        where both of its values were learnt: a level keeps a distribution only when it has
        enough packets, so one value missing there says nothing; at the top level it says the
        class shows only the other), so that data, PSH and length come from the class together.
        The model's PSH was far from its class's (SSH: 27-37% of generated segments, 92% of real
        ones), and lengths drawn by the model's PSH left most generated SSH segments empty (real: 9%)."""
        col = self.rules[st.protocol].column(st.by[0])
        rest = self._cond(r, st, direction, service, flow)[1:]
        for combo, rows in _combos(rest, mask):
            for depth in range(len(combo), -1, -1):
                n = [self.fields.get(st.name, {}).get(_cond_key(st.by[:depth + 1], (v,) + combo[:depth]), {})
                     .get("n", 0) for v in (0, 1)]
                if min(n) > 0:
                    break
            if sum(n) == 0:
                continue        # nothing learnt for this protocol: the model's bit stands
            new = r.f[col].copy()
            new[rows] = (self.rng.random(len(rows)) < n[1] / sum(n)).astype(new.dtype)
            self.changed[f"{st.protocol}.{st.by[0]}"] += int((new[rows] != r.f[col][rows]).sum())
            r.f[col] = new

    def flags(self, r) -> None:
        """Flag combinations the class never shows (given the SYN/ACK/FIN/RST the trace set):
        the nearest combination it shows with the same fixed flags, else the free flags off."""
        for st in self.stats:
            if st.kind != "flags":
                continue
            pr = self.rules[st.protocol]
            d = self.dist(st.name)
            mask = self._mask(r, st.protocol)
            if d is None or not mask.any() or not d.values:
                continue                # nothing the class shows often enough to judge by
            spec = pr.prior["flags"]
            names = list(spec["fields"])
            F = len(names)
            cols = [pr.column(nm) for nm in names]
            fixed = np.array([nm in spec["fixed"] for nm in names])
            free_n = int((~fixed).sum())
            rows = np.flatnonzero(mask)
            cur = np.stack([r.f[c][rows] for c in cols], axis=1).astype(np.int64)
            weights = 1 << np.arange(F - 1, -1, -1)
            code = cur @ weights
            vals = np.asarray(d.values, dtype=np.int64)
            table = (vals[:, None] >> np.arange(F - 1, -1, -1)[None, :]) & 1
            tk = (table * fixed) @ weights          # the fixed flags of each listed combination
            cond_tot = np.array([d.p[tk == k].sum() for k in tk])
            pc = np.where(cond_tot > 0, d.p / np.maximum(cond_tot, 1e-12), 0.0)
            floor = min(self.threshold, 1.0 / (1 << free_n))
            # legal per the protocol's flag table, and compatible with the row (data, ACK)
            tnames, _ = pr.flag_table()
            legal = E.flags_legal(pr, table[:, [names.index(t) for t in tnames]]) \
                if all(t in names for t in tnames) else np.ones(len(vals), bool)
            usable = (pc >= floor) & legal
            known = (code[:, None] == vals[None, :])
            ok = (known & (pc >= floor)[None, :]).any(axis=1)
            # combinations too rare to list: plausible only if the class has many of them
            unlisted = d.other / max((1 << F) - len(vals), 1) >= min(self.threshold, 1.0 / (1 << F))
            ok |= ~known.any(axis=1) & unlisted
            if ok.all():
                continue
            # the protocol file's dependencies: a flag that needs data, or another flag
            has_data = r.payload_len[rows] > 0
            compat = np.ones((len(rows), len(vals)), dtype=bool)
            for dp in pr.dependencies:
                if dp.get("field") not in names:
                    continue
                j = names.index(dp["field"])
                if dp.get("requires_payload"):
                    compat &= ~((table[:, j] == 1)[None, :] & ~has_data[:, None])
                if dp.get("requires") in names:
                    k = names.index(dp["requires"])
                    compat &= ~((table[:, j] == 1) & (table[:, k] == 0))[None, :]
            same_fixed = ((cur * fixed) @ weights)[:, None] == tk[None, :]
            cand = same_fixed & usable[None, :] & compat
            dist_h = ((cur[:, None, :] != table[None, :, :]) & ~fixed[None, None, :]).sum(axis=2)
            score = np.where(cand, dist_h * 1e6 - pc[None, :], np.inf)
            j = np.argmin(score, axis=1)
            has = np.isfinite(score[np.arange(len(rows)), j])
            new = np.where(has[:, None], table[j], np.where(fixed[None, :], cur, 0))
            new = np.where(ok[:, None], cur, new)
            changed = np.any(new != cur, axis=1)
            for i, c in enumerate(cols):
                col = r.f[c].copy()
                col[rows] = new[:, i]
                r.f[c] = col
            self.changed[st.name] += int(changed.sum())
            # fields that mean nothing without a flag (the urgent pointer) follow the new flags
            E.apply_dependencies(pr, r.f, mask, r.payload_len)

    def _cond(self, r, st: Stat, direction: np.ndarray, service: np.ndarray | None = None,
              flow: np.ndarray | None = None) -> list:
        """The arrays of ``st.by`` over the rows (no service or flow known: -1, never learnt)."""
        out = []
        for b in st.by or ():
            if b == "direction":
                out.append(direction)
            elif b == "service":
                out.append(np.full(len(r), -1, dtype=np.int64) if service is None else service)
            elif b in ("pace", "place"):
                got = self._paces if b == "pace" else self._places
                out.append(np.full(len(r), -1, dtype=np.int64) if got is None or flow is None else got)
            elif b in ("flow_size", "role"):
                if flow is None:
                    out.append(np.full(len(r), -1, dtype=np.int64))
                    continue
                # once per repair, not per statistic
                if self._sizes is None or self._sizes[0] is not flow or self._sizes[1] is not direction:
                    self._sizes = (flow, direction, flow_sizes(flow), flow_roles(flow, direction))
                out.append(self._sizes[2] if b == "flow_size" else self._sizes[3])
            else:
                out.append(r.f[self.rules[st.protocol].column(b)])
        return out

    def _plausible(self, st: Stat, combo: tuple, values: np.ndarray) -> np.ndarray:
        """Judged at the finest level learnt for the row (``_dist_for``): a TTL the class's DNS
        server never sends is replaced even if its NTP server sends it. Where that level has
        unlisted mass (values seen in too few packets or flows to be listed), a value the next
        coarser level shows may be one of them, and is kept."""
        keys = [_cond_key(st.by, combo[:k]) for k in range(len(combo), 0, -1)] if combo else ["*"]
        dists = [d for d in (self.dist(st.name, k) for k in keys) if d is not None]
        if not dists:
            return np.ones(len(values), dtype=bool)
        ok = dists[0].plausible(values)
        for finer, coarser in zip(dists, dists[1:]):
            if finer.other <= 0:
                break
            ok |= coarser.plausible(values)
        return ok

    def _dist_for(self, st: Stat, combo: tuple) -> "Dist | None":
        """The finest learnt distribution for these condition values that has something to draw
        (``Dist.drawable``): all of them, else the longest prefix (a service too rare for its
        own: its direction's). A level with nothing to draw left the model's value in place:
        generated one-packet DNS flows kept lengths of 142 bytes at the median (602 at the 90th
        percentile) where the captures' carry 63 (93), their level learnt from 5 packets."""
        if not combo:
            return self.dist(st.name)
        for depth in range(len(combo), 0, -1):
            d = self.dist(st.name, _cond_key(st.by, combo[:depth]))
            if d is not None and d.drawable():
                return d
        return None

    def _group(self, st: Stat, n, flow, direction, host) -> np.ndarray:
        if st.per == "direction":
            return flow * 2 + direction
        if st.per == "flow":
            return flow
        if st.per == "endpoint":
            return host * 2 + direction
        return np.arange(n)

    def values(self, r, flow: np.ndarray, direction: np.ndarray, host: np.ndarray,
               service: np.ndarray | None = None) -> None:
        """Every plain field prior (TTL, hop limit, TOS/traffic class, DF, window...).
        ``service``: each row's server port (conditions that name "service")."""
        n = len(r)
        for st in self.stats:
            if st.kind != "value":
                continue
            pr = self.rules[st.protocol]
            fr = pr.field(st.field)
            col = pr.column(st.field)
            mask = self._mask(r, st.protocol)
            if not mask.any() or col not in r.f:
                continue
            group = self._group(st, n, flow, direction, host)
            for combo, rows in _combos(self._cond(r, st, direction, service, flow), mask):
                d = self._dist_for(st, combo)
                if d is None:
                    continue
                cur = r.f[col]

                def draw(k, d=d, fr=fr):
                    v = d.sample(self.rng, k)
                    return v if v is None or fr.range is None else np.clip(v, *fr.range)

                new, changed = _replace(cur, rows, self._plausible(st, combo, cur[rows]), group, draw, d.prob)
                r.f[col] = new
                self.changed[st.name] += len(changed)

    def ip_ids(self, host: np.ndarray, counted: np.ndarray) -> np.ndarray:
        """IP IDs per sending host following a behaviour drawn from the class's shares: counting
        up (``counted``, repair's own), all zero, or random."""
        for st in self.stats:
            if st.kind != "id":
                continue
            d = self.fields.get(st.name, {}).get("*")
            if not d or "shares" not in d or not len(host):
                continue
            names = [b for b in ID_BEHAVIOURS if d["shares"].get(b, 0) >= self.threshold]
            if not names:
                continue
            w = np.array([d["shares"][b] for b in names], dtype=np.float64)
            nh = int(host.max()) + 1
            pick = np.asarray(names, dtype=object)[self.rng.choice(len(names), size=nh, p=w / w.sum())]
            beh = pick[host]
            rnd = self.rng.integers(0, 1 << 16, size=len(host))
            out = np.where(beh == "zero", 0, np.where(beh == "random", rnd, counted))
            self.changed[st.name] += int((out != counted).sum())
            return out
        return counted

    # --- option areas (repair, after the option walk) --------------------------------------------

    def shows_flags(self, protocol: str, names) -> bool:
        """Whether the class's segments of ``protocol`` show the flags ``names`` set together with
        none of the other fixed flags (``prior: flags: fixed``), at a plausible share."""
        st = next((s for s in self.stats if s.kind == "flags" and s.protocol == protocol), None)
        d = self.dist(st.name) if st is not None else None
        if d is None:
            return False
        spec = self.rules[protocol].prior["flags"]
        order = list(spec["fields"])
        bit = {nm: 1 << (len(order) - 1 - i) for i, nm in enumerate(order)}
        fixed = sum(bit[nm] for nm in spec["fixed"])
        want = sum(bit[nm] for nm in names)
        return any((int(v) & fixed) == want and p >= d.floor for v, p in zip(d.values, d.p))

    def opening_rows(self, r) -> np.ndarray:
        """(n,) bool: the rows whose option area has a length the class's segments show more often
        with their protocol's opening flag than without (``session: open``, learnt as option
        layouts ``by`` that flag). The structure stage draws a flow's first row with its SYN's
        layout, and the model leaves the flag off: 6 of the 175 messaging rows with the 20
        option bytes of the class's SYNs had it, so 70% of generated TCP flows of 3 packets or
        more opened without a handshake where 98% of the captures' open with one."""
        out = np.zeros(len(r), dtype=bool)
        for st in self.stats:
            pr = self.rules.get(st.protocol)
            if st.kind != "options" or pr is None or not pr.session or st.by != (pr.session["open"]["flag"],):
                continue
            attr = "ip" if pr.layer == 3 else pr.section
            optlen = getattr(r, f"{attr}_optlen", None)
            learnt = self.fields.get(st.name, {})
            if optlen is None:
                continue
            packets = {}            # option area bytes -> segments with the flag, without
            for flag in (0, 1):
                d = learnt.get(f"{st.by[0]}={flag}")
                if not d or "values" not in d:
                    continue
                n = d.get("n", 0)
                if not isinstance(n, (int, float)):
                    continue
                for v, p in zip(d["values"], d["p"]):
                    packets.setdefault(_layout_bytes(v, pr.options), [0.0, 0.0])[flag] += n * float(p)
            lengths = [b for b, (without, with_flag) in packets.items() if 0 < b and with_flag > without]
            out |= self._mask(r, st.protocol) & np.isin(optlen, lengths)
        return out

    def options(self, r, flow: np.ndarray, direction: np.ndarray,
                service: np.ndarray | None = None, bare: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Option layouts the class never shows become one it shows (the direction's own, else
        a draw) where it fits the MTU; option values (MSS, window scale) likewise. ``bare``: rows
        whose transport header the session gives without options (a refusal), left as they are.
        Returns the rows changed per protocol."""
        out = {}
        f = r.f
        n = len(r)
        for st in self.stats:
            if st.kind != "options":
                continue
            pr = self.rules[st.protocol]
            g = pr.options
            attr = "ip" if pr.layer == 3 else pr.section
            if not hasattr(r, f"{attr}_opt"):
                continue
            mask = self._mask(r, st.protocol)
            if bare is not None and pr.layer == 4:
                mask = mask & ~bare
            if not mask.any():
                continue
            vals = getattr(r, f"{attr}_opt")
            optlen = getattr(r, f"{attr}_optlen")
            before_v, before_l = vals.copy(), optlen.copy()
            mtu = np.where(r.v6, self.rules[self.l3.get(6, "ipv6")].header.get("max_total_length", 1500),
                           self.rules[self.l3.get(4, "ipv4")].header.get("max_total_length", 1500))
            ip_hl = np.where(r.v6, FIXED_BYTES["ipv6"], FIXED_BYTES["ipv4"] + r.ip_optlen)
            l4_hl = np.where(r.proto == self.rules["tcp"].number, FIXED_BYTES["tcp"] + r.tcp_optlen,
                             FIXED_BYTES["udp"])          # UDP and ICMP: 8 bytes
            fits = np.minimum(optlen + mtu - ip_hl - l4_hl - r.payload_len, g.max_bytes)
            kinds, _ = option_kinds(vals, optlen, g)
            lay = layout_keys(kinds)            # compared as keys; strings only for the class's
            cond = self._cond(r, st, direction, service, flow)
            group = self._group(st, n, flow, direction, np.zeros(n, dtype=np.int64))
            known = {k.kind: k for k in g.kinds}

            def size(s: str) -> int:
                return _layout_bytes(s, g)

            target = lay.copy()
            names: dict[int, str] = {}
            for combo, rows in _combos(cond, mask):
                d = self._dist_for(st, combo)
                if d is None or not d.values:
                    continue
                keys = np.array([_layout_key(v) for v in d.values], dtype=np.uint64)
                names.update(zip(keys.tolist(), d.values))
                by_key = dict(zip(keys.tolist(), d.p))
                good = keys[d.p >= d.floor]

                def draw(k, d=d, keys=keys):
                    v = d.sample(self.rng, k, allow=lambda vs: [size(x) <= g.max_bytes for x in vs])
                    return None if v is None else keys[[d.values.index(x) for x in v]]

                target, _ = _replace(target, rows, np.isin(lay[rows], good), group, draw,
                                     lambda ks, by_key=by_key: [by_key.get(int(x), 0.0) for x in ks])
            want = np.flatnonzero(mask & (target != lay))
            sizes = {int(k): size(names[int(k)]) for k in np.unique(target[want])}
            want = want[np.array([sizes[int(target[i])] for i in want], dtype=np.int64) <= fits[want]] \
                if len(want) else want
            vals = vals.copy()
            optlen = optlen.copy()
            for key in np.unique(target[want]).tolist():
                s = names[int(key)]
                rows = want[target[want] == key]
                block = vals[rows].copy()
                pos = 0
                for k in ([int(x) for x in s.split(",")] if s else []):
                    kk = known[k]
                    block[:, pos] = k
                    if kk.lengths == (1,):
                        pos += 1
                    else:
                        block[:, pos + 1] = min(kk.lengths)
                        pos += min(kk.lengths)
                block[:, pos:] = 0
                vals[rows] = block
                optlen[rows] = sizes[int(key)]
            if want.size:
                self.changed[st.name] += len(want)
            # option values the class never shows
            for vs in self.stats:
                if vs.kind != "option_value" or vs.protocol != st.protocol:
                    continue
                d = self.dist(vs.name)
                if d is None:
                    continue
                k = g.kind(vs.field)
                kinds, starts = option_kinds(vals, optlen, g)
                hit = (kinds == k.kind) & mask[:, None]
                first = np.where(hit.any(axis=1), hit.argmax(axis=1), -1)
                rows = np.flatnonzero(first >= 0)
                if not len(rows):
                    continue
                at = starts[rows, first[rows]].astype(np.int64) + 2
                nb = k.value_bits // 8
                cur = np.zeros(n, dtype=np.int64)
                v = np.zeros(len(rows), dtype=np.int64)
                for b in range(nb):
                    v = (v << 8) | vals[rows, np.minimum(at + b, vals.shape[1] - 1)]
                cur[rows] = v
                new, changed = _replace(cur, rows, d.plausible(v), group,
                                        lambda q, d=d: d.sample(self.rng, q), d.prob)
                if k.value_range is not None:
                    new = np.clip(new, *k.value_range)
                for b in range(nb):
                    vals[rows, np.minimum(at + b, vals.shape[1] - 1)] = (new[rows] >> (8 * (nb - 1 - b))) & 0xFF
                self.changed[vs.name] += len(changed)
            touched = np.flatnonzero(np.any(vals != before_v, axis=1) | (optlen != before_l))
            if len(touched):        # the option grammar once more, on the rows changed here
                flags = {nm: f[pr.column(nm)][touched] == 1 for nm in g.flag_names()}
                vals[touched], _ = E.walk_options(g, vals[touched], optlen[touched], flags)
            setattr(r, f"{attr}_opt", vals)
            setattr(r, f"{attr}_optlen", optlen)
            out[st.protocol] = mask & (np.any(vals != before_v, axis=1) | (optlen != before_l))
        return out


__all__ = ["FieldPriors", "ClassPriors", "PriorsLearner", "Dist", "Stat", "stats", "FORMAT",
           "option_kinds", "layout_strings"]
