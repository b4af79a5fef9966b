"""Repair: any generated image of the right kind -> a capture whose every packet is valid.

    bits, notes = quantize(rgb, layout)
    result = repair(bits, layout, seed=0, address_pool="10.0.0.0/16", timing=model,
                    priors=FieldPriors.load("field_priors.json"), klass="dns")
    write_pcap(path, result.batch)

Steps: quantise pixels (netdiff.image.reader: the quantiser every image reader shares); decide
each row's stack and move its fields to legal values (rows.py, rules from protocol_rules/);
group rows into flows and make the trace consistent (trace.py); with class priors (priors.py),
legal values the class never shows are replaced by ones it shows; addresses (addresses.py),
timestamps (timing.py), bodies (bodies.py); then bytes, lengths and checksums in one pass
(rows.build). The report says what changed and how much of the generated content survived,
per field group.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from netdiff.bits.layout import Layout
from netdiff.errors import NetdiffError
from netdiff.image.reader import quantize
from netdiff.io.pcap import PacketBatch
from netdiff.packet_repair.addresses import AddressPool
from netdiff.packet_repair.priors import FieldPriors
from netdiff.packet_repair.timing import TimingModel

__all__ = ["quantize", "repair", "RepairResult", "TimingModel", "FieldPriors", "FIELD_GROUPS",
           "check_rows"]

# Field groups of the report: nPrint field name prefix -> group
FIELD_GROUPS = {
    "ipv4 header": lambda n: n.startswith("ipv4_") and n != "ipv4_opt",
    "ipv4 options": lambda n: n == "ipv4_opt",
    "ipv6 header": lambda n: n.startswith("ipv6_"),
    "tcp header": lambda n: n.startswith("tcp_") and n != "tcp_opt",
    "tcp options": lambda n: n == "tcp_opt",
    "udp header": lambda n: n.startswith("udp_"),
    "icmp header": lambda n: n.startswith("icmp_"),
    "payload": lambda n: n == "payload_bit",
}
START_NS = 1_700_000_000 * 10 ** 9


@dataclass
class RepairResult:
    batch: PacketBatch
    report: dict = field(default_factory=dict)
    rows: np.ndarray | None = None      # image row each packet came from (blank rows give none)


def _check_bits(bits: np.ndarray, layout: Layout) -> np.ndarray:
    bits = np.asarray(bits)
    if bits.ndim != 2 or bits.shape[1] != layout.width:
        raise NetdiffError(f"bit matrix has shape {bits.shape}; the layout {layout.name!r} needs "
                           f"(rows, {layout.width})")
    if bits.dtype != np.int8:
        bits = bits.astype(np.int8)
    if bits.size and (bits.min() < -1 or bits.max() > 1):
        bad = (bits < -1) | (bits > 1)
        y, x = np.argwhere(bad)[0]
        raise NetdiffError(f"bit matrix holds values other than -1/0/1 (first at row {y}, "
                           f"column {x}); quantise the image first")
    return bits


def check_rows(bits: np.ndarray, layout: Layout) -> dict[str, tuple[int, int]]:
    """Row-level rule violations of a bit matrix: {problem: (rows, first image row)}."""
    from netdiff.packet_repair.rows import read_rows
    from netdiff.rules.engine import load_rules

    r = read_rows(_check_bits(bits, layout), layout, load_rules())
    return {k: (int(m.sum()), int(r.index[np.argmax(m)])) for k, m in r.problems.items() if m.any()}


def repair(bits: np.ndarray, layout: Layout, *, seed: int = 0, address_pool: str | None = None,
           timing: TimingModel | None = None, strict: bool = False,
           klass: str | None = None, priors: FieldPriors | None = None) -> RepairResult:
    """Turn a (possibly noisy) ternary matrix into valid Ethernet packets.

    ``address_pool``: CIDRs/addresses, comma separated (default: private ranges; generated
    addresses are kept when the layout has them and they are legal). ``timing``: inter-arrival
    model (``klass`` picks its class; default: a neutral log-uniform model). ``strict``: raise
    ``NetdiffError`` listing the rule violations instead of repairing them. ``priors``: field
    distributions per class (``FieldPriors``, a loaded ``field_priors.json`` or its path);
    values of class ``klass`` that the class never shows are replaced by ones it shows.
    """
    from netdiff.bits.codec import encode
    from netdiff.packet_repair import bodies, rows, trace
    from netdiff.rules import compute as CR
    from netdiff.rules import engine as E

    # 1. Check the input and decide what every row is.
    bits = _check_bits(bits, layout)
    rules = E.load_rules()
    priors = FieldPriors.coerce(priors)
    cp = priors.for_class(klass, seed, rules) if priors is not None else None
    r = rows.read_rows(bits, layout, rules,
                       stack_prior=cp.stacks(rows.STACKS) if cp is not None else None)
    n = len(r)
    if n == 0:
        raise NetdiffError("no row of the image holds a packet (every row is blank/fill)")
    if strict:
        problems = {k: m for k, m in r.problems.items() if m.any()}
        if problems:
            bad_rows = np.zeros(n, dtype=bool)
            for m in problems.values():
                bad_rows |= m
            parts = [f"{k} in {int(m.sum())} rows (first: image row {int(r.index[np.argmax(m)])})"
                     for k, m in sorted(problems.items(), key=lambda kv: -kv[1].sum())]
            raise NetdiffError(f"strict: {int(bad_rows.sum())} of {n} packet rows break the "
                               f"protocol rules: {'; '.join(parts)}. Run without --strict to "
                               "repair them")

    # 2. Trace: flows, directions, then time (below), flags, lengths, sequence numbers, TTL,
    # addresses, IP ID.
    pool = AddressPool(address_pool, seed)
    model = timing if timing is not None else TimingModel()
    t = trace.repair_trace(r, rules, pool, keep_addresses=address_pool is None, priors=cp,
                           arrival_of=lambda flow, side: START_NS + model.arrival_ns(flow, side, klass, seed))

    # 3. Option areas (compute: options; legal kinds depend on the flags the trace settled).
    state = trace.TraceState(r, rules, flow=t["flow"], direction=t["direction"],
                             n_flows=int(t["flows"]), seed=seed, priors=cp)
    CR.run(rules, "options", state)
    opt_changed = dict(state.changed)
    if cp is not None:          # option layouts and values the class never shows
        for p, m in cp.options(r, t["flow"], t["direction"], service=t["server_port"],
                               bare=t.get("refused")).items():
            opt_changed[p] = opt_changed.get(p, False) | m

    # 4. Time: gaps from the learnt model, in image row order, each drawn for what its packet does
    # in the traced flows (timing.KINDS: opens one, follows its own, goes back to another, opens
    # one after every earlier flow has ended; the middle two also by whether it answers); short
    # flows then keep their own clock (timing.SHORT_MAX), so packets are written in time order.
    # Drawn by the trace as soon as its flows were settled (the lengths go with the pace); here
    # the packets are put in time order and what depends on the times follows: option clocks
    # (compute: timestamps).
    arrival = t.pop("arrival")
    order = np.lexsort((np.arange(n), arrival))
    if (order != np.arange(n)).any():
        trace.ids_in_time_order(r, rules, order)
    state.arrival, state.order = arrival, order
    CR.run(rules, "time", state)

    # 5. ICMP rest of header (compute: icmp_rest), bodies.
    CR.run(rules, "bodies", state)
    body, body_len = bodies.bodies(r, rules, layout.payload_bytes)

    # 6. Bytes, lengths, checksums.
    batch = rows.build(r, rules, arrival // 10 ** 9, arrival % 10 ** 9, body, body_len, trace.macs(r))
    batch = batch.take(order)

    # 7. Report: what changed, and how much of the generated content survived per field group.
    out_bits, parsed = encode(batch, layout)
    unreadable = int((parsed.reason != 0).sum())
    before = bits[r.index[order]]
    kept = {}
    per_field = {}
    if unreadable == 0:
        col_kept = (out_bits == before).mean(axis=0)       # one pass; fields are column slices
        for name, sl in layout.fields.items():
            per_field[name] = round(float(col_kept[sl].mean()), 4)
        for group, pick in FIELD_GROUPS.items():
            cols = [np.arange(sl.start, sl.stop) for nm, sl in layout.fields.items() if pick(nm)]
            if cols:
                kept[group] = round(float(col_kept[np.concatenate(cols)].mean()), 4)
        kept["all"] = round(float(col_kept.mean()), 4)

    def rows_of(pr):
        return r.proto == pr.number if pr.layer == 4 else r.v6 == (int(pr.bind["version"]) == 6)

    opt_rows = {p: int((m & rows_of(rules[p])).sum()) for p, m in opt_changed.items()}
    stacks = {}
    for l3, l4 in rows.STACKS:
        m = rows_of(rules[l3]) & rows_of(rules[l4])
        if m.any():
            stacks[f"{l3}/{l4}"] = int(m.sum())
    report = {
        "rows": int(len(bits)),
        "packets": n,
        "blank_rows": int(len(bits) - n),
        "stacks": stacks,
        "row_problems_repaired": {k: int(m.sum()) for k, m in r.problems.items() if m.any()},
        "flows": t["flows"],
        "tcp_handshakes": t.get("tcp_handshakes", 0),
        "hosts": t["hosts"],
        "servers": t["servers"],
        "rows_changed": {
            "ip_version": t["rows_changed_ip_version"],
            "ports": t["rows_changed_ports"],
            "ttl": t["rows_changed_ttl"],
            "tcp_flags": t.get("rows_changed_tcp_flags", 0),
            "tcp_options": opt_rows.get("tcp", 0),
            "ipv4_options": opt_rows.get("ipv4", 0),
        },
        "kept_share": kept,
        "kept_share_per_field": per_field,
        "unreadable_packets": unreadable,
        "packets_moved_in_time": int((order != np.arange(n)).sum()),
        "timing": "learnt model" + (f" (class {klass})" if klass else "") if timing is not None
                  else "default log-uniform 10 us..100 ms (no timing model given)",
        "addresses": address_pool or "private ranges (default pool)",
        "seed": seed,
    }
    if priors is not None:
        report["priors"] = cp.report() if cp is not None else \
            f"class {klass!r} is not in the priors (classes: {', '.join(sorted(priors.classes))}); not applied"
    return RepairResult(batch=batch, report=report, rows=r.index[order])
