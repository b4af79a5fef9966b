"""Trace repair: rows become flows that a TCP/IP stack could have sent.

Flows come from the generated ports (and, to break ties, sequence numbers): rows sharing a
port pair (either direction) form a flow; a row whose port pair occurs once joins the flow whose
ports are within a few flipped bits, or stays a flow of its own. Then, per flow: one IP
version, one 5-tuple and direction per row, a TCP handshake before data and teardown after it,
sequence and acknowledgement numbers that follow the bytes sent (SYN and FIN count one), TTL and
DF per direction, IP ID counting per host. Everything is whole-array work over group ids.

What the rule files declare is read from them: the dependencies between TCP fields
(``dependencies:``), which fields are ports (``ports:``), protocol numbers (``bind:``), which
ICMP types are requests, and the fields whose ``compute:`` names a computation registered in
``netdiff/rules/compute.py`` (sequence and acknowledgement numbers, addresses, IP ID per host,
option areas), which ``compute.run`` calls here at their stage.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from netdiff.errors import NetdiffError
from netdiff.packet_repair import payloads as PL
from netdiff.packet_repair.addresses import AddressPool, mac_for, usable_many
from netdiff.packet_repair.rows import Rows, header_lengths
from netdiff.rules import compute as CR
from netdiff.rules import engine as E

MERGE_BITS = 3              # a lone port pair joins a flow whose pair differs in <= 3 bits
_POP8 = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(axis=1)
M32 = (1 << 32) - 1


def popcount32(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.int64)
    return (_POP8[x & 255] + _POP8[(x >> 8) & 255] + _POP8[(x >> 16) & 255] +
            _POP8[(x >> 24) & 255]).astype(np.int64)


# --- group helpers (g: group id per row, rows in time order) ------------------------------------

def group_excl_cumsum(g: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Per row: the sum of x over earlier rows of the same group."""
    if len(g) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(g, kind="stable")
    xs = x[order].astype(np.int64)
    cs = np.cumsum(xs)
    gs = g[order]
    start = np.r_[True, gs[1:] != gs[:-1]]
    before = cs - xs
    ex = before - before[start][np.cumsum(start) - 1]
    out = np.empty_like(ex)
    out[order] = ex
    return out


def group_previous(g: np.ndarray) -> np.ndarray:
    """Per row: the row before it in its group (-1: the group's first row, or a negative group id:
    no group)."""
    g = np.asarray(g)
    n = len(g)
    prev = np.full(n, -1, dtype=np.int64)
    if n < 2:
        return prev
    order = np.lexsort((np.arange(n), g))
    gs = g[order]
    same = (gs[1:] == gs[:-1]) & (gs[1:] >= 0)
    prev[order[1:][same]] = order[:-1][same]
    return prev


def group_first(g: np.ndarray, size: int) -> np.ndarray:
    """Index of the first row of each group (-1 for empty groups)."""
    first = np.full(size, -1, dtype=np.int64)
    idx = np.arange(len(g))[::-1]
    first[g[::-1]] = idx          # later writes win: reversed, so the first row wins
    return first


def group_last(g: np.ndarray, size: int) -> np.ndarray:
    last = np.full(size, -1, dtype=np.int64)
    last[g] = np.arange(len(g))
    return last


