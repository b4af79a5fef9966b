"""Row layouts: which header fields each packet row has, sampled before any value.

A row of the bit map is one packet; which of its pixels are present (not -1) says its stack: IPv4
or IPv6, TCP with how many option bytes, UDP, ICMP, or no packet at all. That is one joint
decision over hundreds of pixels. A masked model that draws pixels one by one mixes the stacks
within a row (half a TCP header beside half a UDP one: measured on the shared captures, see
docs/diffusion.md "Row layouts"). So masked models generate in two stages, structure then values:

1. a first-order Markov chain over row layouts per class, learned from the training images at
   train-base time (the vocabulary of distinct layouts, start and transition counts; no field
   value, no packet) draws each image's sequence of layouts;
2. flow links: real captures hold a few flows whose packets interleave; drawn bit by bit, every
   generated row had ports of its own, so every packet was a flow of one. Per class and layout,
   the chain also counts how a TCP/UDP row relates to the flows before it: a new flow, or the
   r-th most recent flow of the same transport (r <= ``MAX_LINK``), in the same or the reverse
   direction. Counted over each capture's consecutive windows as one sequence (``streams``), a
   flow that goes on past a window's edge is not counted as new again, so the rate of new flows
   is the capture's, not the window's, and a generated image taller than the training windows
   (``generate --height``) holds flows as long as the capture's. Sampling draws these links, and
   the masked sampler ties the port pixels of a flow's rows together (swapped for the reverse
   direction), so the model still draws the ports, once per flow;
3. the masked model fills the values with those absent pixels revealed and the present ones
   hidden (``netdiff.model.masked``; training hides pixels the same way for part of each batch).

Saved as ``layouts.safetensors`` in the model folder. Model folders written since stop 32 hold a
``netdiff.model.flow_chain.FlowChain`` there instead (each row's flow drawn before its layout);
this chain reads, walks and ties the flows of folders saved before, and its flow states, choice
fitting and port ties serve both.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from netdiff.bits.fields import PORTS
from netdiff.io.atomic import atomic_path

LAYOUTS_FILE = "layouts.safetensors"
ABSENT = -1
MAX_LINK = 128                    # flows further back than this count as a new flow
SNAPSHOTS = 64                    # per class: states of the flows going on where a window starts
SHRINK = 2.0                      # pseudo-rows: a layout's flow habits shrink towards its class's
FIT_ROUNDS = 200                  # MM iterations of the choice model (converged well before)
CALIBRATION_ROWS = 1024           # walks that calibrate the chain: rows per image (a flow
                                  # that comes back 100 rows later is cut off by 256-row walks),
CALIBRATION_IMAGES = 3            # images per class and round,
CALIBRATION_ROUNDS = 10           # rounds (the shares settle within a few)
CALIBRATION_SEED = 7919
FAR = 8                           # going back past the 8th most recent flow: "far back"


def port_columns(layout) -> dict[str, tuple[slice, slice]]:
    """Transport -> (source port columns, destination port columns) in ``layout``'s image."""
    return {t: (layout.fields[s], layout.fields[d]) for t, (s, d) in PORTS.items()
            if s in layout.fields and d in layout.fields}


def row_transport(present_row: np.ndarray, ports: dict) -> str | None:
    """The transport whose source port columns a row's present-pixel map holds, or None."""
    for t, (s, _) in ports.items():
        if present_row[s].all():
            return t
    return None


def bits_value(bits: np.ndarray) -> int:
    """The unsigned number a row of bit pixels spells, most significant first."""
    return int("".join("1" if b == 1 else "0" for b in bits), 2)


