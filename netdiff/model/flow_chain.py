"""Flows first: the structure stage of masked sampling, each row's flow drawn before its layout.

``netdiff.model.layouts.LayoutChain`` (model folders saved until stop 31) draws every row's layout
from a Markov chain first and then the flow the row goes on with, among the flows of the layout's
transport. A row's layout then decides whether a flow can go on: where the chain drew a TCP row
and no TCP flow was due, the row opened a flow that nothing answered (BitTorrent's walks: 19-23%
of TCP flows had one packet, its captures 3%, a third of them opened on ACK rows, which never open
a flow in the captures). Here a row first chooses what it is:

1. a new flow, a row without ports (ICMP, or no packet: the end of a capture), or one of the
   recent flows of any transport (at most ``MAX_LINK``, most recent first), each option with a
   weight (Luce's choice model): a new flow weighs 1, a row without ports a weight per the
   previous row's layout, a flow ``weights[its last layout, recency, state]`` (state:
   ``chain_state``, its packets so far, the direction of its last and whether it ever turned,
   how late it is);
2. then its layout: a new flow's from the layouts flows open with after the previous row's, a
   flow's next from its own last layout and whether it turns (a SYN is answered by a SYN-ACK, a
   connection with timestamps keeps them), a row without ports' from the previous row's.

Fitted at train-base time from the training images (counts and choice weights, no field value,
no packet), then calibrated on its own walks like ``LayoutChain`` (the shares of rows that open a
flow, go on with the most recent, go back past the ``FAR``-th, go on with a long-overdue flow).
A new flow also draws how many packets it will have (``plans``: counts of the class's flow sizes
by the layout they opened with, ``PLAN_SIZES``) and stops being a choice once it has them. A flow
of at most ``SCRIPT_MAX`` packets draws its script with its size (each packet's turn and
lateness, ``scripts``); a longer one's packets run the way the class's packets with as many
still to come in their flow ran (``last_flips``). Without plans a flow's end was only its choice
weight falling with its size (``SIZE_EDGES``), and the walks ended flows where the captures did
not: messaging's WhatsApp connections have 8 packets in 49% of its windows' flows and 12% of its
walks' (docs/results.md, stop 40). Files saved before plans (``plans`` absent from the metadata) draw as they did.

Saved as ``layouts.safetensors`` with ``order: flows`` and ``states: turns`` in its metadata;
``load_structure`` reads either kind, and files saved before ``states`` (stops 32-33, states by
``layouts.flow_state``) draw as they did.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from netdiff.io.atomic import atomic_path
from netdiff.model.layouts import (CALIBRATION_IMAGES, CALIBRATION_ROWS, CALIBRATION_SEED, FAR,
                                   LATE_EDGES, LATE_ROWS, LAYOUTS_FILE, MAX_LINK, N_BASE, N_STATES, SIZE_EDGES,
                                   SNAPSHOTS, STATE_PACKETS, LayoutChain, bits_value, borrow_unseen, capture_spans,
                                   draw_index, fit_luce, flow_state, lateness, layout_vocabulary, odds_step,
                                   port_columns, row_transport, scale_going_on, walk_counts)

ORDER = "flows"
STATES = "turns"
# A flow's state before lateness: its packets so far (SIZE_EDGES) x which way its last packet
# went: the way of its first with none against it yet, against its first, or the way of its
# first after one against it. With two ways only (``layouts.flow_state``) a query, its answer
# and another query looked like three tries nothing answered; an answered BitTorrent datagram
# exchange (that ends) looked like a uTP connection (that goes on) after their second packet,
# and the walks went on with 3 times as many three-packet exchanges as the class's windows.
WAYS = 3
CHAIN_BASE = WAYS * (len(SIZE_EDGES) + 1)
CHAIN_STATES = CHAIN_BASE * (len(LATE_EDGES) + 1)
_CHAIN_EDGES = tuple(int(e) for e in SIZE_EDGES)      # plain ints: states are counted every row
LAYOUT_PSEUDO = 0.5         # pseudo-rows towards the class's layouts of the kind, whatever came before
# Calibration steps by a power of the odds ratio: at full steps the shares of video conferencing's
# walks swung between 0.37 and 0.96 of rows going on with the most recent flow from one round to
# the next (a flow that goes on keeps the next row to itself); at 0.4 they settle within 16 rounds.
CALIBRATION_DAMPING = 0.4
CALIBRATION_ROUNDS = 16
_LAST_BUCKET = len(LATE_EDGES)          # long overdue: the bucket calibration counts apart
PLANS = "totals"
# A flow's planned packets by bucket: every size up to 64 apart, then about sqrt(2) apart (a size
# drawn in a bucket is uniform within it); the last bucket never ends.
PLAN_SIZES = np.array(list(range(1, 65)) + [91, 128, 181, 256, 362, 512, 724, 1024, 1448, 2048, 2896, 4096])
ENDLESS = 1 << 30
# Packets a flow has still to come after the one being drawn, for which way that one runs: none (its
# last), 1, 2, 3-6, more. Kinds of flow that open alike go on unlike: BitTorrent's tries are sent
# three times one way, its exchanges are a query and an answer, its connections go back and forth.
TO_COME_EDGES = (1, 2, 3, 7)
# A flow of at most SCRIPT_MAX packets also draws its script: for each packet after its first,
# whether it turns and how late it comes (``lateness``'s bucket), from the class's whole flows that
# opened with its layout and had its size; a scripted packet is not drawn before it is as late as
# scripted. Sizes alone left BitTorrent's two-datagram flows to the weights: a retry 3 s on and an
# answer within 0.2 s both end a flow of two, and the walks answered 61% of them where the chain's
# view of its windows answers 25% (docs/results.md, stop 40).
SCRIPT_MAX = 16


class FlowChain:
    """``vocab`` (K, W) bool: the present pixels of each distinct row layout. Per class (C):
    ``weights`` (C, K, MAX_LINK + 1, states) a flow's choice weight by its last layout, recency
    (index 0 unused) and state; ``portless`` (C, K + 1) a row without ports' weight after each
    layout (index K: an image's first row); ``opening`` (C, K + 1, K) counts of the layout a new
    flow opens with after each layout; ``next_layout`` (C, K, 2, K) counts of a flow's next layout
    after its last, direction kept / turned; ``portless_layout`` (C, K + 1, K) the same for rows
    without ports; ``flips`` (C, K, states, 2) counts of keeping / turning a flow's direction by
    its last layout and state; ``going`` (C, SNAPSHOTS, MAX_LINK, 2) the (state, last layout) of
    the flows going on where a training window starts, most recent first (-1 past the last), and
    ``going_prev`` (C, SNAPSHOTS) the layout of the row before (-1: no such start); ``plans`` (C, K,
    len(PLAN_SIZES)) counts of the packets a flow had in all by the layout it opened with, and
    ``going_left`` (C, SNAPSHOTS, MAX_LINK) the packets each flow going on had still to come
    (``ENDLESS``: cut by the capture's end and longer than the class's whole flows),
    ``last_flips`` (C, K, states, len(TO_COME_EDGES) + 1, 2) ``flips`` by how many packets the
    flow had still to come after the one drawn,
    ``scripts`` (``script_table``'s codes, first layouts and counts; all four None: a file saved
    before plans, whose flows end only by their weights)."""

    order = ORDER

    def __init__(self, vocab, classes, weights, portless, opening, next_layout, portless_layout, flips,
                 going, going_prev, layout_name: str = "netdiffusion", turns: bool = True,
                 plans=None, going_left=None, last_flips=None, scripts=None):
        self.vocab = np.asarray(vocab, dtype=bool)
        self.classes = list(classes)
        # float32 as saved, so that a loaded chain draws what the fitted one did
        self.weights = np.asarray(weights, dtype=np.float32).astype(np.float64)
        self.portless = np.asarray(portless, dtype=np.float32).astype(np.float64)
        self.opening = np.asarray(opening, dtype=np.float64)
        self.next_layout = np.asarray(next_layout, dtype=np.float64)
        self.portless_layout = np.asarray(portless_layout, dtype=np.float64)
        self.flips = np.asarray(flips, dtype=np.float64)
        self.going = np.asarray(going, dtype=np.int16)
        self.going_prev = np.asarray(going_prev, dtype=np.int16)
        self.layout_name = layout_name
        if len({x is None for x in (plans, going_left, last_flips, scripts)}) > 1:
            raise ValueError("plans, going_left, last_flips and scripts come together")
        # (codes, first layouts, counts): ``script_table``'s
        self.scripts = None if scripts is None else (np.asarray(scripts[0], dtype=np.int8),
                                                     np.asarray(scripts[1], dtype=np.int16),
                                                     np.asarray(scripts[2], dtype=np.float32).astype(np.float64))
        self.last_flips = None if last_flips is None else np.asarray(last_flips, dtype=np.float64)
        self.plans = None if plans is None else np.asarray(plans, dtype=np.float64)
        self.going_left = None if going_left is None else np.asarray(going_left, dtype=np.int32)
        # states by ``chain_state``; False: a file saved before them, by ``layouts.flow_state``
        self.turns = turns
        self.n_base = CHAIN_BASE if turns else N_BASE
        if self.weights.shape[-1] != (CHAIN_STATES if turns else N_STATES):
            raise ValueError(f"weights have {self.weights.shape[-1]} states, the file's kind "
                             f"{CHAIN_STATES if turns else N_STATES}")

    def _state(self, packets: int, last_reversed: bool, turned: bool) -> int:
        """A flow's state before lateness, as this chain's file counts them."""
        return chain_state(packets, last_reversed, turned) if self.turns else flow_state(packets, last_reversed)

    def _unstate(self, base: int) -> tuple[int, bool, bool]:
        """(packets, last reversed, turned) of a state before lateness (its bucket's least packets)."""
        if self.turns:
            return STATE_PACKETS[base // WAYS], base % WAYS == 1, base % WAYS >= 1
        return STATE_PACKETS[base // 2], bool(base % 2), bool(base % 2)

    # -- fitting ---------------------------------------------------------------------------------

    @classmethod
    def fit(cls, images: list[np.ndarray], labels: list[str], layout=None, streams: list | None = None,
            calibrate: bool = True) -> "FlowChain":
        """Images (H, W) int8 of the training set and their classes; ``layout`` their bit layout
        (default netdiffusion); ``streams`` one key per image, consecutive images with the same
        key being consecutive windows of one capture (default: every image alone)."""
        from netdiff.bits.layout import named_layout

        layout = layout or named_layout("netdiffusion", height=images[0].shape[0])
        ports = port_columns(layout)
        classes = sorted(set(labels))
        vocab, layout_ids = layout_vocabulary(images)
        n_c, n_k = len(classes), len(vocab)
        counts = _Counts(n_c, n_k)
        choices: list[list] = [[] for _ in classes]
        targets = np.zeros((n_c, 5))     # rows, new, most recent, far back, overdue
        snaps: list[list] = [[] for _ in classes]
        transport = [row_transport(v, ports) for v in vocab]
        for lo, hi in capture_spans(labels, streams):
            c = classes.index(labels[lo])
            rows = np.concatenate([np.asarray(im) for im in images[lo:hi]])
            ids = np.concatenate(layout_ids[lo:hi])
            # what calibration matches: rows after the first window when the capture has more (a
            # generated image starts among the flows going on, not at a capture's start)
            skip = len(images[lo]) if hi - lo > 1 else 0
            # a capture that ends on rows without a packet shows its end; one that fills its last
            # window may go on past it
            shown = not vocab[ids[-1]].any()
            choices[c].append(_capture_choices(rows, ids, transport, ports, len(images[lo]), skip, shown, c,
                                               counts, targets[c], snaps[c]))
        weights = np.zeros((n_c, n_k, MAX_LINK + 1, CHAIN_STATES))
        portless = np.zeros((n_c, n_k + 1))
        for c in range(n_c):
            portless[c], weights[c] = fit_flow_choices(*_join(choices[c]), n_k)
        going = np.full((n_c, SNAPSHOTS, MAX_LINK, 2), -1, dtype=np.int16)
        going_left = np.full((n_c, SNAPSHOTS, MAX_LINK), -1, dtype=np.int32)
        going_prev = np.full((n_c, SNAPSHOTS), -1, dtype=np.int16)
        plans = np.stack([with_cut(counts.whole[c], counts.cut[c]) for c in range(n_c)]) if n_c else counts.whole
        for c, at in enumerate(snaps):
            # evenly over the class's window starts, the same ones every time
            for j, k in enumerate(np.linspace(0, len(at) - 1, min(len(at), SNAPSHOTS)).round().astype(int)):
                prev, flows = at[k]
                going_prev[c, j] = prev
                if flows:
                    going[c, j, :len(flows)] = [f[:2] for f in flows]
                    going_left[c, j, :len(flows)] = [going_size(counts.whole[c, k], so_far, seen, cut) - so_far
                                                     for k, so_far, seen, cut in (f[2] for f in flows)]
        chain = cls(vocab, classes, weights, portless, counts.opening, counts.next_layout,
                    counts.portless_layout, counts.flips, going, going_prev, layout.name,
                    plans=plans, going_left=going_left, last_flips=counts.last_flips,
                    scripts=script_table(counts.scripts, n_c))
        if calibrate:
            chain.calibrate({classes[c]: tuple(t[1:] / t[0]) for c, t in enumerate(targets) if t[0]})
        return chain

    @classmethod
    def fit_dataset(cls, dataset) -> "FlowChain":
        """Fit on an ``ImageDataset`` (netdiff.model.data): its windows, classes and streams."""
        from netdiff.bits.layout import named_layout

        return cls.fit([e.bits for e in dataset.examples], [e.cls for e in dataset.examples],
                       named_layout(dataset.image.layout, height=dataset.image.height),
                       streams=dataset.stream_keys())

    # -- sampling --------------------------------------------------------------------------------

    def sample_structure(self, cls: str, rows: int, generator: torch.Generator, layout=None
                         ) -> tuple[np.ndarray, list[list[tuple[int, bool]]]]:
        """One image of class ``cls``: its rows' layout ids (into ``vocab``) and its flows, lists
        of (row, reversed against the flow's first row) with two rows or more (a flow of one needs
        no tie). Randomness from the image's own generator (the same draws for the same seed);
        ``layout`` is for ``LayoutChain``'s interface (the ports were read at fit time)."""
        if cls not in self.classes:
            raise KeyError(cls)
        ids, flows, _, _ = self._walk(self.classes.index(cls), rows, generator)
        return ids, [[(i, rev != f[0][1]) for i, rev in f] for f in flows if len(f) > 1]

    def sample(self, cls: str, rows: int, generator: torch.Generator) -> np.ndarray:
        """(rows, W) bool present-pixel map for one image of class ``cls``."""
        return self.vocab[self.sample_structure(cls, rows, generator)[0]]

    def _walk(self, c: int, rows: int, generator: torch.Generator, weights: np.ndarray | None = None,
              portless_scale: float = 1.0):
        """(layout ids, flows as lists of (row, reversed against the flow's first packet), per row
        the option taken (0 a new flow, r the r-th most recent flow, -1 a row without ports), per
        row whether the flow it went on with was long overdue). ``weights``, ``portless_scale``:
        the class's weights scaled (calibration)."""
        n_k = len(self.vocab)
        weight = self.weights[c] if weights is None else weights
        # a class without rows without ports never draws one
        portless = np.where(self.portless_layout[c].sum(1) > 0, self.portless[c] * portless_scale, 0.0)
        flip = self.flips[c] + 1e-9     # a state never seen: either way
        opening = _with_pseudo(self.opening[c])
        portless_layout = _with_pseudo(self.portless_layout[c])
        new_weight = 1.0 if opening.sum() > 0 else 0.0     # a class whose rows never have ports
        blank = ~self.vocab.any(1)      # "no packet": a capture's end
        started = False
        # per flow, most recent first: [flow index, packets, last reversed, state without
        # lateness, first row, last row, last layout, turned, packets planned, script or None]
        recent: list[list] = []
        planned = self.plans is not None
        if planned:
            plans = self.plans[c]
            any_plan = plans.sum(0)     # a layout no flow opened with in training: the class's sizes
            last_flip = self.last_flips[c] + 1e-9
            codes, script_first, script_count = (a[c] for a in self.scripts)
            script_len = (codes >= 0).sum(1) + 1
        flows: list[list[tuple[int, bool]]] = []
        # the image starts mid-capture, among the flows going on where one of the class's training
        # windows starts
        pick_start = float(torch.rand(1, generator=generator, dtype=torch.float64))
        have = np.flatnonzero(self.going_prev[c] >= 0)
        prev = n_k
        if len(have):
            j = have[min(int(pick_start * len(have)), len(have) - 1)]
            prev = int(self.going_prev[c, j])
            on = self.going[c, j, :, 0] >= 0
            left = self.going_left[c, j][on] if planned else np.full(int(on.sum()), ENDLESS)
            for (state, last_layout), more in zip(self.going[c, j][on], left):
                base, late = int(state) % self.n_base, int(state) // self.n_base
                n, rev, turned = self._unstate(base)
                last = -LATE_ROWS[late]     # a pace of 1 row per packet, as late as the state says
                flows.append([])
                recent.append([len(flows) - 1, n, rev, base, last - (n - 1), last, int(last_layout), turned,
                               n + int(more), None])
        ids = np.empty(rows, dtype=np.intp)
        taken = np.full(rows, -1, dtype=np.int64)
        overdue = np.zeros(rows, dtype=bool)
        # a file saved before plans draws three uniforms a row, as it did
        u = torch.rand((rows, 5 if planned else 3), generator=generator, dtype=torch.float64).numpy()
        reach = weight.shape[1] - 1
        late_0, late_1 = LATE_EDGES
        n_base, opened = self.n_base, self._state(1, False, False)
        for i in range(rows):
            cand = recent[:reach]
            # ``lateness`` inlined: this runs for every recent flow on every row
            st = np.array([f[3] + n_base * ((i - f[5] > late_0) + (i - f[5] > late_1)) for f in cand], dtype=np.intp)
            last_of = np.array([f[6] for f in cand], dtype=np.intp)
            w = np.concatenate([[new_weight, portless[prev]], weight[last_of, np.arange(1, len(cand) + 1), st]])
            if planned:
                # not those that have all theirs, nor a scripted packet before it is as late as scripted
                late_now = st // n_base
                w[2:] *= np.array([f[1] < f[8] and (f[9] is None or late_now[j] >= f[9][f[1] - 1] % 3)
                                   for j, f in enumerate(cand)], dtype=bool)
            pick = draw_index(w, u[i, 0])
            if pick == 1:
                k = draw_index(portless_layout[prev], u[i, 2])
                if blank[k] and not started:
                    # a capture's end before any packet: pcap2img writes no window without a
                    # packet, and an image of none fails repair (one QUIC image in 12 with a
                    # chain calibrated otherwise). The same draws again without it, so every walk
                    # that starts with a packet is the one it was.
                    keep = np.where(blank, 0.0, portless_layout[prev])
                    if keep.sum() > 0:
                        k = draw_index(keep, u[i, 2])
                    elif w[0] + w[2:].sum() > 0:
                        w[1] = 0.0
                        pick = draw_index(w, u[i, 0])
            if pick == 0:
                taken[i] = 0
                k = draw_index(opening[prev], u[i, 2])
                flows.append([(i, False)])
                size, script = ENDLESS, None
                if planned:
                    size = plan_packets(plans[k] if plans[k].sum() > 0 else any_plan, u[i, 3]) \
                        if any_plan.sum() > 0 else ENDLESS
                    like = np.where((script_first == k) & (script_len == size), script_count, 0.0)
                    if size <= SCRIPT_MAX and like.sum() > 0:
                        script = codes[draw_index(like, u[i, 4])]
                recent.insert(0, [len(flows) - 1, 1, False, opened, i, i, k, False, size, script])
                if len(recent) > reach:
                    recent.pop()        # past the reach a flow only falls further back
            elif pick >= 2:
                j = pick - 2
                taken[i] = j + 1
                f = recent.pop(j)
                overdue[i] = st[j] // n_base == _LAST_BUCKET
                if f[9] is not None:
                    turned = int(f[9][f[1] - 1] // 3)
                else:
                    turned = draw_index(last_flip[f[6], st[j], to_come_bucket(f[8] - f[1] - 1)] if planned
                                        else flip[f[6], st[j]], u[i, 1])
                rev = bool(f[2] ^ turned)
                nxt = self.next_layout[c, f[6], turned]
                # a layout never followed this way: the flow keeps its own
                k = draw_index(nxt, u[i, 2]) if nxt.sum() > 0 else f[6]
                flows[f[0]].append((i, rev))
                f[1] += 1
                f[2] = rev
                f[7] = f[7] or rev
                f[3] = self._state(f[1], rev, f[7])
                f[5] = i
                f[6] = k
                recent.insert(0, f)
            ids[i] = k
            prev = k
            started = started or not blank[k]
        return ids, flows, taken, overdue

    def calibrate(self, targets: dict[str, tuple[float, float, float, float]], rows: int = CALIBRATION_ROWS,
                  images: int = CALIBRATION_IMAGES, rounds: int = CALIBRATION_ROUNDS) -> dict:
        """Scale each class's weight of a new flow, of going on with the most recent flow, of going
        back past the ``FAR``-th most recent and of going on with a long-overdue flow so that the
        chain's own walks do each as often as the training rows did (``targets``: class -> those
        shares of the rows with ports); see ``LayoutChain.calibrate`` for why. A new flow weighs
        1, so its scale divides every other weight. Returns class -> the four multipliers."""
        out = {}
        for name, (t_new, t_last, t_far, t_late) in targets.items():
            c = self.classes.index(name)
            base = self.weights[c].copy()
            a = b = d = e = 1.0
            for _ in range(rounds):
                w = scale_going_on(base / a, b, d, e, self.n_base)
                got = np.zeros(5, dtype=np.int64)
                for s in range(images):
                    g = torch.Generator().manual_seed(CALIBRATION_SEED + s)
                    _, _, taken, overdue = self._walk(c, rows, g, w, 1.0 / a)
                    got += walk_counts(taken, overdue)
                n, new, last, far, late = (int(x) for x in got)
                if n == 0:
                    break
                steps = [odds_step(t, x / n) ** CALIBRATION_DAMPING
                         for t, x in ((t_new, new), (t_last, last), (t_far, far), (t_late, late))]
                a, b, d, e = (float(np.clip(x * s, 0.02, 50.0)) for x, s in zip((a, b, d, e), steps))
            self.weights[c] = scale_going_on(base / a, b, d, e, self.n_base)
            self.portless[c] = self.portless[c] / a
            out[name] = (a, b, d, e)
        # as saved: a loaded chain draws what this one does
        self.weights = self.weights.astype(np.float32).astype(np.float64)
        self.portless = self.portless.astype(np.float32).astype(np.float64)
        return out

    # -- files -----------------------------------------------------------------------------------

    def save(self, folder) -> None:
        from safetensors.numpy import save_file

        meta = {"classes": self.classes, "width": int(self.vocab.shape[1]), "layout": self.layout_name,
                "order": ORDER}
        if self.turns:
            meta["states"] = STATES
        if self.plans is not None:
            meta["plans"] = PLANS
        meta = json.dumps(meta, sort_keys=True)
        tensors = {"vocab": np.packbits(self.vocab, axis=1), "weights": self.weights.astype(np.float32),
                   "portless": self.portless.astype(np.float32), "opening": self.opening.astype(np.float32),
                   "next_layout": self.next_layout.astype(np.float32),
                   "portless_layout": self.portless_layout.astype(np.float32),
                   "flips": self.flips.astype(np.float32), "going": self.going.astype(np.int16),
                   "going_prev": self.going_prev.astype(np.int16)}
        if self.plans is not None:
            tensors.update(plans=self.plans.astype(np.float32), going_left=self.going_left.astype(np.int32),
                           last_flips=self.last_flips.astype(np.float32), script_codes=self.scripts[0],
                           script_first=self.scripts[1], script_counts=self.scripts[2].astype(np.float32))
        with atomic_path(Path(folder) / LAYOUTS_FILE) as tmp:
            save_file(tensors, str(tmp), metadata={"netdiff": meta})

    @classmethod
    def read(cls, path: Path, f, meta: dict) -> "FlowChain":
        """From an open safetensors file ``f`` whose metadata is ``meta`` (``load_structure``)."""
        vocab = np.unpackbits(f.get_tensor("vocab"), axis=1)[:, :meta["width"]].astype(bool)
        names = ("weights", "portless", "opening", "next_layout", "portless_layout", "flips", "going", "going_prev")
        turns = meta.get("states") == STATES
        for key, known in (("states", STATES), ("plans", PLANS)):
            if meta.get(key) not in (None, known):
                from netdiff.errors import NetdiffError

                raise NetdiffError(f"{path}: flow {key} {meta[key]!r} are not ones this netdiff reads "
                                   f"({known!r}); saved by a newer netdiff? update netdiff")
        planned = meta.get("plans") == PLANS
        chain = cls(vocab, meta["classes"], *(f.get_tensor(n) for n in names), meta.get("layout", "netdiffusion"),
                    turns=turns, plans=f.get_tensor("plans") if planned else None,
                    going_left=f.get_tensor("going_left") if planned else None,
                    last_flips=f.get_tensor("last_flips") if planned else None,
                    scripts=tuple(f.get_tensor(n) for n in ("script_codes", "script_first", "script_counts"))
                    if planned else None)
        n_c, n_k = len(chain.classes), len(vocab)
        n_states = CHAIN_STATES if turns else N_STATES
        snaps = chain.going.shape[1] if chain.going.ndim == 4 else -1
        expect = {"weights": (chain.weights, (n_c, n_k, chain.weights.shape[2], n_states)),
                  "portless": (chain.portless, (n_c, n_k + 1)), "opening": (chain.opening, (n_c, n_k + 1, n_k)),
                  "next_layout": (chain.next_layout, (n_c, n_k, 2, n_k)),
                  "portless_layout": (chain.portless_layout, (n_c, n_k + 1, n_k)),
                  "flips": (chain.flips, (n_c, n_k, n_states, 2)),
                  "going": (chain.going, (n_c, snaps, chain.going.shape[2] if snaps >= 0 else -1, 2)),
                  "going_prev": (chain.going_prev, (n_c, snaps))}
        if planned:
            expect.update(plans=(chain.plans, (n_c, n_k, len(PLAN_SIZES))),
                          going_left=(chain.going_left, chain.going.shape[:3]),
                          last_flips=(chain.last_flips, (n_c, n_k, n_states, len(TO_COME_EDGES) + 1, 2)),
                          script_codes=(chain.scripts[0], (n_c, chain.scripts[0].shape[1], SCRIPT_MAX - 1)),
                          script_first=(chain.scripts[1], chain.scripts[0].shape[:2]),
                          script_counts=(chain.scripts[2], chain.scripts[0].shape[:2]))
        for name, (arr, shape) in expect.items():
            if arr.shape != shape:
                raise ValueError(f"{name} has shape {arr.shape}, expected {shape}")
        if planned and not all(np.isfinite(a).all() and (a >= 0).all()
                               for a in (chain.plans, chain.last_flips, chain.scripts[2])):
            raise ValueError("plans, last_flips or script_counts hold counts that are negative or not finite")
        if planned and (chain.scripts[1].max(initial=-1) >= n_k or chain.scripts[0].max(initial=-1) >= 6):
            raise ValueError("scripts name a layout or a packet the file does not have")
        # layout ids past the vocabulary would fail only when an image is sampled, deep in a loop
        if chain.going.size and (chain.going[..., 1].max() >= n_k or chain.going_prev.max() >= n_k):
            raise ValueError("going names a layout the file does not have")
        return chain


def load_structure(folder) -> "FlowChain | LayoutChain | None":
    """The structure stage saved in a model folder: a ``FlowChain`` (``order: flows``), a
    ``LayoutChain`` (files saved before it), or None when the folder has none."""
    from safetensors import safe_open

    path = Path(folder) / LAYOUTS_FILE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = json.loads(f.metadata()["netdiff"])
            if meta.get("order") == ORDER:
                return FlowChain.read(path, f, meta)
    except Exception as e:      # safetensors' own errors, a missing key, bad metadata
        from netdiff.errors import NetdiffError

        if isinstance(e, NetdiffError):
            raise
        raise NetdiffError(f"{path}: damaged layout file ({str(e).splitlines()[0]}); "
                           "train the model again") from None
    return LayoutChain.load(folder)


class _Counts:
    """Layout counts of one fit, per class."""

    def __init__(self, n_c: int, n_k: int):
        self.opening = np.zeros((n_c, n_k + 1, n_k))
        self.next_layout = np.zeros((n_c, n_k, 2, n_k))
        self.portless_layout = np.zeros((n_c, n_k + 1, n_k))
        self.flips = np.zeros((n_c, n_k, CHAIN_STATES, 2))
        self.last_flips = np.zeros((n_c, n_k, CHAIN_STATES, len(TO_COME_EDGES) + 1, 2))
        self.whole = np.zeros((n_c, n_k, len(PLAN_SIZES)))     # sizes of the flows not cut
        self.cut: list[list] = [[] for _ in range(n_c)]         # (first layout, packets seen) of those cut
        self.scripts: list[dict] = [{} for _ in range(n_c)]     # (first layout, codes) -> whole flows


def _capture_choices(rows: np.ndarray, ids: np.ndarray, transport: list, ports: dict, window: int, skip: int,
                     shown: bool, c: int, counts: _Counts, targets: np.ndarray, snaps: list) -> tuple:
    """One capture's rows (its windows joined) as choices: (previous layouts, option codes (rows,
    MAX_LINK + 2; -1 none), index of the option taken). Option 0 is a new flow, 1 a row without
    ports, 2 + j the (j + 1)-th most recent flow, coded 2 + (its last layout * (MAX_LINK + 1) +
    j + 1) * CHAIN_STATES + its state; a flow that has had all its packets is no option (it keeps
    its place in the recency order). Adds the capture's counts to ``counts`` (layouts, flows' sizes
    by their first layout, turns by the packets still to come in the flow), its calibration counts
    after ``skip`` rows to ``targets`` and a snapshot of the flows going on before every
    ``window``-th row (state, last layout, (first layout, packets so far, packets seen, whether
    cut)) to ``snaps``."""
    n_k = counts.flips.shape[1]
    flow_of = _flow_instances(rows, ids, transport, ports)
    total = np.bincount(flow_of[flow_of >= 0], minlength=1)
    # Where a capture does not show its end (``shown``: its last row has no packet), a flow going
    # on there (its last packet fewer rows before the end than its longest pause, or than
    # LATE_EDGES[0], the rows a flow is on time within) was cut, not ended: its size counts as the
    # class's whole flows like it (``with_cut``, ``going_size``). Where the capture shows its end,
    # its flows end as seen, and the images end there as the capture did: with every flow going on
    # at a capture's end taken as cut, the flows of short captures (messaging's windows of 227-701
    # packets) kept the walks going past where the captures end (walks' flow-size JSD 0.027 ->
    # 0.069, docs/results.md stop 40).
    at = np.flatnonzero(flow_of >= 0)
    last_row = np.zeros(len(total), dtype=np.int64)
    np.maximum.at(last_row, flow_of[at], at)
    pause = np.zeros(len(total), dtype=np.int64)
    order = np.lexsort((at, flow_of[at]))           # by flow, then row
    by_flow, rows_of = flow_of[at][order], at[order]
    same = by_flow[1:] == by_flow[:-1]
    np.maximum.at(pause, by_flow[1:][same], np.diff(rows_of)[same])
    cut = (len(rows) - 1 - last_row <= np.maximum(pause, LATE_EDGES[0])) & (not shown)
    recent: list[list] = []     # [flow, first source port, packets, last reversed, first row, last row,
    #                             last layout, turned, first layout]
    opened = np.zeros(len(total), dtype=bool)
    script: dict[int, list] = {}        # flow -> [first layout, codes of its packets after the first]
    prevs = np.empty(len(rows), dtype=np.intp)
    opts = np.full((len(rows), MAX_LINK + 2), -1, dtype=np.int64)
    won = np.empty(len(rows), dtype=np.int64)
    for i, row in enumerate(rows):
        prev = int(ids[i - 1]) if i else n_k
        prevs[i] = prev
        if i and i % window == 0:
            snaps.append((prev, [(_state(f, i), f[6], (f[8], f[2], int(total[f[0]]), bool(cut[f[0]])))
                                 for f in recent[:MAX_LINK]]))
        cand = recent[:MAX_LINK]
        states = [_state(f, i) for f in cand]
        opts[i, 0] = 0
        opts[i, 1] = 1
        for j, (f, s) in enumerate(zip(cand, states)):
            if f[2] < total[f[0]]:
                opts[i, 2 + j] = 2 + (f[6] * (MAX_LINK + 1) + j + 1) * CHAIN_STATES + s
        k = int(ids[i])
        t = transport[k]
        if t is None:
            won[i] = 1
            counts.portless_layout[c, prev, k] += 1
            continue
        s = bits_value(row[ports[t][0]])
        if not opened[flow_of[i]]:
            opened[flow_of[i]] = True
            recent.insert(0, [int(flow_of[i]), s, 1, False, i, i, k, False, k])
            del recent[MAX_LINK + 1:]       # past the reach a flow only falls further back
            script[int(flow_of[i])] = [k, []]
            won[i] = 0
            counts.opening[c, prev, k] += 1
            if cut[flow_of[i]]:
                counts.cut[c].append((k, int(total[flow_of[i]])))
            else:
                counts.whole[c, k, plan_bucket(int(total[flow_of[i]]))] += 1
            if i >= skip:
                targets += (1, 1, 0, 0, 0)
            continue
        # a flow is among the MAX_LINK most recent, or its next packet opens a new one
        found = next(j for j, f in enumerate(recent) if f[0] == flow_of[i])
        f = recent.pop(found)
        rev = s != f[1]
        turned = int(rev != f[3])
        counts.flips[c, f[6], states[found], turned] += 1
        to_come = ENDLESS if cut[f[0]] else int(total[f[0]] - f[2] - 1)
        counts.last_flips[c, f[6], states[found], to_come_bucket(to_come), turned] += 1
        script[f[0]][1].append(script_code(bool(turned), states[found] // CHAIN_BASE))
        counts.next_layout[c, f[6], turned, k] += 1
        won[i] = 2 + found
        if i >= skip:
            targets += (1, 0, int(found == 0), int(found + 1 > FAR), int(states[found] // CHAIN_BASE == _LAST_BUCKET))
        f[2] += 1
        f[3] = rev
        f[7] = f[7] or rev
        f[5] = i
        f[6] = k
        recent.insert(0, f)
    for flow, (first, codes) in script.items():
        if not cut[flow] and total[flow] <= SCRIPT_MAX:
            key = (first, tuple(codes))
            counts.scripts[c][key] = counts.scripts[c].get(key, 0) + 1
    return prevs, opts, won


def _flow_instances(rows: np.ndarray, ids: np.ndarray, transport: list, ports: dict) -> np.ndarray:
    """(rows,) the flow each row with ports goes on with, numbered in the order they open (-1: a row
    without ports). A flow is a transport and port pair; one fallen back past the ``MAX_LINK``-th
    most recent is over, and its pair opens a new flow (what the walks can go back to)."""
    flow_of = np.full(len(rows), -1, dtype=np.int64)
    recent: list[tuple] = []        # (key, flow), most recent first
    n = 0
    for i, row in enumerate(rows):
        t = transport[int(ids[i])]
        if t is None:
            continue
        s, d = bits_value(row[ports[t][0]]), bits_value(row[ports[t][1]])
        key = (t, min(s, d), max(s, d))
        found = next((j for j, f in enumerate(recent) if f[0] == key), None)
        if found is None:
            recent.insert(0, (key, n))
            del recent[MAX_LINK:]
            n += 1
        else:
            recent.insert(0, recent.pop(found))
        flow_of[i] = recent[0][1]
    return flow_of


def with_cut(whole: np.ndarray, cut: list[tuple[int, int]]) -> np.ndarray:
    """A class's ``plans``: the sizes of its whole flows (``whole``, (K, len(PLAN_SIZES)) counts by
    first layout), each flow the capture's end cut (``cut``: first layout, packets seen) shared out
    over the whole flows like it with at least its packets (Kaplan and Meier's redistribution to
    the right, J. Am. Stat. Assoc. 53, 1958). A cut flow longer than every whole one is left out:
    it goes on where an image starts among it (``going_size``), and a new flow planned endless by
    it took rows from it (a synthetic capture's bulk connection, one flow of 700 with its layout,
    broke in one walk of four; tests/model/test_flow_chain.py)."""
    plans = whole.copy()
    for k, seen in cut:
        longer = whole[k].copy()
        longer[:plan_bucket(seen)] = 0
        if longer.sum() > 0:
            plans[k] += longer / longer.sum()
    return plans


def going_size(whole: np.ndarray, so_far: int, seen: int, cut: bool) -> int:
    """The size planned for a flow going on where an image starts: what it had in the capture, or
    for one the capture's end cut, the median size of the class's whole flows with its first
    layout and at least its packets (``whole``: their ``PLAN_SIZES`` counts; a bucket's least
    size), ``ENDLESS`` where there is none."""
    if not cut:
        return seen
    longer = whole.copy()
    longer[:plan_bucket(seen)] = 0
    if longer.sum() == 0:
        return ENDLESS
    b = int(np.searchsorted(np.cumsum(longer), longer.sum() / 2))
    return max(int(PLAN_SIZES[b]), seen, so_far + 1)


def script_code(turned: bool, late: int) -> int:
    """A scripted packet: whether it turns its flow and its ``lateness`` bucket, as one code."""
    return 3 * int(turned) + late


def script_table(scripts: list[dict], n_c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per class, its scripts as arrays: (C, N, SCRIPT_MAX - 1) codes (-1 past the flow's last
    packet), (C, N) first layouts (-1: no script) and (C, N) counts, N the most any class has."""
    n = max([len(d) for d in scripts] + [1])
    codes = np.full((n_c, n, SCRIPT_MAX - 1), -1, dtype=np.int8)
    first = np.full((n_c, n), -1, dtype=np.int16)
    count = np.zeros((n_c, n), dtype=np.float32)
    for c, d in enumerate(scripts):
        for j, ((k, seq), m) in enumerate(sorted(d.items())):
            codes[c, j, :len(seq)] = seq
            first[c, j], count[c, j] = k, m
    return codes, first, count


def to_come_bucket(packets: int) -> int:
    """The ``TO_COME_EDGES`` bucket of a flow with ``packets`` packets still to come."""
    return sum(packets >= e for e in TO_COME_EDGES)


def plan_bucket(packets: int) -> int:
    """The ``PLAN_SIZES`` bucket of a flow of ``packets`` packets."""
    return int(np.searchsorted(PLAN_SIZES, packets, side="right")) - 1


def plan_packets(counts: np.ndarray, u: float) -> int:
    """A flow's packets drawn by one uniform ``u`` from bucket ``counts`` (len(PLAN_SIZES)): the
    bucket, then (with what is left of ``u``) a size within it; ``ENDLESS`` from the last."""
    cdf = np.cumsum(counts)
    at = u * cdf[-1]
    b = min(int(np.searchsorted(cdf, at, side="right")), len(counts) - 1)
    if b == len(PLAN_SIZES) - 1:
        return ENDLESS
    lo, hi = int(PLAN_SIZES[b]), int(PLAN_SIZES[b + 1])
    within = (at - (cdf[b] - counts[b])) / counts[b] if counts[b] > 0 else 0.0
    return lo + min(int(within * (hi - lo)), hi - lo - 1)


def chain_state(packets: int, last_reversed: bool, turned: bool, late: int = 0) -> int:
    """What a flow looks like to the next packet (this file format's): how many packets it has,
    which way its last went of ``WAYS`` (the first's with none against it yet, against the
    first's, the first's after a turn), how late it is (``layouts.lateness``)."""
    way = 1 if last_reversed else 2 if turned else 0
    return WAYS * sum(packets >= e for e in _CHAIN_EDGES) + way + CHAIN_BASE * late


def _state(f: list, i: int) -> int:
    return chain_state(f[2], f[3], f[7], lateness(i - f[5], f[2], f[5] - f[4]))


def _join(parts: list[tuple]) -> tuple:
    if not parts:
        return (np.zeros(0, dtype=np.intp), np.zeros((0, MAX_LINK + 2), dtype=np.int64),
                np.zeros(0, dtype=np.int64))
    return tuple(np.concatenate(x) for x in zip(*parts))


def fit_flow_choices(prevs: np.ndarray, options: np.ndarray, taken: np.ndarray, n_layouts: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """One class's choice weights: ((n_layouts + 1,) a row without ports' weight after each layout,
    (n_layouts, MAX_LINK + 1, CHAIN_STATES) a flow's by its last layout, recency and state), a new
    flow weighing 1. ``options`` as ``_capture_choices`` codes them, with option 1 (no ports)
    taken to mean the previous row's layout (``prevs``). Fitted by Hunter's MM iterations (Ann.
    Statist. 32, 2004) at three levels, each with pseudo-rows of the level above: a flow's state
    at any recency and last layout (maximum likelihood: a state never gone on with weighs 0), then
    recency and state, then per last layout."""
    per_flow = (MAX_LINK + 1) * CHAIN_STATES
    off = 1 + (n_layouts + 1)       # 0 new flow, 1 + previous layout: no ports, then the flows
    rows = np.arange(len(taken))
    flow = options >= 2
    code = np.where(flow, off + (options - 2), options)
    code[:, 1] = 1 + prevs
    by_state = np.where(flow, off + (options - 2) % CHAIN_STATES, code)
    w1 = fit_luce(by_state, by_state[rows, taken], np.ones(off + CHAIN_STATES), shrink=0.0)
    w1[off:] = borrow_unseen(w1[off:], np.bincount(by_state[flow] - off, minlength=CHAIN_STATES), WAYS)
    by_recency = np.where(flow, off + (options - 2) % per_flow, code)
    prior = np.concatenate([w1[:off], np.tile(w1[off:], MAX_LINK + 1)])
    w2 = fit_luce(by_recency, by_recency[rows, taken], prior)
    w3 = fit_luce(code, code[rows, taken], np.concatenate([w2[:off], np.tile(w2[off:], n_layouts)]))
    return w3[1:off], w3[off:].reshape(n_layouts, MAX_LINK + 1, CHAIN_STATES)


def _with_pseudo(counts: np.ndarray) -> np.ndarray:
    """Layout counts after each previous layout, with ``LAYOUT_PSEUDO`` rows of the kind's layouts
    whatever came before (a layout never seen before another can still follow it)."""
    total = counts.sum(0, keepdims=True)
    return counts + LAYOUT_PSEUDO * total / max(float(total.sum()), 1.0)
