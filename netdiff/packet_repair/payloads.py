"""Application payloads from the templates of ``protocol_rules/payloads/*.yaml``.

A row's payload is the message of the template its ports select: the lower port's template
first (tshark hands a payload to the lower port's dissector first), then the higher port's,
then the transport's measured default. A template ``sent_by: client`` serves the rows sent to
its port (a DNS query), ``sent_by: server`` the rows sent from it (the answer), and the others
both ways. A row between two ports that both have a template
carries no payload: the lower port's dissector may decline its own message at the row's length
and the higher port's dissector then calls it malformed (measured: about one such pair in ten
fails at some length, `benchmarks/port_sweep.py --pairs`). A template of whole records
(``step``) moves the length to the nearest whole number of them that fits; an ``empty`` template
(a port where no content measured passes) leaves the row without payload. A template whose
``min_length`` the row's length does not reach is passed over, unless the length is below its
``grow_below`` (lengths at which measurement found no content that port's dissector accepts):
then the length grows to ``min_length``. Where the layout carries generated payload bytes they
are kept and only the ``compute:`` fields (lengths, framing) are written.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from netdiff.rules import engine as E

NONE = -1


@dataclass(frozen=True)
class PayloadTable:
    """The loaded templates and, per transport protocol number, which ones serve each port."""

    templates: tuple
    serves: dict          # protocol number -> (k, 65536) template indices (NONE), file order,
                          # for rows sent to the port
    answers: dict         # the same for rows sent from the port
    default: dict         # protocol number -> template index

    def claimed(self) -> dict:
        """Protocol number -> (65536,) bool: the ports some template reads a message for."""
        return {n: (self.serves[n] != NONE).any(axis=0) | (self.answers[n] != NONE).any(axis=0)
                for n in self.serves}

    def limits(self) -> tuple[np.ndarray, ...]:
        """(min_length, max_length, grow_below, fixed bytes, step, empty) per template (no
        maximum: a huge one)."""
        t = self.templates
        return (np.array([x.min_length for x in t], np.int64),
                np.array([x.max_length if x.max_length is not None else 1 << 30 for x in t], np.int64),
                np.array([x.grow_below for x in t], np.int64),
                np.array([x.fixed for x in t], np.int64), np.array([x.step for x in t], np.int64),
                np.array([x.empty for x in t], bool))


@lru_cache(maxsize=4)
def _table(templates: tuple, numbers: tuple) -> PayloadTable:
    serves, answers, default = {}, {}, {}
    for name, number in numbers:
        by_way = {"client": [], "server": []}     # rows sent to the port, rows sent from it
        for i, t in enumerate(templates):
            if name not in t.transports:
                continue
            if t.default:
                default[number] = i
                continue
            ports = np.asarray(t.ports, dtype=np.int64)
            for way, layers in by_way.items():
                if t.sent_by not in ("any", way):
                    continue
                for layer in layers:        # the first layer where every port of it is free
                    if (layer[ports] == NONE).all():
                        layer[ports] = i
                        break
                else:
                    layers.append(np.full(65536, NONE, dtype=np.int64))
                    layers[-1][ports] = i
        k = max(1, *(len(v) for v in by_way.values()))
        stacked = {w: np.stack(v + [np.full(65536, NONE, np.int64)] * (k - len(v)))
                   for w, v in by_way.items()}
        serves[number], answers[number] = stacked["client"], stacked["server"]
    return PayloadTable(templates, serves, answers, default)


def payload_table(rules: dict, templates: tuple | None = None) -> PayloadTable:
    """Templates (default: the rules folder's ``payloads/``) indexed for ``choose``."""
    templates = templates if templates is not None else E.load_payloads(rules=rules)
    numbers = tuple(sorted((name, rules[name].number) for name in
                           {x for t in templates for x in t.transports}))
    return _table(templates, numbers)


def choose(table: PayloadTable, proto: np.ndarray, sport: np.ndarray, dport: np.ndarray,
           length: np.ndarray, room: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(template index per row, payload length per row). ``room``: the longest payload each row
    may grow to (its MTU). Rows without a template (ICMP) get NONE and keep their length."""
    n = len(proto)
    pick = np.full(n, NONE, dtype=np.int64)
    length = np.asarray(length, dtype=np.int64).copy()
    lo, hi = np.minimum(sport, dport), np.maximum(sport, dport)
    t_min, t_max, t_grow, t_fixed, t_step, t_empty = table.limits()
    for number in table.serves:
        rows = proto == number
        if not rows.any():
            continue
        # each port's templates for the way the row goes: to it (serves) or from it (answers)
        at = [np.where((sport == port) & (sport != dport), table.answers[number][:, np.where(rows, port, 0)],
                       table.serves[number][:, np.where(rows, port, 0)]) for port in (lo, hi)]
        # Both ports with a template: both dissectors want their own message, the lower port's
        # reads first and may decline (what it declines, the higher one's may call malformed:
        # SNMP then kpasswd, SMUX then NDPS, DNS reading a 5000/udp fill): the row carries none.
        owns = [(layers != NONE).any(axis=0) for layers in at]
        # One port on both ends (SIP 5060 -> 5060, T.38 2944 -> 2944) is one dissector: its message.
        both = rows & owns[0] & owns[1] & (lo != hi)
        length = np.where(both, 0, length)
        for layers in at:
            for t in layers:
                owned = rows & (pick == NONE) & (t != NONE) & (length > 0)
                if not owned.any():
                    continue
                # A port whose dissector no measured content satisfies: the row carries none.
                drop = owned & t_empty[t]
                length = np.where(drop, 0, length)
                pick[drop] = t[drop]
                owned &= ~drop
                grow = owned & (length < t_grow[t]) & (room >= t_min[t])
                length = np.where(grow, t_min[t], length)
                fits = owned & (length >= t_min[t]) & (length <= t_max[t])
                # A message of whole records (step): the length grows to the next one, or, past
                # the row's room, shrinks to the one before.
                step = t_step[t]
                up = length + (-(length - t_fixed[t])) % step
                whole = np.where(up <= room, up, up - step)
                length = np.where(fits & (whole >= t_min[t]), whole, length)
                fits &= (length - t_fixed[t]) % step == 0
                pick[fits] = t[fits]
        pick[rows & (pick == NONE)] = table.default[number]
    return pick, length


def render(table: PayloadTable, pick: np.ndarray, length: np.ndarray, body: np.ndarray,
           keep: np.ndarray | None = None) -> None:
    """Write each row's message into ``body`` (n, width) in place. Rows of ``keep`` (generated
    payload bytes) get only their computed fields."""
    for i in np.unique(pick[pick != NONE]):
        t = table.templates[i]
        rows = np.flatnonzero((pick == i) & (length >= t.fixed))   # SYN/RST rows carry none
        kept = np.zeros(len(rows), bool) if keep is None else keep[rows]
        _write(t, rows, length[rows], body, kept)


def _write(t, rows: np.ndarray, length: np.ndarray, body: np.ndarray, kept: np.ndarray) -> None:
    width = body.shape[1]
    fill_len = length - t.fixed
    # Entry offsets: the fill's size varies per row, so entries after it move with the length.
    starts, sizes, at = {}, {}, np.zeros(len(rows), dtype=np.int64)
    for p in t.parts:
        size = fill_len if p.fill else np.full(len(rows), len(p.data) + p.width, dtype=np.int64)
        starts[p.name], sizes[p.name] = at, size
        at = at + size
    for p in t.parts:
        start = starts[p.name]
        if p.compute is not None:
            covered = length - start - p.width if not p.covers else \
                sum(length if c == E.WHOLE_MESSAGE else sizes[c] for c in p.covers)
            _put(body, rows, start, _length_bytes(p, covered), width)
        elif kept.all():
            continue
        elif p.data:
            data = np.broadcast_to(np.frombuffer(p.data, np.uint8), (len(rows), len(p.data)))
            _put(body, rows[~kept], start[~kept], data[~kept], width)
        else:
            _fill(body, rows[~kept], start[~kept], sizes[p.name][~kept], p)


def _length_bytes(p, covered: np.ndarray) -> np.ndarray:
    v = np.asarray(covered, dtype=np.int64)
    if p.compute == "ber_length":           # long form: 0x82, then two bytes
        out = np.stack([np.full(len(v), 0x82), (v >> 8) & 0xFF, v & 0xFF], axis=1)
    else:
        out = np.stack([(v >> (8 * (p.width - 1 - k))) & 0xFF for k in range(p.width)], axis=1)
    return out.astype(np.uint8)


def _put(body, rows, start, data, width) -> None:
    if not len(rows) or not data.shape[1]:
        return
    col = start[:, None] + np.arange(data.shape[1])[None, :]
    ok = col < width
    body[np.broadcast_to(rows[:, None], col.shape)[ok], col[ok]] = data[ok]


def _fill(body, rows, start, size, p) -> None:
    """The fill pattern over [start, start + size); with ``chunks`` every chunks + 1 bytes
    start a character string with its length (the last one shorter)."""
    pattern = np.frombuffer(p.fill, np.uint8)
    if not len(rows) or (not p.chunks and not pattern.any() and not body[rows].any()):
        return                  # zeros over zeros: the default's fill costs nothing
    # The fill starts at the same offset in every row (only the fill varies in size): one row
    # of the pattern, cut per row by a mask, then each row's last string gets its own length.
    s0 = int(start[0])
    hi = int(min((start + size).max(), body.shape[1]))
    if hi <= s0:
        return
    t = np.arange(hi - s0)
    if p.chunks:
        step = p.chunks + 1
        row = np.where(t % step == 0, p.chunks, pattern[(t % step - 1) % len(pattern)])
    else:
        row = pattern[t % len(pattern)]
    inside = t[None, :] < size[:, None]
    body[rows, s0:hi] = np.where(inside, row.astype(np.uint8)[None, :], body[rows, s0:hi])
    if p.chunks:
        last = (np.maximum(size, 1) - 1) // step * step       # where each row's last string starts
        ok = (size > 0) & (s0 + last < body.shape[1])
        body[rows[ok], s0 + last[ok]] = (size[ok] - last[ok] - 1).astype(np.uint8)