def layout_vocabulary(images: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """(K, W) bool: the distinct row layouts (present-pixel maps) of ``images`` in order of first
    appearance, and each image's rows as indices into them."""
    index: dict[bytes, int] = {}
    seqs = []
    for im in images:
        present = np.packbits(np.asarray(im) != ABSENT, axis=1)
        seqs.append(np.array([index.setdefault(r.tobytes(), len(index)) for r in present], dtype=np.intp))
    width = images[0].shape[1]
    vocab = np.zeros((len(index), width), dtype=bool)
    for key, k in index.items():
        vocab[k] = np.unpackbits(np.frombuffer(key, dtype=np.uint8))[:width].astype(bool)
    return vocab, seqs


def capture_spans(labels: list[str], streams: list | None):
    """(lo, hi) per capture: images lo..hi-1 are one capture's consecutive windows (the same
    stream key and class one after another; ``streams`` None: every image alone)."""
    keys = list(range(len(labels))) if streams is None else list(streams)
    if len(keys) != len(labels):
        raise ValueError(f"{len(keys)} stream keys for {len(labels)} images")
    lo = 0
    for hi in range(1, len(labels) + 1):
        if hi < len(labels) and keys[hi] == keys[lo] and labels[hi] == labels[lo]:
            continue
        yield lo, hi
        lo = hi


def flow_links(image: np.ndarray, ports: dict) -> tuple[np.ndarray, np.ndarray]:
    """Per row of a training image: link (0 new flow, r: the r-th most recent flow of the same
    transport; -1 no transport ports) and whether it runs in the reverse direction of that flow."""
    link, rev, *_ = flow_events(image, ports)
    return link, rev


SIZE_EDGES = np.array([2, 3, 4, 8])     # a flow's packets so far: 1, 2, 3, 4-7, 8 or more
N_BASE = 2 * (len(SIZE_EDGES) + 1)      # x whether its last packet ran against its first
# x how late the flow is: rows since its last packet, at most LATE_EDGES[0], at most
# LATE_EDGES[1], more (on time, late, long overdue). Without it a flow that had ended looked to
# the next row like one pausing, and went on again hundreds of rows later: generated
# video-conferencing flows spanned 12 rows per packet where the captures' span 2.6 (their packets
# come in bursts, then the flow ends), so at 1024 packets an image's flows lasted 16 s where the
# captures' last 0.8 s. Counted in rows, not against the flow's own pace (files saved from stop 27
# to 30: rows since over rows per packet so far + 1, edges PACE_EDGES): a flow whose packets had
# drifted apart was on time at its own slow pace, so generated long flows kept spreading
# (BitTorrent's flows of 8+ packets over 442 rows in 1024-row walks, its windows' over 213).
# Files saved before lateness have N_BASE states.
LATE_EDGES = (8, 40)
PACE_EDGES = (2.0, 6.0)
N_STATES = N_BASE * (len(LATE_EDGES) + 1)
LATE_ROWS = (1, 9, 41)      # the least rows since the last packet in each bucket
PACE_ROWS = (1, 8, 20)      # the same for a flow of pace 1, by PACE_EDGES


def flow_state(packets: int, last_reversed: bool, late: int = 0) -> int:
    """What a flow looks like to the next packet: how many packets it has, which way its last
    went, how late it is (``lateness``)."""
    return 2 * sum(packets >= e for e in _EDGES) + int(last_reversed) + N_BASE * late


def lateness(rows_since: int, packets: int, span: int) -> int:
    """0, 1 or 2: a flow whose last packet was ``rows_since`` rows ago, against ``LATE_EDGES``
    (``packets`` and ``span``, the rows from its first packet to its last, are for
    ``lateness_by_pace``'s files)."""
    return int(rows_since > _LATE[0]) + int(rows_since > _LATE[1])


def lateness_by_pace(rows_since: int, packets: int, span: int) -> int:
    """Lateness as layout files saved from stop 27 to 30 count it: rows since the last packet
    over the flow's own pace (rows per packet so far, + 1), against ``PACE_EDGES``."""
    pace = span / (packets - 1) if packets > 1 else 1.0
    ratio = rows_since / (pace + 1.0)
    return int(ratio > _PACE[0]) + int(ratio > _PACE[1])


_EDGES = tuple(int(e) for e in SIZE_EDGES)      # plain ints: flow_state runs once per sampled row
_LATE = tuple(int(e) for e in LATE_EDGES)
_PACE = tuple(float(e) for e in PACE_EDGES)
STATE_PACKETS = (1,) + _EDGES                   # a flow with a state's packets (the bucket's least)


def flow_events(image: np.ndarray, ports: dict, every: int | None = None):
    """``flow_links`` plus, per row, the states (``flow_state``) of the flows it could have gone
    on with, most recent first (at most ``MAX_LINK``; empty for a row without ports), and the
    state of the one it did go on with (-1 for a new flow); and, before every ``every``-th row
    (not the first), a snapshot of the flows going on: (transports, MAX_LINK) their states, most
    recent first, -1 past the last (transports in ``ports``' order)."""
    link = np.full(image.shape[0], -1, dtype=np.int64)
    rev = np.zeros(image.shape[0], dtype=bool)
    states: list[np.ndarray] = []
    chosen = np.full(image.shape[0], -1, dtype=np.int64)
    # per transport, most recent first: [port key, first sport, packets, last reversed, first row, last row]
    recent: dict[str, list[list]] = {t: [] for t in ports}
    snaps = []

    def state(f, i):
        return flow_state(f[2], f[3], lateness(i - f[5], f[2], f[5] - f[4]))

    for i, row in enumerate(image):
        if every and i and i % every == 0:
            snap = np.full((len(ports), MAX_LINK), -1, dtype=np.int8)
            for j, fl in enumerate(recent.values()):
                st = [state(f, i) for f in fl[:MAX_LINK]]
                snap[j, :len(st)] = st
            snaps.append(snap)
        t = row_transport(row != ABSENT, ports)
        if t is None:
            states.append(np.zeros(0, dtype=np.int64))
            continue
        s, d = bits_value(row[ports[t][0]]), bits_value(row[ports[t][1]])
        key = (min(s, d), max(s, d))
        flows = recent[t]
        states.append(np.array([state(f, i) for f in flows[:MAX_LINK]], dtype=np.int64))
        found = next((k for k, f in enumerate(flows) if f[0] == key), None)
        if found is None or found >= MAX_LINK:
            link[i] = 0
            if found is not None:
                flows.pop(found)
            flows.insert(0, [key, s, 1, False, i, i])
        else:
            f = flows.pop(found)
            link[i] = found + 1
            rev[i] = s != f[1]
            chosen[i] = states[-1][found]
            f[2] += 1
            f[3] = bool(rev[i])
            f[5] = i
            flows.insert(0, f)
    return link, rev, states, chosen, snaps


class LayoutChain:
    """``vocab``: (K, W) bool, present pixels of each distinct row layout; per class, ``start``
    (K,) and ``trans`` (K, K) counts (add-one smoothing is not used: a layout never seen after
    another is never drawn after it)."""

    def __init__(self, vocab: np.ndarray, classes: list[str], start: np.ndarray, trans: np.ndarray,
                 links: np.ndarray | None = None, layout_name: str = "netdiffusion",
                 weights: np.ndarray | None = None, flips: np.ndarray | None = None,
                 going: np.ndarray | None = None, late_by: str = "rows"):
        self.vocab = np.asarray(vocab, dtype=bool)
        self.classes = list(classes)
        self.start = np.asarray(start, dtype=np.float64)       # (C, K)
        self.trans = np.asarray(trans, dtype=np.float64)       # (C, K, K)
        # (C, K, MAX_LINK + 1, 2): counts of (link, reversed) per class and layout
        self.links = (np.zeros(self.trans.shape[:2] + (MAX_LINK + 1, 2)) if links is None
                      else np.asarray(links, dtype=np.float64))
        self.layout_name = layout_name
        # flows by state (files saved before them draw links from ``links`` alone). weights
        # (C, K, MAX_LINK + 1, N_STATES): a choice model's weight for going on with the r-th most
        # recent flow in each state, against 1 for a new flow ([..., 0, 0]); a row picks among the
        # flows it has in proportion. flips (C, K, N_STATES, 2): counts of keeping / turning the
        # direction of the flow's last packet
        # float32 as saved, so that a loaded chain draws what the fitted one did
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float32).astype(np.float64)
        self.flips = None if flips is None else np.asarray(flips, dtype=np.float64)
        # going (C, SNAPSHOTS, transports, MAX_LINK) int8: states of the flows going on where a
        # training window starts within its capture (-1: none), the flows an image starts among
        self.going = None if going is None else np.asarray(going, dtype=np.int8)
        # how the states count lateness: "rows" (``lateness``) or, files saved from stop 27 to
        # 30, "pace" (``lateness_by_pace``)
        if late_by not in ("rows", "pace"):
            raise ValueError(f"lateness by {late_by!r}")
        self.late_by = late_by

    @classmethod
    def fit(cls, images: list[np.ndarray], labels: list[str], layout=None,
            streams: list | None = None, calibrate: bool = True) -> "LayoutChain":
        """Images (H, W) int8 of the training set and their classes (``layout``: the images'
        bit layout, default netdiffusion; it says where the ports are). ``streams``: one key per
        image; consecutive images with the same key are consecutive windows of one capture, and
        row transitions and flow links run on across their edges (default: every image alone).
        ``calibrate``: scale the choice weights so that the chain's own walks match the training
        rows' shares of new flows, of the most recent flow, of going far back and of going on with
        long-overdue flows (``calibrate``)."""
        from netdiff.bits.layout import named_layout

        layout = layout or named_layout("netdiffusion", height=images[0].shape[0])
        ports = port_columns(layout)
        classes = sorted(set(labels))
        vocab, seqs = layout_vocabulary(images)
        n_k = len(vocab)
        c_index = {c: i for i, c in enumerate(classes)}
        start = np.zeros((len(classes), n_k))
        trans = np.zeros((len(classes), n_k, n_k))
        links = np.zeros((len(classes), n_k, MAX_LINK + 1, 2))
        flips = np.zeros((len(classes), n_k, N_STATES, 2))
        choices: list[list] = [[] for _ in classes]     # per class: (layout, options, chosen) rows
        snaps: list[list] = [[] for _ in classes]
        counts = np.zeros((len(classes), 5), dtype=np.int64)    # rows with ports, new, most recent, far, overdue
        for lo, hi in capture_spans(labels, streams):
            # images lo..hi-1: one capture's consecutive windows
            c = c_index[labels[lo]]
            for ids in seqs[lo:hi]:
                start[c, ids[0]] += 1      # every window start: a generated image may begin anywhere
            ids = np.concatenate([np.asarray(x, dtype=np.intp) for x in seqs[lo:hi]])
            np.add.at(trans[c], (ids[:-1], ids[1:]), 1)
            link, rev, states, chosen, at = flow_events(np.concatenate([np.asarray(im) for im in images[lo:hi]]),
                                                        ports, every=len(images[lo]))
            snaps[c] += at
            has = link >= 0
            np.add.at(links[c], (ids[has], link[has], rev[has].astype(np.intp)), 1)
            choices[c].append(_choices(ids, link, rev, states, chosen, flips[c]))
            # what calibration matches: rows after the first window when the capture has more
            # (a generated image starts among the flows going on, not at a capture's start)
            skip = len(images[lo]) if hi - lo > 1 else 0
            seen, state = link[skip:], chosen[skip:]
            overdue = (seen > 0) & (state // N_BASE == N_STATES // N_BASE - 1)
            seen = seen[seen >= 0]
            counts[c] += (len(seen), int((seen == 0).sum()), int((seen == 1).sum()), int((seen > FAR).sum()),
                          int(overdue.sum()))
        weights = np.stack([fit_choices(*_join(rows), n_k) for rows in choices])
        targets = {classes[c]: (new / n, last / n, far / n, late / n)
                   for c, (n, new, last, far, late) in enumerate(counts) if n}
        going = np.full((len(classes), SNAPSHOTS, len(ports), MAX_LINK), -1, dtype=np.int8)
        for c, at in enumerate(snaps):
            # evenly over the class's window starts, the same ones every time
            for j, k in enumerate(np.linspace(0, len(at) - 1, min(len(at), SNAPSHOTS)).round().astype(int)):
                going[c, j] = at[k]
        chain = cls(vocab, classes, start, trans, links, layout.name, weights, flips, going)
        if calibrate:
            chain.calibrate(targets, ports)
        return chain

    def sample(self, cls: str, rows: int, generator: torch.Generator) -> np.ndarray:
        """(rows, W) bool present-pixel map for one image of class ``cls``; randomness from the
        image's own generator (the same draws for the same seed)."""
        return self.vocab[self.sample_ids(cls, rows, generator)]

    def sample_structure(self, cls: str, rows: int, generator: torch.Generator, layout
                         ) -> tuple[np.ndarray, list[list[tuple[int, bool]]]]:
        """One image's row layout ids (into ``vocab``) and flows (``sample_flows``), from the
        image's own generator: the interface ``netdiff.model.flow_chain.FlowChain`` shares."""
        ids = self.sample_ids(cls, rows, generator)
        return ids, self.sample_flows(cls, ids, generator, layout)

    def sample_ids(self, cls: str, rows: int, generator: torch.Generator) -> np.ndarray:
        if cls not in self.classes:
            raise KeyError(cls)
        c = self.classes.index(cls)
        u = torch.rand(rows, generator=generator, dtype=torch.float64).numpy()
        ids = np.empty(rows, dtype=np.intp)
        ids[0] = draw_index(self.start[c], u[0])
        # a layout last seen at the end of an image: go on from the class's start distribution
        nxt = np.where(self.trans[c].sum(1, keepdims=True) > 0, self.trans[c], self.start[c][None])
        cdf = np.cumsum(nxt, axis=1)
        last = cdf.shape[1] - 1
        for i in range(1, rows):
            row = cdf[ids[i - 1]]
            ids[i] = min(int(np.searchsorted(row, u[i] * row[-1], side="right")), last)
        return ids

    def sample_flows(self, cls: str, ids: np.ndarray, generator: torch.Generator, layout) -> list[list[tuple[int, bool]]]:
        """Flows of one image whose row layouts are ``ids``: lists of (row, reversed) with two or
        more rows (a flow of one needs no tie). Reversed is relative to the flow's first row.

        Each row weighs a new flow against every recent flow by the choice weights its layout
        learnt for a flow of that recency and state (packets so far, direction of the last): a
        DNS query is answered once, a Modbus poll goes on for the whole image."""
        if self.weights is None:
            return self._sample_links(cls, ids, generator, layout)
        flows, *_ = self._walk(self.classes.index(cls), ids, generator, port_columns(layout))
        # directions against the flow's first row in the image
        return [[(i, rev != f[0][1]) for i, rev in f] for f in flows if len(f) > 1]

    def _walk(self, c: int, ids: np.ndarray, generator: torch.Generator, ports: dict,
              weights: np.ndarray | None = None) -> tuple[list, np.ndarray, np.ndarray]:
        """The flow choice of every row: (flows as lists of (row, reversed against the flow's
        first packet in the walk), per row the option taken: 0 a new flow, r the r-th most
        recent flow of its transport, -1 no ports; per row whether the flow it went on with was
        long overdue, lateness's last bucket). ``weights``: the class's, unless given."""
        weight = self.weights[c] if weights is None else weights
        timed = weight.shape[-1] > N_BASE       # files saved before lateness: its states without it
        late_of, late_rows = (lateness, LATE_ROWS) if self.late_by == "rows" else (lateness_by_pace, PACE_ROWS)
        flip = self.flips[c] + 1e-9     # a state never seen: either way
        transport = [row_transport(v, ports) for v in self.vocab]
        # per transport, most recent first: [flow index, packets, last reversed, flow_state
        # without lateness, first row, last row]
        recent: dict[str, list[list]] = {t: [] for t in ports}
        flows: list[list[tuple[int, bool]]] = []     # image rows, direction against the flow's first
        taken = np.full(len(ids), -1, dtype=np.int64)
        overdue = np.zeros(len(ids), dtype=bool)
        last_bucket = N_STATES // N_BASE - 1
        # the image starts mid-capture, among the flows going on where one of the class's training
        # windows starts (from an empty start a Modbus image opened a quarter of its rows as new
        # flows, where real windows open 0.4%: they begin with the capture's polls running)
        pick_start = float(torch.rand(1, generator=generator, dtype=torch.float64))
        going = self.going[c] if self.going is not None else np.zeros((0, len(ports), 0))
        have = np.flatnonzero((going >= 0).any(axis=(1, 2)))
        if len(have):
            snap = going[have[min(int(pick_start * len(have)), len(have) - 1)]]
            for t, row in zip(ports, snap):
                for state in row[row >= 0]:
                    base, late = int(state) % N_BASE, int(state) // N_BASE
                    n = STATE_PACKETS[base // 2]
                    last = -late_rows[late]     # a pace of 1 row per packet, as late as the state says
                    flows.append([])
                    recent[t].append([len(flows) - 1, n, bool(base % 2), base, last - (n - 1), last])
        u = torch.rand((len(ids), 2), generator=generator, dtype=torch.float64).numpy()
        for i, k in enumerate(ids):
            t = transport[k]
            if t is None:
                continue
            cand = recent[t][:weight.shape[1] - 1]     # the file's own reach
            if timed:
                st = np.fromiter((f[3] + N_BASE * late_of(i - f[5], f[1], f[5] - f[4]) for f in cand),
                                 dtype=np.intp, count=len(cand))
            else:
                st = np.fromiter((f[3] for f in cand), dtype=np.intp, count=len(cand))
            w = np.concatenate([[weight[k, 0, 0]], weight[k, np.arange(1, len(cand) + 1), st]])
            pick = draw_index(w, u[i, 0]) if w.sum() > 0 else 0
            taken[i] = pick
            if pick == 0:
                flows.append([(i, False)])
                recent[t].insert(0, [len(flows) - 1, 1, False, flow_state(1, False), i, i])
                continue
            f = recent[t].pop(pick - 1)
            overdue[i] = timed and st[pick - 1] // N_BASE == last_bucket
            rev = bool(f[2] ^ draw_index(flip[k, st[pick - 1]], u[i, 1]))
            flows[f[0]].append((i, rev))
            f[1] += 1
            f[2] = rev
            f[3] = flow_state(f[1], rev)
            f[5] = i
            recent[t].insert(0, f)
        return flows, taken, overdue

    def calibrate(self, targets: dict[str, tuple[float, float, float, float]], ports: dict,
                  rows: int = CALIBRATION_ROWS, images: int = CALIBRATION_IMAGES,
                  rounds: int = CALIBRATION_ROUNDS) -> dict:
        """Scale each class's weight of a new flow, of going on with the most recent flow, of
        going back past the ``FAR``-th most recent and of going on with a long-overdue flow
        (lateness's last bucket) so that the chain's own walks do each as often as the training
        rows did (``targets``: class -> (new-flow, most-recent, far-back, overdue shares) of the
        rows with ports). A choice model fitted row by row under-continues once it walks on its own
        draws: each flow it opens too many is one more option for the next row (Modbus: 0.40 of
        ported rows went on with the last flow, 0.49 in the training windows). Fixed seeds:
        the same fit gives the same weights. Going back far spreads a flow's packets over the
        capture: video streaming went back past the 8th flow on 15% of rows where the captures
        did on 4%, and its flows lasted 20 s where the captures' last 0.3 s. Overdue flows are
        retries and the ends of pauses (BitTorrent's SYNs again 3 s, about 100 rows, later: 18%
        of its rows); matched as a share, the walks neither drop them nor spread every flow.
        Returns class -> (new, most recent, far back, overdue) multipliers."""
        out = {}
        for cls, (t_new, t_last, t_far, t_late) in targets.items():
            c = self.classes.index(cls)
            base = self.weights[c].copy()
            a = b = d = e = 1.0

            def scaled() -> np.ndarray:
                w = base.copy()
                w[:, 0, 0] *= a
                return scale_going_on(w, b, d, e)

            for _ in range(rounds):
                w = scaled()
                got = np.zeros(5, dtype=np.int64)
                for s in range(images):
                    g = torch.Generator().manual_seed(CALIBRATION_SEED + s)
                    ids = self.sample_ids(cls, rows, g)
                    _, taken, overdue = self._walk(c, ids, g, ports, w)
                    got += walk_counts(taken, overdue)
                n, new, last, far, late = (int(x) for x in got)
                if n == 0:
                    break
                # a Luce weight scales the odds of its option: step each by the odds ratio
                a *= odds_step(t_new, new / n)
                b *= odds_step(t_last, last / n)
                d *= odds_step(t_far, far / n)
                e *= odds_step(t_late, late / n)
                a, b, d, e = (float(np.clip(x, 0.02, 50.0)) for x in (a, b, d, e))
            self.weights[c] = scaled()
            out[cls] = (a, b, d, e)
        # as saved: a loaded chain draws what this one does
        self.weights = self.weights.astype(np.float32).astype(np.float64)
        return out

    def _sample_links(self, cls: str, ids: np.ndarray, generator: torch.Generator, layout) -> list[list[tuple[int, bool]]]:
        """``sample_flows`` for files saved before flow states: links by layout alone."""
        ports = port_columns(layout)
        c = self.classes.index(cls)
        u = torch.rand(len(ids), generator=generator, dtype=torch.float64).numpy()
        recent: dict[str, list[int]] = {t: [] for t in ports}       # flow indices, most recent first
        flows: list[list[tuple[int, bool]]] = []
        for i, k in enumerate(ids):
            t = row_transport(self.vocab[k], ports)
            if t is None:
                continue
            w = self.links[c, k].ravel()
            pick = draw_index(w, u[i]) if w.sum() > 0 else 0
            r, rev = divmod(pick, 2)
            # a link to a flow this image does not have (yet) starts a new one
            if r == 0 or r > len(recent[t]):
                flows.append([(i, False)])
                recent[t].insert(0, len(flows) - 1)
            else:
                f = recent[t].pop(r - 1)
                flows[f].append((i, bool(rev)))
                recent[t].insert(0, f)
        return [f for f in flows if len(f) > 1]

    def save(self, folder) -> None:
        from safetensors.numpy import save_file

        # one metadata key: safetensors writes a metadata map in an order that varies between
        # processes, and a resumed training must write the same bytes as a straight one
        meta = json.dumps({"classes": self.classes, "width": int(self.vocab.shape[1]),
                           "layout": self.layout_name, "late_by": self.late_by}, sort_keys=True)
        tensors = {"vocab": np.packbits(self.vocab, axis=1), "start": self.start.astype(np.float32),
                   "trans": self.trans.astype(np.float32), "links": self.links.astype(np.float32)}
        if self.weights is not None:
            tensors.update(weights=self.weights.astype(np.float32), flips=self.flips.astype(np.float32))
        if self.going is not None:
            tensors["going"] = self.going.astype(np.int8)
        with atomic_path(Path(folder) / LAYOUTS_FILE) as tmp:
            save_file(tensors, str(tmp), metadata={"netdiff": meta})

    @classmethod
    def load(cls, folder) -> "LayoutChain | None":
        from safetensors import safe_open

        path = Path(folder) / LAYOUTS_FILE
        if not path.is_file():
            return None
        try:
            return cls._read(path, safe_open)
        except Exception as e:      # safetensors' own errors, a missing key, bad metadata
            from netdiff.errors import NetdiffError

            raise NetdiffError(f"{path}: damaged layout file ({str(e).splitlines()[0]}); "
                               "train the model again") from None

    @classmethod
    def _read(cls, path: Path, safe_open) -> "LayoutChain":
        with safe_open(str(path), framework="numpy") as f:
            meta = json.loads(f.metadata()["netdiff"])
            vocab = np.unpackbits(f.get_tensor("vocab"), axis=1)[:, :meta["width"]].astype(bool)
            names = set(f.keys())
            links = f.get_tensor("links") if "links" in names else None     # saved before flow links
            states = ([f.get_tensor(n) for n in ("weights", "flips")]
                      if {"weights", "flips"} <= names else [None] * 2)     # saved before flow states
            chain = cls(vocab, meta["classes"], f.get_tensor("start"), f.get_tensor("trans"),
                        links, meta.get("layout", "netdiffusion"), *states,
                        f.get_tensor("going") if "going" in names else None,
                        meta.get("late_by", "pace"))
        # tensors of the wrong shape would fail only when an image is sampled, deep in a loop
        n_c, n_k = len(chain.classes), len(chain.vocab)
        expect = {"start": (chain.start, (n_c, n_k)), "trans": (chain.trans, (n_c, n_k, n_k))}
        if chain.weights is not None:
            n_s = chain.weights.shape[-1] if chain.weights.shape[-1] in (N_BASE, N_STATES) else N_STATES
            expect["weights"] = (chain.weights, (n_c, n_k, chain.weights.shape[2], n_s))
            expect["flips"] = (chain.flips, (n_c, n_k, n_s, 2))
        if chain.going is not None:
            expect["going"] = (chain.going, (n_c,) + chain.going.shape[1:])
        for name, (arr, shape) in expect.items():
            if arr.shape != shape or (name == "going" and arr.ndim != 4):
                raise ValueError(f"{name} has shape {arr.shape}, expected {shape}")
        return chain


def scale_going_on(w: np.ndarray, last: float, far: float, overdue: float, n_base: int = N_BASE) -> np.ndarray:
    """Choice weights (layouts, MAX_LINK + 1, states) with going on with the most recent flow
    scaled by ``last``, going back past the ``FAR``-th by ``far`` and going on with a long-overdue
    flow (lateness's last bucket; ``n_base`` states a bucket) by ``overdue``, in place; returns
    ``w``."""
    w[:, 1, :] *= last
    w[:, FAR + 1:, :] *= far
    w[:, 1:, np.arange(w.shape[-1]) // n_base == len(LATE_EDGES)] *= overdue
    return w


def walk_counts(taken: np.ndarray, overdue: np.ndarray) -> np.ndarray:
    """What calibration counts in one walk (``taken``: per row the option taken, 0 a new flow, r
    the r-th most recent, -1 no ports; ``overdue``: whether it went on with a long-overdue flow):
    rows with ports, new flows, the most recent flow, flows past the ``FAR``-th, overdue flows."""
    return np.array([(taken >= 0).sum(), (taken == 0).sum(), (taken == 1).sum(), (taken > FAR).sum(),
                     overdue.sum()], dtype=np.int64)


def _choices(ids, link, rev, states, chosen, flips) -> tuple:
    """One capture's rows as choices: (layout, option codes (rows, MAX_LINK + 1; -1 none), index
    of the option taken); adds their directions to the class's ``flips``. Option 0 is a new flow,
    option r the r-th most recent flow, coded r * N_STATES + its state."""
    rows = np.flatnonzero(link >= 0)
    opts = np.full((len(rows), MAX_LINK + 1), -1, dtype=np.int64)
    opts[:, 0] = 0
    for j, i in enumerate(rows):
        st = states[i]
        opts[j, 1: len(st) + 1] = np.arange(1, len(st) + 1) * N_STATES + st
        if link[i] > 0:
            flips[ids[i], chosen[i], int(rev[i] != bool(chosen[i] % 2))] += 1
    return ids[rows], opts, link[rows]


def _join(parts: list[tuple]) -> tuple:
    if not parts:
        return np.zeros(0, dtype=np.intp), np.zeros((0, MAX_LINK + 1), dtype=np.int64), np.zeros(0, dtype=np.int64)
    return tuple(np.concatenate(x) for x in zip(*parts))


def fit_choices(layouts: np.ndarray, options: np.ndarray, taken: np.ndarray, n_layouts: int) -> np.ndarray:
    """(n_layouts, MAX_LINK + 1, N_STATES) Luce choice weights for one class: each row chose one of
    its options (``_choices``) with probability proportional to the option's weight; a new flow
    weighs 1. Fitted by Hunter's MM iterations (Ann. Statist. 32, 2004) at three levels, each
    with ``SHRINK`` pseudo-rows of the level above: a flow's state at any recency, then recency
    and state over all of the class's rows, then per layout (an option a level never had keeps
    the weight of the level above)."""
    n_opt = (MAX_LINK + 1) * N_STATES
    rows = np.arange(len(taken))
    # a flow's state alone: option 1 + state, new flow 0
    by_state = np.where(options > 0, 1 + options % N_STATES, options)
    # maximum likelihood here (no pseudo-rows): a state never gone on with weighs 0, where a
    # small weight on each of a hundred answered flows added up to more than a new flow
    w_state = fit_luce(by_state, by_state[rows, taken], np.ones(1 + N_STATES), shrink=0.0)
    w_state[1:] = borrow_unseen(w_state[1:], np.bincount(by_state[by_state > 0] - 1, minlength=N_STATES))
    prior = np.concatenate([[1.0], np.zeros(N_STATES - 1), np.tile(w_state[1:], MAX_LINK)])
    won = options[rows, taken]
    pooled = fit_luce(options, won, prior)
    out = np.empty((n_layouts, n_opt))
    for k in range(n_layouts):
        mask = layouts == k
        out[k] = fit_luce(options[mask], won[mask], pooled) if mask.any() else pooled
    return out.reshape(n_layouts, MAX_LINK + 1, N_STATES)


def borrow_unseen(w: np.ndarray, avail: np.ndarray, ways: int = 2) -> np.ndarray:
    """State weights where a state was never there to choose (``avail`` 0) take the weight of the
    nearest state that was: the nearest lateness, then the nearest length of flow, shorter before
    longer, the same direction code before another (of three codes, the two that run the first
    packet's way count as different: a flow that turned is not one that never did). A flow longer
    than any the class showed goes on as the longest it showed did; one the class never let go
    on (a DNS exchange answered) stays ended. ``ways``: direction codes per length of flow
    (``flow_state``'s 2, ``flow_chain.chain_state``'s 3)."""
    out = w.copy()
    sizes = len(SIZE_EDGES) + 1
    base = ways * sizes
    lates = len(w) // base

    def code(late, size, d):
        return late * base + ways * size + d

    seen = [(a, x, e) for a in range(lates) for x in range(sizes) for e in range(ways) if avail[code(a, x, e)] > 0]
    if not seen:
        return out
    for a in range(lates):
        for b in range(sizes):
            for d in range(ways):
                if avail[code(a, b, d)] == 0:
                    # the same lateness first: how late a flow is says more than its length
                    y, x, e = min(seen, key=lambda s: (abs(s[0] - a), abs(s[1] - b), s[1] > b, s[2] != d))
                    out[code(a, b, d)] = w[code(y, x, e)]
    return out


def fit_luce(options: np.ndarray, won: np.ndarray, prior: np.ndarray, shrink: float = SHRINK) -> np.ndarray:
    """Choice weights of options coded 0..len(prior)-1 (-1: no option), option 0 fixed at 1."""
    wins = np.bincount(won, minlength=len(prior)).astype(np.float64)
    valid = options >= 0
    flat = options[valid]
    w = prior.copy()
    for _ in range(FIT_ROUNDS):
        total = np.where(valid, w[np.maximum(options, 0)], 0.0).sum(1)
        seen = np.bincount(flat, weights=np.broadcast_to(1 / total[:, None], options.shape)[valid],
                           minlength=len(prior))
        w = np.where(seen + shrink > 0, (wins + shrink * prior) / np.maximum(seen + shrink, 1e-300), prior)
        if w[0] > 0:
            w = w / w[0]
    return w


def odds_step(target: float, got: float, eps: float = 1e-3) -> float:
    """The factor that moves a share ``got`` to ``target`` when it scales the share's odds
    (bounded: one step at most 4x either way)."""
    t, g = np.clip([target, got], eps, 1 - eps)
    return float(np.clip((t / (1 - t)) / (g / (1 - g)), 0.25, 4.0))


def draw_index(weights: np.ndarray, u: float) -> int:
    """The index a uniform ``u`` picks from non-negative ``weights`` (their sum above 0)."""
    cdf = np.cumsum(weights)
    return int(min(np.searchsorted(cdf, u * cdf[-1], side="right"), len(weights) - 1))


def separate_flows(image: np.ndarray, flows: list[list[tuple[int, bool]]], layout) -> int:
    """Give every flow of a generated image (``sample_flows``'s, and every other row with ports as
    a flow of its own) a port pair no earlier flow of its transport has, in place: where the
    sampler drew an earlier flow's pair, the flow's higher port moves to the next free value in
    all its rows. Flows are told apart by their ports downstream (repair traces flows by port
    pair, as the nPrint image has no room for more), and Modbus flows drawn from a handful of
    client ports merged there into one: 93% of consecutive packets in one flow, 49% in the
    real captures. Returns how many flows moved."""
    ports = port_columns(layout)
    member = {}
    for f in flows:
        for row, rev in f:
            member[row] = (f[0][0], rev)
    groups: dict[int, list[tuple[int, bool]]] = {}
    for row in range(image.shape[0]):
        if row_transport(image[row] != ABSENT, ports) is None:
            continue
        first, rev = member.get(row, (row, False))
        groups.setdefault(first, []).append((row, rev))
    used: dict[str, set] = {t: set() for t in ports}
    moved = 0
    for first in sorted(groups):
        t = row_transport(image[first] != ABSENT, ports)
        s_cols, d_cols = ports[t]
        s, d = bits_value(image[first, s_cols]), bits_value(image[first, d_cols])
        hi_is_src = s >= d
        lo, hi = min(s, d), max(s, d)
        if (lo, hi) in used[t]:
            start = hi
            while (lo, hi) in used[t]:
                hi = hi + 1 if hi < 65535 else 1024
                if hi == start:
                    break
            bits = np.array([(hi >> (15 - j)) & 1 for j in range(16)], dtype=image.dtype)
            for row, rev in groups[first]:
                # the higher port sits in the source columns of rows that run the first row's way
                image[row, s_cols if hi_is_src != rev else d_cols] = bits
            moved += 1
        used[t].add((lo, hi))
    return moved


def tie_pairs(flows: list[list[tuple[int, bool]]], layout) -> tuple[np.ndarray, np.ndarray]:
    """(canonical pixel, tied pixel) flat indices into an (H, layout.width) image: every port
    pixel of a flow's later rows is tied to the same port pixel of its first row (source and
    destination swapped for rows in the reverse direction)."""
    ports = port_columns(layout)
    w = layout.width
    canon, member = [], []
    for flow in flows:
        r0 = flow[0][0]
        for row, rev in flow[1:]:
            for t, (s, d) in ports.items():
                src = np.arange(s.start, s.stop)
                dst = np.arange(d.start, d.stop)
                a, b = (dst, src) if rev else (src, dst)
                canon += [r0 * w + a, r0 * w + b]
                member += [row * w + src, row * w + dst]
    if not canon:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(canon).astype(np.int64), np.concatenate(member).astype(np.int64)