def group_median(g: np.ndarray, x: np.ndarray, size: int) -> np.ndarray:
    order = np.lexsort((x, g))
    counts = np.bincount(g, minlength=size)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    med = np.zeros(size, dtype=np.int64)
    has = counts > 0
    med[has] = x[order][starts[has] + (counts[has] - 1) // 2]
    return med


def group_any(g: np.ndarray, m: np.ndarray, size: int) -> np.ndarray:
    return np.bincount(g, weights=m.astype(np.float64), minlength=size) > 0


@dataclass
class TraceState:
    """What the registered computations (rules/compute.py) run by repair read and write."""

    r: Rows
    rules: dict
    flow: np.ndarray | None = None          # flow id per row
    n_flows: int = 0
    direction: np.ndarray | None = None     # 0 client -> server, 1 back
    fd: np.ndarray | None = None            # (flow, direction) group per row
    pool: AddressPool | None = None
    keep_addresses: bool = False
    priors: object = None                   # priors.ClassPriors or None
    report: dict = field(default_factory=dict)
    client_port: np.ndarray | None = None
    server_port: np.ndarray | None = None
    host: np.ndarray | None = None          # sending host per row (after the addresses)
    changed: dict = field(default_factory=dict)     # protocol -> rows an option walk changed
    arrival: np.ndarray | None = None       # each row's time in ns (stage "time" on)
    order: np.ndarray | None = None         # rows in time order, ties in row order (the same)
    seed: int = 0
    refused: np.ndarray | None = None       # rows that refuse their flow's SYN (session open refused)


def ported(rules: dict) -> list:
    """Rules of the protocols whose file names ``ports`` (source first), carried by a number."""
    return [pr for pr in rules.values() if pr.ports and pr.number is not None]


# --- flows --------------------------------------------------------------------------------------

def _ports(r: Rows, rules: dict) -> tuple[np.ndarray, np.ndarray]:
    f = r.f
    a = np.zeros(len(r), dtype=np.int64)
    b = np.zeros(len(r), dtype=np.int64)
    for pr in ported(rules):
        m = r.proto == pr.number
        a = np.where(m, f[pr.column(pr.ports[0])], a)
        b = np.where(m, f[pr.column(pr.ports[1])], b)
    ic = rules["icmp"]
    icmp = r.proto == ic.number
    if icmp.any():      # ICMP flows: the identifier of the types whose rest is id_seq
        id_seq = np.isin(f["icmp_type"], [t for t, d in E.icmp_type_info(ic).items()
                                          if d["rest"] == "id_seq"])
        a = np.where(icmp, np.where(id_seq, f["icmp_roh"] >> 16, 0), a)
        b = np.where(icmp, 0, b)
    return a, b


def find_flows(r: Rows, rules: dict) -> dict:
    """Flow id, canonical (lo, hi) ports and the row's sending port for every row."""
    n = len(r)
    a, b = _ports(r, rules)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    key = (r.proto << 32) | (lo << 16) | hi
    if r.gen_src is not None:
        # Layouts with addresses: the unordered generated address pair is part of the key.
        s8, d8 = r.gen_src.view(">u8"), r.gen_dst.view(">u8")       # (n, 2) halves, compared in order
        src_first = (s8[:, 0] < d8[:, 0]) | ((s8[:, 0] == d8[:, 0]) & (s8[:, 1] <= d8[:, 1]))
        first = np.where(src_first[:, None], r.gen_src, r.gen_dst)
        second = np.where(src_first[:, None], r.gen_dst, r.gen_src)
        both = np.ascontiguousarray(np.concatenate([first, second], axis=1)).view(np.dtype((np.void, 32)))
        _, pair_id = np.unique(both.reshape(-1), return_inverse=True)
        key = key | (pair_id.reshape(-1).astype(np.int64) << 40)
    uniq, inv, counts = np.unique(key, return_inverse=True, return_counts=True)
    inv = inv.reshape(-1)
    # Lone pairs join the nearest frequent pair of the same protocol (port bits, then seq).
    single = counts[inv] == 1
    anchors = np.flatnonzero(counts >= 2)
    merged_into = np.arange(len(uniq))
    if single.any() and len(anchors):
        s_rows = np.flatnonzero(single)
        a_proto = uniq[anchors] >> 32         # protocol and address pair must match
        a_lo, a_hi = (uniq[anchors] >> 16) & 0xFFFF, uniq[anchors] & 0xFFFF
        fwd = (a[s_rows] << 16 | b[s_rows])[:, None]
        d = np.minimum(popcount32(fwd ^ (a_lo << 16 | a_hi)[None, :]),
                       popcount32(fwd ^ (a_hi << 16 | a_lo)[None, :]))
        d = np.where(a_proto[None, :] == (key[s_rows] >> 32)[:, None], d, 99)
        # ties between equally near flows: the one whose first sequence number is nearest
        first_row = group_first(inv, len(uniq))[anchors]
        seq = r.f["tcp_seq"]
        sd = np.abs(((seq[s_rows][:, None] - seq[first_row][None, :] + (1 << 31)) & M32) - (1 << 31))
        score = d * (1 << 33) + sd
        j = np.argmin(score, axis=1)
        ok = d[np.arange(len(s_rows)), j] <= MERGE_BITS
        merged_into[inv[s_rows[ok]]] = anchors[j[ok]]
    flow_key = merged_into[inv]
    uf, flow = np.unique(flow_key, return_inverse=True)
    flow = flow.reshape(-1)
    k = uniq[uf]
    f_lo, f_hi = (k >> 16) & 0xFFFF, k & 0xFFFF
    # The row's sending port: the canonical port its own pair is nearest to.
    d_fwd = popcount32((a << 16 | b) ^ (f_lo[flow] << 16 | f_hi[flow]))
    d_rev = popcount32((a << 16 | b) ^ (f_hi[flow] << 16 | f_lo[flow]))
    sender_is_lo = d_fwd <= d_rev
    return {"flow": flow, "n_flows": len(uf), "lo": f_lo, "hi": f_hi, "sender_is_lo": sender_is_lo,
            "proto": (k >> 32) & 0xFF, "n": n}


def repair_trace(r: Rows, rules: dict, pool: AddressPool, keep_addresses: bool,
                 priors=None, arrival_of=None) -> dict:
    """Apply every trace rule to ``r`` in place; returns counts for the report.

    ``priors`` (a ``priors.ClassPriors``) replaces values the class never shows: IP version per
    flow, server/client ports per flow, payload lengths, free TCP flags, per-direction and
    per-host fields, IP ID behaviour per host. Without it nothing below changes.
    ``arrival_of(flow, direction)``: each row's time in ns, once the flows and their directions
    are settled (returned as ``"arrival"``; the priors draw lengths by it)."""
    f = r.f
    n = len(r)
    fl = find_flows(r, rules)
    flow, G = fl["flow"], fl["n_flows"]
    lo, hi = fl["lo"][flow], fl["hi"][flow]
    tcp_rules = rules["tcp"]
    tcp = r.proto == tcp_rules.number
    icmp = r.proto == rules["icmp"].number
    has_ports = np.isin(r.proto, [pr.number for pr in ported(rules)])
    report = {"flows": int(G)}

    # 1. One IP version per flow (the majority of its rows).
    v6_share = np.bincount(flow, weights=r.v6.astype(float), minlength=G) / np.maximum(
        np.bincount(flow, minlength=G), 1)
    v6_flow = v6_share > 0.5
    if priors is not None:
        v6_flow = priors.versions(v6_flow)
    v6 = v6_flow[flow]
    report["rows_changed_ip_version"] = int((v6 != r.v6).sum())
    to_v6, to_v4 = v6 & ~r.v6, ~v6 & r.v6
    f["ipv6_hl"] = np.where(to_v6, f["ipv4_ttl"], f["ipv6_hl"])
    f["ipv6_tc"] = np.where(to_v6, f["ipv4_tos"], f["ipv6_tc"])
    f["ipv4_ttl"] = np.where(to_v4, np.clip(f["ipv6_hl"], 1, 255), f["ipv4_ttl"])
    f["ipv4_tos"] = np.where(to_v4, f["ipv6_tc"], f["ipv4_tos"])
    r.ip_optlen = np.where(v6, 0, r.ip_optlen)
    r.v6 = v6
    # A row that became IPv6 has a longer IP header: keep the packet within the MTU.
    ip_hl, l4_hl = header_lengths(r, rules)
    mtu = np.where(v6, rules["ipv6"].header.get("max_total_length", 1500),
                   rules["ipv4"].header.get("max_total_length", 1500))
    r.payload_len = np.clip(r.payload_len, 0, mtu - ip_hl - l4_hl)

    # 2. Client side and direction. TCP flows with a SYN open with it: the first row's sender is
    # the client. Otherwise the higher (ephemeral) port is the client's; with the class's priors,
    # whose ports replace the generated ones, the first row's sender is the client or the server
    # as often as in the class's images for a flow first seen as early or as late, unless only
    # one side's port is one of the class's server ports. Real flows open toward their service
    # port (83-100% of the held-back UDP flows, per class); by the higher port half the generated
    # ones did, and half the DNS flows opened with the answer.
    opening = tcp_rules.column(tcp_rules.session["open"]["flag"]) if tcp_rules.session else None
    syn = tcp & (f[opening] == 1) if opening else np.zeros(n, dtype=bool)
    if opening and priors is not None:      # or the option area of the class's SYNs
        syn |= tcp & priors.opening_rows(r)
    has_syn = group_any(flow, syn, G)
    first = group_first(flow, G)
    sender_lo = fl["sender_is_lo"]
    client_is_lo = np.zeros(G, dtype=bool)
    client_is_lo[has_syn] = sender_lo[first[has_syn]]
    serves = None
    if priors is not None:
        opener_lo = sender_lo[first]
        f_lo, f_hi = fl["lo"], fl["hi"]
        serves = priors.opener_serves(r.proto[first], np.where(opener_lo, f_lo, f_hi),
                                      np.where(opener_lo, f_hi, f_lo), first)
    if serves is not None:
        client_is_lo[~has_syn] = (opener_lo != serves)[~has_syn]
    direction = np.where(sender_lo == client_is_lo[flow], 0, 1)
    same = lo == hi
    if (same & tcp).any():      # equal ports: sequence numbers tell the two sides apart
        seq_col = tcp_rules.column(tcp_rules.computed("sequence").name)
        s0 = f[seq_col][first[flow]]
        a0 = f[tcp_rules.column(tcp_rules.computed("acknowledgement").name)][first[flow]]
        near_s = np.abs(((f[seq_col] - s0 + (1 << 31)) & M32) - (1 << 31))
        near_a = np.abs(((f[seq_col] - a0 + (1 << 31)) & M32) - (1 << 31))
        direction = np.where(same & tcp, (near_a < near_s).astype(int), direction)
    if icmp.any():              # requests go client -> server, replies and errors back
        req = np.isin(f["icmp_type"], E.icmp_requests(rules["icmp"]))
        direction = np.where(icmp, np.where(req, 0, 1), direction)
    client_port = np.where(client_is_lo[flow], lo, hi)
    server_port = np.where(client_is_lo[flow], hi, lo)
    if priors is not None:
        s_f, c_f = priors.ports(r.proto[first], v6_flow, server_port[first], client_port[first],
                                claimed=PL.payload_table(rules).claimed())
        server_port = np.where(has_ports, s_f[flow], server_port)
        client_port = np.where(has_ports, c_f[flow], client_port)
    sport = np.where(direction == 0, client_port, server_port)
    dport = np.where(direction == 0, server_port, client_port)
    changed_ports = np.zeros(n, dtype=bool)
    for pr in ported(rules):
        m = r.proto == pr.number
        s_col, d_col = (pr.column(p) for p in pr.ports)
        changed_ports |= m & ((sport != f[s_col]) | (dport != f[d_col]))
        f[s_col] = np.where(m, sport, f[s_col])
        f[d_col] = np.where(m, dport, f[d_col])
    report["rows_changed_ports"] = int(changed_ports.sum())
    fd = flow * 2 + direction                       # (flow, direction) group
    # Times before lengths: they depend on the flows only, and lengths go with the pace
    arrival = arrival_of(flow, direction) if arrival_of is not None else None
    if arrival is not None:
        report["arrival"] = arrival
    if priors is not None:
        priors.payload(r, direction, mtu - ip_hl - l4_hl, service=server_port, flow=flow,
                       arrival=arrival)
    # The payload each row's ports call for (payload templates); a length no content of that
    # port's dissector accepts grows to its template's, before sequence numbers count it.
    r.template, r.payload_len = PL.choose(PL.payload_table(rules), r.proto, sport, dport,
                                          r.payload_len, mtu - ip_hl - l4_hl)
    state = TraceState(r, rules, flow=flow, n_flows=G, direction=direction, fd=fd, pool=pool,
                       keep_addresses=keep_addresses, priors=priors, report=report,
                       client_port=client_port, server_port=server_port)

    # 3. TCP control flags: handshake first, FIN last per direction, RST last in the flow; then
    # the numbers that follow them (compute: sequence, acknowledgement) and, once more, the
    # dependencies (the acknowledgement number needs ACK).
    if tcp.any() and tcp_rules.session is not None:
        refuses = priors is not None and "refused" in tcp_rules.session["open"] and \
            priors.shows_flags("tcp", tcp_rules.session["open"]["refused"])
        state.refused = _tcp_flags(r, tcp_rules, flow, G, direction, fd, syn, first, report, refuses)
        # A refusal is the whole header RFC 9293 (3.10.7.1) gives a closed port's answer: no
        # options. The model's option area stayed on it (BitTorrent: timestamps on 26 of 114
        # refusals, none in the captures)
        attr = f"{tcp_rules.section}_opt"
        if state.refused.any() and hasattr(r, attr):
            getattr(r, attr)[state.refused] = 0
            setattr(r, attr + "len", np.where(state.refused, 0, getattr(r, attr + "len")))
        report["refused"] = state.refused
        if priors is not None:
            priors.flags(r)
        CR.run(rules, "trace.flow", state)
        E.apply_dependencies(tcp_rules, f, tcp, r.payload_len)

    # 4. Fields the rules hold constant per direction (per: direction; TTL, hop limit, DF, TOS,
    # traffic class, flow label): the value the rule's ``hold`` names, clamped to its range.
    changed = np.zeros(n, dtype=bool)
    for proto, mask in (("ipv4", ~v6), ("ipv6", v6)):
        for fr in rules[proto].fields:
            if fr.per != "direction" or not mask.any():
                continue
            col = rules[proto].column(fr.name)
            if fr.hold == "first":
                vals = f[col][mask]
                held = vals[np.maximum(group_first(fd[mask], 2 * G), 0)][fd]
            else:
                held = group_median(fd[mask], f[col][mask], 2 * G)[fd]
            if fr.range is not None:
                held = np.clip(held, *fr.range)
            changed |= mask & (held != f[col])
            f[col] = np.where(mask, held, f[col])
    report["rows_changed_ttl"] = int(changed.sum())

    # 5. Addresses (compute: address): one client and one server endpoint per flow.
    CR.run(rules, "trace.endpoints", state)
    if r.src is None:
        raise NetdiffError("no rule file computes the addresses (compute: address)")

    # 6. Per-host fields (compute: id_per_host: IP ID counts per sending host).
    host = sending_hosts(r)
    nh = int(host.max()) + 1 if n else 0
    state.host = host
    if priors is not None:      # per-direction and per-host fields the class never shows
        priors.values(r, flow, direction, host, service=server_port)
    CR.run(rules, "trace.hosts", state)
    report["hosts"] = nh
    report["direction"] = direction
    report["flow"] = flow
    report["server_port"] = server_port
    return report


def _tcp_flags(r: Rows, tcp_rules, flow, G, direction, fd, opened, first, report,
               refuses: bool = False) -> np.ndarray:
    """Control flags where the rule file's ``session:`` puts them; ``opened``: the rows that
    generated the opening flag; ``refuses``: the class shows refused openings. Returns the rows
    that refuse their flow's SYN (``open: refused``)."""
    f = r.f
    n = len(r)
    tcp = r.proto == tcp_rules.number
    idx = np.arange(n)
    ses = tcp_rules.session
    col = tcp_rules.column
    opening = ses["open"]
    setting = sorted({*opening["client"], *opening["server"], *opening.get("refused", ()), *ses["established"]})
    managed = (*setting, ses["close"], ses["reset"])
    before = {k: f[col(k)].copy() for k in managed}
    has_syn = group_any(flow, opened, G)
    hs = tcp & has_syn[flow]
    # first server row of each flow that opens
    s2c = tcp & (direction == 1)
    first_s2c = np.full(G, n, dtype=np.int64)
    np.minimum.at(first_s2c, flow[s2c], idx[s2c])
    pos_first = first[flow] == idx
    # Before the server's first row the client can only retry its SYN. A flow the server sends
    # no row of was captured on the client's side only (as most of the shared messaging
    # captures' TCP flows are): nothing says the handshake failed, so it opens with its first
    # row and the SYN retries the image gave it straight after, and is established from its
    # first other row on.
    plain = tcp & ~opened & ~pos_first
    first_plain = np.full(G, n, dtype=np.int64)
    np.minimum.at(first_plain, flow[plain], idx[plain])
    opens_until = np.where(first_s2c < n, first_s2c, first_plain)
    client_open = hs & (pos_first | ((direction == 0) & (idx < opens_until[flow])))
    server_open = hs & (idx == first_s2c[flow])
    is_last = group_last(flow, G)[flow] == idx
    reset = col(ses["reset"])
    # A server's first row that generated the reset flag and ends its flow refuses the
    # connection (a closed port; 6% of BitTorrent's flows in the shared captures are a SYN and
    # its RST-ACK, which came out as a SYN-ACK nothing followed).
    reset_gen = f[reset] == 1       # as generated: the refused flags below may name the reset flag
    # In a class that shows refusals, a server's first row that ends its flow refuses it
    # whatever its reset flag: a SYN-ACK is answered, and the model seldom sets the flag (every
    # two-packet TCP flow of BitTorrent's windows is a SYN and its RST-ACK; generated: SYN and
    # SYN-ACK in 114 of 114)
    refused = server_open & is_last & (reset_gen | refuses) if "refused" in opening \
        else np.zeros(n, dtype=bool)
    server_open &= ~refused
    other = tcp & ~client_open & ~server_open & ~refused
    for k in setting:
        on = np.where(client_open, k in opening["client"],
                      np.where(server_open, k in opening["server"],
                               np.where(refused, k in opening.get("refused", ()), k in ses["established"])))
        f[col(k)] = np.where(tcp, on.astype(np.int64), f[col(k)])
    # The closing flag: once per direction that generated one, on its last generated one or,
    # when data follows that, on the direction's last data segment: no data after it.
    close = col(ses["close"])
    fin_gen = other & (f[close] == 1)
    data = other & (r.payload_len > 0)
    last_fin = np.full(2 * G, -1, dtype=np.int64)
    np.maximum.at(last_fin, fd[fin_gen], idx[fin_gen])
    last_data = np.full(2 * G, -1, dtype=np.int64)
    np.maximum.at(last_data, fd[data], idx[data])
    fin_at = np.where(last_fin >= 0, np.maximum(last_fin, last_data), -1)
    f[close] = np.where(tcp, (other & (fin_at[fd] == idx)).astype(np.int64), f[close])
    # The reset flag: only as the flow's last row, when the flow generated one.
    rst_gen = other & reset_gen
    want_rst = group_any(flow, rst_gen, G)
    rst = (other & is_last & want_rst[flow]) | (refused & (ses["reset"] in opening.get("refused", ())))
    f[reset] = np.where(tcp, rst.astype(np.int64), f[reset])
    f[close] = np.where(rst, 0, f[close])
    # The flags the trace leaves (PSH) move to a combination of the file's flag table with the
    # ones it set (no PSH with SYN or RST).
    E.settle_flags(tcp_rules, f, tcp, fixed=managed)
    quiet = np.zeros(n, dtype=bool)
    for k in ses["no_payload"]:
        quiet |= f[col(k)] == 1
    r.payload_len = np.where(tcp & quiet, 0, r.payload_len)
    # The rule file's dependencies: PSH and URG only with data, URG with ACK, the urgent
    # pointer zero without URG and inside the segment with it.
    E.apply_dependencies(tcp_rules, f, tcp, r.payload_len)
    for k in ses["answer_clears"]:
        f[col(k)] = np.where(server_open | refused, 0, f[col(k)])
    changed = np.zeros(n, dtype=bool)
    for k, v in before.items():
        changed |= tcp & (f[col(k)] != v)
    report["tcp_handshakes"] = int(has_syn.sum())
    report["rows_changed_tcp_flags"] = int(changed.sum())
    return refused


def _sequence_space(state: TraceState, pr):
    """(rows of protocol ``pr``, its SYN rows, first row of each (flow, direction), sequence
    space each row uses: its payload, its FIN and a direction's first SYN count one each; later
    SYNs are retransmissions)."""
    f, r = state.r.f, state.r
    rows_p = r.proto == pr.number
    idx = np.arange(len(r))
    ses = pr.session
    syn = rows_p & (f[pr.column(ses["open"]["flag"])] == 1) if ses else np.zeros(len(r), dtype=bool)
    first_fd = group_first(state.fd, 2 * state.n_flows)
    first_syn = syn & (first_fd[state.fd] == idx)
    fin = f[pr.column(ses["close"])] if ses else 0
    seglen = np.where(rows_p, r.payload_len + first_syn + fin, 0)
    return rows_p, syn, first_fd, seglen


def _random_per_direction(state: TraceState, bits: int, directions: int) -> np.ndarray:
    """One uniform ``bits``-bit number per flow direction, from the priors' seeded generator,
    spread over the rows."""
    return state.priors.rng.integers(0, 1 << bits, size=directions)[np.maximum(state.fd, 0)]


def sequence_numbers(state: TraceState, targets) -> None:
    """``compute: sequence``: the direction's first generated number (with priors: a random
    one) + what it sent before."""
    f = state.r.f
    for pr, fr in targets:
        col = pr.column(fr.name)
        rows_p, syn, first_fd, seglen = _sequence_space(state, pr)
        isn = f[col][first_fd[np.maximum(state.fd, 0)]]
        if state.priors is not None:
            # Stacks pick initial sequence numbers at random (RFC 6528); the model's ISN bits
            # reproduce the training flows' prefixes, which the judge reads (tcp_seq importance
            # 0.17 -> 0.04 with a uniform draw per direction, docs/results.md stop 26).
            isn = _random_per_direction(state, fr.bits, len(first_fd))
        sent_before = group_excl_cumsum(state.fd, seglen)
        seq = np.where(syn, isn, isn + sent_before) & ((1 << fr.bits) - 1)
        if state.refused is not None:
            # a refusal answers a segment without ACK: sequence number zero (tcp.yaml's session)
            seq = np.where(rows_p & state.refused, 0, seq)
        f[col] = np.where(rows_p, seq, f[col])


def acknowledgement_numbers(state: TraceState, targets) -> None:
    """``compute: acknowledgement``: the other side's first sequence number + what it sent
    before this row; where the other side sends nothing, the generated value (with priors: one
    random value per direction). Runs after
    ``sequence_numbers``, whose value at a direction's first row is that direction's first
    number. Zero without ACK is the file's dependency, applied after this stage."""
    f, flow, direction = state.r.f, state.flow, state.direction
    for pr, fr in targets:
        col = pr.column(fr.name)
        seq = pr.computed("sequence")
        if seq is None:
            raise NetdiffError(f"{pr.path}: compute: acknowledgement needs a field with "
                               "compute: sequence")
        rows_p, _, first_fd, seglen = _sequence_space(state, pr)
        other_first = first_fd[flow * 2 + (1 - direction)]
        # bytes the other side sent before this row: its running total in flow order
        per_dir = [np.where(direction == d, seglen, 0) for d in (0, 1)]
        cum_other = np.where(direction == 0, group_excl_cumsum(flow, per_dir[1]),
                             group_excl_cumsum(flow, per_dir[0]))
        other_isn = np.where(other_first >= 0, f[pr.column(seq.name)][np.maximum(other_first, 0)], 0)
        silent = f[col]
        if state.priors is not None:
            # a peer that sends nothing in the capture leaves the number where it was: one
            # random value per direction (its ISN is as random as any)
            silent = _random_per_direction(state, fr.bits, len(first_fd))
        ack = np.where(other_first >= 0, (other_isn + cum_other) & ((1 << fr.bits) - 1), silent)
        f[col] = np.where(rows_p, ack, f[col])


def assign_addresses(state: TraceState, targets) -> None:
    """``compute: address``: both endpoints of every row at once (the fields that name it are
    the trace's, not the image's)."""
    _addresses(state.r, state.flow, state.n_flows, state.direction, state.client_port,
               state.server_port, state.pool, state.keep_addresses, state.report)


def id_per_host(state: TraceState, targets) -> None:
    """``compute: id_per_host``: from the sending host's first generated value, +1 per packet
    it sends; with class priors, the class's behaviour (zero, random) where the field's
    ``prior`` is of kind id."""
    f, host = state.r.f, state.host
    n = len(host)
    nh = int(host.max()) + 1 if n else 0
    for pr, fr in targets:
        col = pr.column(fr.name)
        base = f[col][group_first(host, nh)][host]
        f[col] = (base + group_excl_cumsum(host, np.ones(n, dtype=np.int64))) & ((1 << fr.bits) - 1)
        if state.priors is not None and fr.prior is not None and fr.prior.get("kind") == "id":
            f[col] = state.priors.ip_ids(host, f[col])


def sending_hosts(r: Rows) -> np.ndarray:
    """(n,) dense id of each row's source address."""
    _, host = np.unique(r.src.view(np.dtype((np.void, 16))).reshape(-1), return_inverse=True)
    return host.reshape(-1)


def ids_in_time_order(r: Rows, rules: dict, order: np.ndarray) -> None:
    """Deal every host's per-host counted fields (``compute: id_per_host``) again down ``order``
    (the packets' time order, which short flows' own clocks make differ from the rows): the
    values a host sends stay the same, its k-th packet in time gets the k-th in rows."""
    n = len(r)
    host = sending_hosts(r)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    by_row = np.lexsort((np.arange(n), host))
    by_time = np.lexsort((rank, host))
    for pr, fr in CR.targets(rules, "id_per_host"):
        col = pr.column(fr.name)
        values = r.f[col].copy()
        r.f[col][by_time] = values[by_row]


def walk_option_areas(state: TraceState, targets) -> None:
    """``compute: options``: each option area walked with its protocol's grammar, with the
    flags ``only_with`` names as the trace settled them; rows changed in ``state.changed``."""
    r, f = state.r, state.r.f
    for pr, fr in targets:
        attr = "ip" if pr.layer == 3 else pr.section      # Rows.ip_opt, Rows.tcp_opt
        flags = {nm: f[pr.column(nm)] == 1 for nm in pr.options.flag_names()}
        vals, changed = E.walk_options(pr.options, getattr(r, f"{attr}_opt"),
                                       getattr(r, f"{attr}_optlen"), flags)
        setattr(r, f"{attr}_opt", vals)
        state.changed[pr.protocol] = changed


CLOCK_HZ = 1000      # RFC 7323 5.4 asks for 1 ms to 1 s a tick; Linux and the shared captures: 1 ms


def option_clocks(state: TraceState, targets) -> None:
    """``compute: timestamps`` on an option kind of 10 bytes (RFC 7323): its first four value
    bytes a clock per flow direction, ``CLOCK_HZ`` ticks a second of the rows' arrival times from
    the direction's first generated value (with priors: a random one, as stacks that offset the
    clock per connection do); its last four the other direction's latest clock value sent before
    it, zero where the kind's ``echo_with`` flag is clear or the other side has sent none. Rows
    are taken in time order (ties in row order); a row that holds the kind twice gets both."""
    from netdiff.packet_repair.priors import option_kinds

    r, n = state.r, len(state.r)
    rank = np.empty(n, dtype=np.int64)
    rank[state.order] = np.arange(n)
    rng = np.random.default_rng([int(state.seed) & 0xFFFFFFFF, 0x75A1])
    for pr, kind in targets:
        attr = "ip" if pr.layer == 3 else pr.section
        opt, optlen = getattr(r, f"{attr}_opt"), getattr(r, f"{attr}_optlen")
        size = kind.lengths[0]          # the load checked it is the computation's one length
        kinds, starts = option_kinds(opt, optlen, pr.options)
        at_r, at_c = np.nonzero(kinds == kind.kind)
        at_o = starts[at_r, at_c].astype(np.int64)
        ok = (opt[at_r, np.minimum(at_o + 1, opt.shape[1] - 1)] == size) & (at_o + size <= optlen[at_r])
        at_r, at_o = at_r[ok], at_o[ok]
        if not len(at_r):
            continue
        first_o = np.full(n, opt.shape[1], dtype=np.int64)
        np.minimum.at(first_o, at_r, at_o)
        rows = np.unique(at_r)
        rows = rows[np.argsort(rank[rows], kind="stable")]          # time order
        key = state.flow[rows].astype(np.int64) * 2 + state.direction[rows]
        t = state.arrival[rows].astype(np.int64)
        uk, first = np.unique(key, return_index=True)
        k_i = np.searchsorted(uk, key)
        if state.priors is None:
            o = first_o[rows[first]]
            start = np.zeros(len(uk), dtype=np.int64)
            for b in range(4):
                start = (start << 8) | opt[rows[first], o + 2 + b].astype(np.int64)
        else:
            start = rng.integers(0, 1 << 32, size=2 * state.n_flows, dtype=np.int64)[uk]
        val = (start[k_i] + (t - t[first][k_i]) * CLOCK_HZ // 10 ** 9) & 0xFFFFFFFF
        # the peer's latest value: rows by flow, then time; per direction the last row so far
        by = np.lexsort((np.arange(len(rows)), state.flow[rows]))
        fl, side = state.flow[rows][by], state.direction[rows][by]
        pos = np.arange(len(rows))
        head = np.r_[0, np.flatnonzero(np.diff(fl)) + 1]
        flow_head = np.repeat(head, np.diff(np.r_[head, len(rows)]))
        last = [np.maximum.accumulate(np.where(side == d, pos, -1)) for d in (0, 1)]
        peer = np.where(side == 0, last[1], last[0])
        echo = np.zeros(len(rows), dtype=np.int64)
        echo[by] = np.where(peer >= flow_head, val[by][np.maximum(peer, 0)], 0)
        if kind.echo_with is not None:
            echo = np.where(r.f[pr.column(kind.echo_with)][rows] == 1, echo, 0)
        tsval, tsecr = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
        tsval[rows], tsecr[rows] = val, echo
        for b in range(4):
            shift = 8 * (3 - b)
            opt[at_r, at_o + 2 + b] = (tsval[at_r] >> shift) & 0xFF
            opt[at_r, at_o + 6 + b] = (tsecr[at_r] >> shift) & 0xFF


def _addresses(r: Rows, flow, G, direction, client_port, server_port, pool: AddressPool,
               keep: bool, report):
    """Client: one host per IP version (the capture's own machine); servers: one per server
    port (and protocol), so flows to the same service share a server. Generated addresses (when
    the layout keeps them and no pool is forced) are kept where they are legal unicast."""
    n = len(r)
    first = group_first(flow, G)
    v6_flow = r.v6[first]
    proto_flow = r.proto[first]
    sport = server_port[first]
    client = np.zeros((G, 16), np.uint8)
    server = np.zeros((G, 16), np.uint8)
    for ver, m in ((4, ~v6_flow), (6, v6_flow)):
        if not m.any():
            continue
        client[m] = pool.draw(ver, 1)[0]
        skey = (proto_flow[m] << 16) | sport[m]
        uk, inv = np.unique(skey, return_inverse=True)
        server[m] = pool.draw(ver, len(uk))[inv.reshape(-1)]
    if keep and r.gen_src is not None:
        # per flow: the generated addresses of its first row in each direction, where usable
        idx = np.arange(n)
        for d, (own, other) in ((0, (r.gen_src, r.gen_dst)), (1, (r.gen_dst, r.gen_src))):
            m = direction == d
            first_d = np.full(G, n, dtype=np.int64)
            np.minimum.at(first_d, flow[m], idx[m])
            has = first_d < n
            rows_d = first_d[has]
            for tgt, gen in ((client, own), (server, other)):
                cand = gen[rows_d].copy()
                cand[~r.v6[rows_d], 4:] = 0
                ok = np.where(r.v6[rows_d], usable_many(cand, 6), usable_many(cand, 4))
                if d == 1:      # the client->server row, where there is one, decided already
                    ok &= ~got[np.flatnonzero(has)]
                sel = np.flatnonzero(has)[ok]
                tgt[sel] = cand[ok]
            if d == 0:
                got = has.copy()
    c, s = client[flow], server[flow]
    d0 = (direction == 0)[:, None]
    r.src = np.where(d0, c, s)
    r.dst = np.where(d0, s, c)
    report["servers"] = int(len(np.unique(server.view(np.dtype((np.void, 16))))))


def macs(r: Rows) -> tuple[np.ndarray, np.ndarray]:
    """(source MACs, destination MACs) derived from the addresses."""
    n = len(r)
    last4_src = np.where(r.v6[:, None], r.src[:, 12:16], r.src[:, :4])
    last4_dst = np.where(r.v6[:, None], r.dst[:, 12:16], r.dst[:, :4])
    pre = np.tile(np.array([2, 0], np.uint8), (n, 1))
    return np.concatenate([pre, last4_src], 1), np.concatenate([pre, last4_dst], 1)


__all__ = ["repair_trace", "find_flows", "macs", "mac_for", "TraceState", "ported",
           "sequence_numbers", "acknowledgement_numbers", "assign_addresses", "id_per_host",
           "walk_option_areas"]
