"""Inter-arrival times learnt per traffic class, used to stamp repaired packets.

The model keeps, per class, quantiles of log10(gap in seconds) (zero gaps counted apart, since
captures often hold packets with the same timestamp). Sampling is inverse-CDF with linear
interpolation between quantiles: cheap, deterministic with a seed, and the file is a small JSON
that travels with the dataset or model.

Besides the 101 even quantiles, the model keeps the ones at 1/n and 1 - 1/n (n gaps): with even
quantiles only, the last one-percent interval stretched from the 99th percentile to the largest
gap, so one stray timestamp in a training capture (a gap of 10^8 s in the shared voip and
video_streaming captures) gave one generated gap in a hundred anywhere up to years. The outer
intervals now carry the weight the extreme gaps have in the data, 1/n each.

Gaps depend on what the packet after them does (format netdiff-timing/3; /4 tells answers
apart). In the shared captures the long idle gaps come where every flow has ended and a new one
opens (ssh: median gap 0.3 ms inside a connection, hours before the next; messaging: 9 ms
before a new flow while others go on, 15 minutes when all have ended), so gaps drawn from one
pool gave a 128-packet ssh flow a duration of days, and gaps drawn per "new flow" only still
stretched messaging flows across idle periods that real ones never span. Per class the model also keeps quantiles per *kind* of
packet (``KINDS``, ``gap_kinds``), learnt from the captures' 5-tuples at ``pcap2img``; repair
passes the kinds of its rows, from the flows it traced. A kind seen fewer than ``MIN_KIND``
times uses the class's pooled quantiles (a break: the new-flow ones, when learnt).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from netdiff.errors import NetdiffError
from netdiff.io.jsonfile import read_json_file
from netdiff.io.atomic import atomic_write_text

N_QUANTILES = 101
MIN_GAP = 1e-9
FORMAT = "netdiff-timing/6"
# /1: even quantiles only; /2: no kinds; /3: no turned kinds; /4: no short flows; /5: short
# flows by gap to the previous packet (read without them: their tables mean something else)
READS = ("netdiff-timing/1", "netdiff-timing/2", "netdiff-timing/3", "netdiff-timing/4",
         "netdiff-timing/5", FORMAT)
# The packet after a gap: opens a flow while an earlier one goes on, follows its own flow's last
# packet, goes back to another flow, or opens a flow after every earlier one has ended; "same" and
# "other" when it runs the way its flow's last packet ran, "same_turn" and "other_turn" when it
# runs against it (an answer: in the shared captures a DNS answer follows its query by a median
# 33 ms, a repeated query by 2 s; VoIP packets in one direction 0.5 ms apart, turns 30 ms).
KINDS = ("new", "same", "other", "break", "same_turn", "other_turn")
# a file learnt before a kind existed draws its gaps from the kind it was counted in then
FALLBACK = {"break": "new", "same_turn": "same", "other_turn": "other"}
MIN_KIND = 8
# A short-flow table (``short_cell``) is kept from this many offsets: BitTorrent's flows of 10
# packets, DNS's of 5 and 7 had fewer than 8 last packets in the training side, and went by the
# row clock (BitTorrent's flows of 5-16 packets lasted over 3.05 s in 48% of the generated ones,
# 35% of its training flows). In distribution, eight repair draws of stop 43's images: flow
# size-duration 0.0587 at 8, 0.0570 at 6, 0.0565 at 4, 0.0574 at 3; unseen captures unmoved
# (0.3894 -> 0.3903 +- 0.002; docs/results.md, stop 43).
MIN_SHORT = 4
# A flow of at most SHORT_MAX packets (in a block, in an image) is short: on its own clock. Was 4
# until stop 36: the structure stage spreads a generated flow over more rows than real ones span,
# and flows of 5-16 packets timed by the rows between them lasted too long (DNS's 8-15-packet
# flows 2.4-4.0 s at the median, the held-back ones 1.9); with 16, flow size-duration in
# distribution 0.084 / 0.085 -> 0.081 / 0.083 and inter-arrival EMD 0.436 / 0.431 -> 0.411 / 0.407
# (docs/results.md). A file learnt before has tables up to 4 packets and places the flows it did.
SHORT_MAX = 16
_SHORT_BEFORE = 4
_SHORT_KEY = re.compile(r"n\d+ k\d+( (turn|same))?( d\d+)?")     # short_cell's keys
SHORT_BLOCK = 1024   # captures are read in blocks of this many packets to learn short flows
# Answers of every flow size and place pooled by the rows since their flow's first packet (keys
# "n0 k0 turn dB"): an answer whose own cell (size, place, rows) is too rare was drawn from its
# size and place over all rows, and the rows say how long it took: DNS answers one row on come
# within 24 ms, 16-31 rows on after 0.2-12 s. On the real windows re-stamped flow size-duration
# 0.0615 -> 0.0593 (six draws), generated inter-arrival EMD 0.407 / 0.402 -> 0.381 / 0.372 (floor
# 0.365; docs/results.md, stop 38). Not for one-way packets: generated BitTorrent retries sit
# fewer rows on than real ones, and by the rows they were drawn short (its flow size-duration
# 0.157 -> 0.229). Files learnt before have no such cells and draw as they did.
ANY = 0
# A packet more rows after its flow's first than any packet of its size, place and turn in the
# captures (a size-place-turn table's "rows": the largest row bucket it was learnt from) was put
# there by a slow walk, not by a slow network: it takes the table of the latest rows its size and
# place learnt. The walks answer BitTorrent's two-datagram exchanges a median 11 rows on where its
# captures answer 6 (none past 63), and by the rows (``ANY``) over half of them took more than
# 0.5 s where nine in ten training ones took under 0.27. In distribution, eight repair draws each
# of two generated sets: flow size-duration 0.0565 / 0.0574 -> 0.0550 / 0.0561 (docs/results.md,
# stop 44). Files learnt before have no "rows" and draw as they did.
LATE_WALKS = "rows"


class TimingModel:
    def __init__(self, classes: dict[str, dict] | None = None):
        # class -> {"q": [log10 quantiles], "p": [their probabilities, 0..1; absent: N_QUANTILES
        # even ones], "p_zero": float, "count": int, "kinds": {kind: the same without "kinds"},
        # "short": {short_cell(...): the same, of offsets from the flow's first packet}}
        self.classes: dict[str, dict] = classes or {}

    # --- learning -------------------------------------------------------------------------------
    @classmethod
    def learn(cls, gaps_by_class: dict[str, list[np.ndarray]],
              kinds_by_class: dict[str, list[np.ndarray]] | None = None,
              short_by_class: dict[str, list[np.ndarray]] | None = None) -> "TimingModel":
        """``{class: [inter-arrival seconds of capture 1, of capture 2, ...]}`` -> model.
        ``kinds_by_class``: the same shape, each gap's kind (an index into ``KINDS``, -1 unknown:
        ``gap_kinds``). ``short_by_class``: ``{class: [short_flow_offsets of a block, ...]}``."""
        model = cls()
        for klass, arrays in gaps_by_class.items():
            gaps = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays]) \
                if arrays else np.zeros(0)
            kinds = None
            if kinds_by_class is not None and klass in kinds_by_class:
                kinds = np.concatenate([np.asarray(k, dtype=np.int64).ravel() for k in kinds_by_class[klass]]) \
                    if arrays else np.zeros(0, dtype=np.int64)
                if len(kinds) != len(gaps):
                    raise ValueError(f"class {klass}: {len(kinds)} gap kinds for {len(gaps)} gaps")
            ok = np.isfinite(gaps) & (gaps >= 0)
            if not ok.any():
                continue
            entry = _quantiles(gaps[ok])
            if kinds is not None:
                by_kind = {}
                for i, name in enumerate(KINDS):
                    mine = ok & (kinds == i)
                    if mine.sum() >= MIN_KIND:
                        by_kind[name] = _quantiles(gaps[mine])
                if by_kind:
                    entry["kinds"] = by_kind
            if short_by_class and short_by_class.get(klass):
                short = _short_cells(np.concatenate(short_by_class[klass]))
                if short:
                    entry["short"] = short
            model.classes[str(klass)] = entry
        if not model.classes:
            raise NetdiffError("timing model: no inter-arrival times to learn from")
        return model

    @classmethod
    def learn_from_sidecars(cls, paths) -> "TimingModel":
        """Learn from image sidecar JSON files ("class", "packets.ts_sec/ts_nsec")."""
        by_class: dict[str, list[np.ndarray]] = {}
        for p in paths:
            try:
                doc = json.loads(Path(p).read_text())
                klass = str(doc["class"])
                sec = np.asarray(doc["packets"]["ts_sec"], dtype=np.int64)
                nsec = np.asarray(doc["packets"]["ts_nsec"], dtype=np.int64)
            except FileNotFoundError:
                raise NetdiffError(f"{p}: no such sidecar file") from None
            except (ValueError, KeyError, TypeError) as e:
                raise NetdiffError(f"{p}: not a netdiff image sidecar (needs 'class' and "
                                   f"'packets.ts_sec/ts_nsec'; {e.__class__.__name__}: {e})") from None
            if len(sec) != len(nsec):
                raise NetdiffError(f"{p}: ts_sec and ts_nsec differ in length")
            if len(sec) > 1:
                t = sec * 1_000_000_000 + nsec
                by_class.setdefault(klass, []).append(np.diff(t) / 1e9)
        return cls.learn(by_class)

    # --- persistence ----------------------------------------------------------------------------
    def save(self, path) -> None:
        atomic_write_text(path, json.dumps({"format": FORMAT, "classes": self.classes}, indent=1))

    @classmethod
    def load(cls, path) -> "TimingModel":
        doc = read_json_file(path, "timing model")
        if not isinstance(doc, dict) or doc.get("format") not in READS:
            raise NetdiffError(f"{path}: not a netdiff timing model (format {FORMAT!r} expected)")
        classes = doc.get("classes", {})
        if not isinstance(classes, dict):
            raise NetdiffError(f"{path}: 'classes' is not a mapping")
        for k, c in classes.items():
            kinds = c.get("kinds", {}) if isinstance(c, dict) else None
            short = c.get("short", {}) if isinstance(c, dict) else None
            if not isinstance(kinds, dict) or set(kinds) - set(KINDS) or not isinstance(short, dict) \
                    or not all(isinstance(key, str) and _SHORT_KEY.fullmatch(key) for key in short) \
                    or not all(_well_formed(e) for e in [c, *kinds.values(), *short.values()]):
                raise NetdiffError(f"{path}: class {k!r} is malformed")
        if doc["format"] != FORMAT:
            for c in classes.values():
                c.pop("short", None)
        return cls(doc["classes"])

    # --- sampling -------------------------------------------------------------------------------
    def gaps(self, n: int, klass: str | None = None, seed: int = 0,
             kinds: np.ndarray | None = None) -> np.ndarray:
        """``n`` inter-arrival times (seconds) for a class; the pooled model for an unknown or
        missing class. ``kinds``: (n,) the kind of the packet after each gap (``gap_kinds``;
        -1 or a kind the class has no quantiles for: the class's own)."""
        rng = np.random.default_rng(seed)
        if klass is not None and klass in self.classes:
            c = self.classes[klass]
        else:
            c = self._pooled()
        u, z = rng.random(n), rng.random(n)
        tables = [c]                              # 0: the class's own; 1 + i: KINDS[i]'s
        which = np.zeros(n, dtype=np.int64)
        if kinds is not None:
            kinds = np.asarray(kinds, dtype=np.int64)
            if kinds.shape != (n,):
                raise ValueError(f"{kinds.shape} gap kinds for {n} gaps")
            own = c.get("kinds", {})
            tables += [own.get(name, own.get(FALLBACK.get(name, ""), c)) for name in KINDS]
            which = np.where((kinds >= 0) & (kinds < len(KINDS)), kinds + 1, 0)
        out = np.empty(n)
        zero = np.zeros(n, dtype=bool)
        for i in np.unique(which):
            m = which == i
            q = np.asarray(tables[i]["q"], dtype=np.float64)
            p = np.asarray(tables[i].get("p", np.linspace(0, 1, len(q))), dtype=np.float64)
            out[m] = 10.0 ** np.interp(u[m], p, q)
            zero[m] = z[m] < tables[i]["p_zero"]
        out[zero] = 0.0
        return out

    def arrival_ns(self, flows: np.ndarray, sides: np.ndarray, klass: str | None = None,
                   seed: int = 0) -> np.ndarray:
        """(n,) int64 arrival time of each packet, in ns after the first, for packets in row
        order whose flow keys are ``flows`` (-1: not parsed) and directions ``sides``. The row
        clock (``gaps`` for each packet's kind) places every packet; the later packets of a short
        flow (at most ``SHORT_MAX`` packets here) are then placed at their flow's first packet's
        time plus an offset of the class's short flows, when the class has learnt them: none later
        than the flow's last packet, none before the packet ahead of it. Times grow along every
        flow, not always down the rows: sort by them to write a capture."""
        f = np.asarray(flows, dtype=np.int64).ravel()
        side = np.asarray(sides).ravel()
        n = len(f)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        gaps = self.gaps(n - 1, klass, seed, kinds=gap_kinds(f, sides=side))
        t = np.concatenate([[0], np.cumsum(np.rint(gaps * 1e9).astype(np.int64))])
        short = self.classes.get(klass, {}).get("short") if klass is not None else None
        if not short:
            return t
        prev, first, position, size = _places_in_flow(f)
        later = np.flatnonzero((prev >= 0) & (size <= _short_limit(short)))
        if not len(later):
            return t
        # one table per (packets, place, turn, rows since the first) seen here, the finest learnt
        cell = np.stack([size[later], position[later], side[later] != side[prev[later]],
                         _row_bucket(later - first[later])], axis=1)
        combos, which = np.unique(cell, axis=0, return_inverse=True)
        tables = [_short_key(short, *(int(x) for x in combo)) for combo in combos]
        rng = np.random.default_rng([seed, 5])
        u, z = rng.random(len(later)), rng.random(len(later))
        own = np.zeros(len(later), dtype=np.int64)
        placed = np.zeros(len(later), dtype=bool)
        for j, key in enumerate(tables):
            if key is None:
                continue
            m = which.reshape(-1) == j
            table = short[key]
            q = np.asarray(table["q"], dtype=np.float64)
            p = np.asarray(table.get("p", np.linspace(0, 1, len(q))), dtype=np.float64)
            g = np.where(z[m] < table["p_zero"], 0.0, 10.0 ** np.interp(u[m], p, q))
            own[m] = np.rint(g * 1e9).astype(np.int64)
            placed[m] = True
        # The flow's last packet sets when it ends: no packet before it goes later. Drawn place
        # by place alone, the end was the latest of the flow's draws, and the more packets the
        # later: messaging's 5-8-packet flows lasted 0.47 s at the median where the real ones
        # last 0.36, BitTorrent's 9-16-packet ones 4.0 s where they last 2.6 (docs/results.md,
        # stop 37).
        ends = (position[later] == size[later] - 1) & placed
        end = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
        end[first[later[ends]]] = own[ends]
        own = np.minimum(own, end[first[later]])
        # each later packet at its own offset from the flow's first (a retry timer fixes when the
        # last retry goes, whenever the one between went: BitTorrent's three tries at 0, 0.5-1.5
        # and 3 s), never before the packet ahead of it; place by place, so that one sits where
        # it belongs
        rows, own = later[placed], own[placed]
        for k in range(1, SHORT_MAX):
            m = position[rows] == k
            r = rows[m]
            t[r] = np.maximum(t[first[r]] + own[m], t[prev[r]])
        return t

    def _pooled(self) -> dict:
        if not self.classes:
            return DEFAULT_CLASS
        w = np.array([c["count"] for c in self.classes.values()], dtype=np.float64)
        even = np.linspace(0, 1, N_QUANTILES)
        qs = np.array([np.interp(even, c.get("p", even), c["q"]) for c in self.classes.values()])
        pz = np.array([c["p_zero"] for c in self.classes.values()])
        # Mixture approximated by weighted quantile averaging: adequate for stamping.
        return {"q": list((w[:, None] * qs).sum(0) / w.sum()), "p_zero": float((w * pz).sum() / w.sum())}


def _quantiles(gaps: np.ndarray) -> dict:
    pos = gaps[gaps > 0]
    p = quantile_levels(len(pos))
    q = (np.quantile(np.log10(np.maximum(pos, MIN_GAP)), p) if len(pos) else np.full(len(p), -6.0))
    return {"q": [round(float(x), 6) for x in q], "p": [round(float(x), 9) for x in p],
            "p_zero": float(1 - len(pos) / len(gaps)), "count": int(len(gaps))}


def short_flow_offsets(flows: np.ndarray, sides: np.ndarray, times_ns: np.ndarray) -> np.ndarray:
    """(m, 5) float64, one row per later packet of a flow with at most ``SHORT_MAX`` packets
    among ``flows`` (a block of a capture, in order): the flow's packets, the packet's place in
    it (1 the second), 1 where it runs against its flow's previous packet, the log2 bucket of how
    many rows after the flow's first packet it comes (``_row_bucket``), and its time after that
    first packet in seconds."""
    f = np.asarray(flows, dtype=np.int64).ravel()
    t = np.asarray(times_ns, dtype=np.int64).ravel()
    side = np.asarray(sides).ravel()
    if not (len(f) == len(t) == len(side)):
        raise ValueError(f"{len(f)} flows, {len(side)} sides, {len(t)} times")
    prev, first, position, size = _places_in_flow(f)
    later = np.flatnonzero((prev >= 0) & (size <= SHORT_MAX))
    since = (t[later] - t[first[later]]) / 1e9
    ok = since >= 0
    later, since = later[ok], since[ok]
    return np.stack([size[later], position[later], side[later] != side[prev[later]],
                     _row_bucket(later - first[later]), since], axis=1).astype(np.float64) \
        if len(later) else np.zeros((0, 5))


def short_cell(size: int, position: int, turn: bool | None = None, bucket: int | None = None) -> str:
    """Key of a short-flow table: the packet at ``position`` (1: the second) of a flow of
    ``size`` packets, turning against the packet before it or not, ``bucket`` (log2) rows after
    the flow's first packet; coarser without the last ones."""
    parts = [f"n{size}", f"k{position}"] + ([] if turn is None else ["turn" if turn else "same"]) + \
        ([] if bucket is None else [f"d{bucket}"])
    return " ".join(parts)


def _short_cells(rows: np.ndarray) -> dict:
    """Quantile tables of ``short_flow_offsets`` rows, for every cell and its coarser ones seen at
    least ``MIN_SHORT`` times, and for answers of any size and place by their rows (``ANY``)."""
    out = {}
    size, place, turn, bucket = (rows[:, i].astype(int) for i in range(4))
    since = rows[:, 4]
    cells = set()
    for s, k, u, b in zip(size.tolist(), place.tolist(), turn.tolist(), bucket.tolist()):
        cells |= {(s, k, None, None), (s, k, bool(u), None), (s, k, bool(u), b)}
        if u:
            cells.add((ANY, ANY, True, b))
    for s, k, u, b in sorted(cells, key=lambda c: (c[0], c[1], c[2] is not None, c[2] or False,
                                                  -1 if c[3] is None else c[3])):
        m = (size == s) & (place == k) if s != ANY else np.ones(len(size), dtype=bool)
        if u is not None:
            m &= turn == int(u)
        if b is not None:
            m &= bucket == b
        if m.sum() >= MIN_SHORT:
            out[short_cell(s, k, u, b)] = _quantiles(since[m])
            if s != ANY and u is not None and b is None:
                out[short_cell(s, k, u)][LATE_WALKS] = int(bucket[m].max())
    return out


def _short_key(short: dict, size: int, position: int, turn: int, bucket: int) -> str | None:
    """The finest table of ``short`` for a packet (None: the class learnt none for its place).
    An answer whose own cell is missing goes by the rows since its flow's first packet before
    anything else (``ANY``), unless it comes more rows on than every packet of its size, place and
    turn in the captures: then the table of the latest rows they were learnt at (``LATE_WALKS``)."""
    way = short_cell(size, position, bool(turn))
    keys = [short_cell(size, position, bool(turn), bucket), way, short_cell(size, position)]
    learnt = [b for b in range(bucket) if short_cell(size, position, bool(turn), b) in short]
    if learnt and bucket > short.get(way, {}).get(LATE_WALKS, bucket):
        return short_cell(size, position, bool(turn), max(learnt))
    if turn and keys[-1] in short:
        keys.insert(1, short_cell(ANY, ANY, True, bucket))
    for key in keys:
        if key in short:
            return key
    return None


def _short_limit(short: dict) -> int:
    """The largest flow a class's tables place on its own clock: the largest it learnt, at least
    the 4 packets files learnt before stop 36 were drawn with (they place the same flows)."""
    learnt = [int(k.split()[0][1:]) for k in short]
    return min(SHORT_MAX, max([_SHORT_BEFORE, *learnt]))


def _places_in_flow(f: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per packet: the previous packet of its flow (-1: none, or a key of -1: no flow), its flow's
    first packet, its place in the flow (0 the first) and its flow's size."""
    _, inv, counts = np.unique(f, return_inverse=True, return_counts=True)
    inv = inv.reshape(-1)
    order = np.lexsort((np.arange(len(f)), inv))      # each flow's packets together, in order
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    position = np.empty(len(f), dtype=np.int64)
    position[order] = np.arange(len(f)) - np.repeat(starts, counts)
    prev = np.full(len(f), -1, dtype=np.int64)
    later = (position[order] > 0) & (f[order] >= 0)
    prev[order[later]] = order[np.flatnonzero(later) - 1]
    return prev, order[starts][inv], position, counts[inv]


def _row_bucket(distance: np.ndarray) -> np.ndarray:
    """log2 bucket of a distance in rows: 1 -> 0, 2-3 -> 1, 4-7 -> 2, ..."""
    return np.floor(np.log2(np.maximum(np.asarray(distance, dtype=np.float64), 1))).astype(np.int64)


def _well_formed(c) -> bool:
    try:
        q = np.asarray(c["q"], dtype=np.float64)
        p = np.asarray(c.get("p", np.linspace(0, 1, N_QUANTILES)), dtype=np.float64)
        rows = c.get(LATE_WALKS, 0)
        return bool(q.ndim == p.ndim == 1 and len(q) == len(p) >= 2 and np.isfinite(q).all()
                    and isinstance(rows, int) and not isinstance(rows, bool) and rows >= 0
                    and 0 <= float(c["p_zero"]) <= 1 and p[0] == 0 and p[-1] == 1 and (np.diff(p) > 0).all())
    except (TypeError, ValueError, KeyError, AttributeError):
        return False


def gap_kinds(flows: np.ndarray, seen: set | None = None, sides: np.ndarray | None = None) -> np.ndarray:
    """(len(flows) - 1,) the kind (index into ``KINDS``) of each gap between consecutive packets
    whose flow keys are ``flows``: the packet after it opens a flow while a flow that appeared
    before it goes on afterwards ("new"), follows a packet of its own flow ("same"), goes back to
    a flow seen before ("other"), or opens a flow after the last packet of every earlier one
    ("break": in the shared messaging captures the median gap is 24 ms before "new" and 19
    minutes before "break"). ``seen``: flows already seen (earlier windows of the same capture;
    updated in place); whether a flow goes on is judged within ``flows``, as repair judges an
    image. A key of -1 (a packet not parsed) gives -1. ``sides``: which way each packet runs in
    its flow (any two values, the same for one direction of a flow): "same" and "other" become
    "same_turn" and "other_turn" where the packet runs against its flow's previous packet in
    ``flows`` (a flow's first packet in ``flows`` is not judged)."""
    f = np.asarray(flows, dtype=np.int64).ravel()
    if len(f) == 0:
        return np.zeros(0, dtype=np.int64)
    keys, first, inv = np.unique(f, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    last = np.zeros(len(keys), dtype=np.int64)
    np.maximum.at(last, inv, np.arange(len(f)))
    reach = np.maximum.accumulate(np.where(f < 0, -1, last[inv]))   # latest packet of the flows so far
    if seen:        # per window, its own keys are looked up: no cost that grows with the capture
        first = first[~np.fromiter((k in seen for k in keys.tolist()), dtype=bool, count=len(keys))]
    opens = np.zeros(len(f), dtype=bool)
    opens[first] = True
    if seen is not None:
        seen.update(keys[keys >= 0].tolist())
    after = f[1:]
    i = np.arange(1, len(f))
    opened = np.where(reach[:-1] < i, 3, 0)
    kinds = np.where(after < 0, -1, np.where(opens[1:], opened,
                                             np.where(after == f[:-1], 1, 2))).astype(np.int64)
    if sides is None:
        return kinds
    side = np.asarray(sides).ravel()
    if len(side) != len(f):
        raise ValueError(f"{len(side)} sides for {len(f)} packets")
    from netdiff.packet_repair.trace import group_previous

    prev = group_previous(f)
    turned = (prev[1:] >= 0) & (side[1:] != side[np.maximum(prev[1:], 0)])
    return np.where(turned & (kinds == 1), 4, np.where(turned & (kinds == 2), 5, kinds))


def quantile_levels(n: int) -> np.ndarray:
    """Probabilities the quantiles of ``n`` gaps are kept at: 101 even ones, and 1/n, 1 - 1/n
    when those fall between them."""
    even = np.linspace(0, 1, N_QUANTILES)
    if n < 3:
        return even
    # rounded as saved: 1/20 and the even 0.05 differ in the last bit, and two levels that the
    # file rounds to one value would make it unreadable
    return np.unique(np.round(np.concatenate([even, [1 / n, 1 - 1 / n]]), 9))


# Used when no model is given: log-uniform between 10 us and 100 ms (a neutral, documented
# default; learn a model from the training captures for realistic timing).
DEFAULT_CLASS = {"q": list(np.linspace(-5.0, -1.0, N_QUANTILES)), "p_zero": 0.0}
