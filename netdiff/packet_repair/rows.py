"""Row repair: one generated image row -> one legal packet's header values.

1. Decide each row's stack (IPv4/IPv6 x TCP/UDP/ICMP) from which sections the model filled:
   the stack whose sections are most filled while the others are most blank wins; rows with
   nothing filled are image padding.
2. Move every field to its nearest legal value with the rules engine (values, ranges, flag
   combinations, ICMP type/code pairs), take option lengths from the filled structure.
3. ``build`` (after trace repair) writes the bytes, lengths and every checksum at once.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from netdiff.bits.layout import Layout
from netdiff.io import pcap as P
from netdiff.rules import checksum as C
from netdiff.rules import engine as E
from netdiff.rules import fields as F

# Candidate stacks: (l3 section, l4 section). nPrint has no ICMPv6 section, so no IPv6 + ICMP.
STACKS = (("ipv4", "tcp"), ("ipv4", "udp"), ("ipv4", "icmp"), ("ipv6", "tcp"), ("ipv6", "udp"))
PACKET_SHARE = 0.5      # a row is a packet when its stack's sections are at least this filled
MIN_PACKET_SHARE = 0.2  # ... or, in an image with no such row, nearly as filled as its best row
ETH = 14


@dataclass
class Rows:
    """Header values of the rows that are packets (arrays of length n, in image order)."""

    index: np.ndarray                  # image row of each packet
    v6: np.ndarray                     # bool
    proto: np.ndarray                  # 6 / 17 / 1
    f: dict = field(default_factory=dict)       # field name (nPrint style) -> int64 values
    ip_opt: np.ndarray = None          # (n, 40) uint8
    ip_optlen: np.ndarray = None
    tcp_opt: np.ndarray = None         # (n, 40) uint8
    tcp_optlen: np.ndarray = None
    payload_len: np.ndarray = None
    payload: np.ndarray | None = None  # (n, payload_bytes) uint8 when the layout keeps payload
    src: np.ndarray = None             # (n, 16) uint8, IPv4 in the first 4 bytes
    dst: np.ndarray = None
    gen_src: np.ndarray | None = None  # generated addresses when the layout keeps them
    gen_dst: np.ndarray | None = None
    problems: dict = field(default_factory=dict)   # rule -> bool mask over packets (strict mode)

    def __len__(self):
        return len(self.index)


def _core_cols(layout: Layout, section: str) -> np.ndarray:
    """Columns of a section's fixed header fields (no options) that the layout keeps."""
    cols = []
    for name, sl in layout.fields.items():
        if name.startswith(section + "_") and not name.endswith("_opt"):
            cols.extend(range(sl.start, sl.stop))
    return np.asarray(cols, dtype=np.int64)


def section_shares(bits: np.ndarray, layout: Layout) -> dict[str, np.ndarray]:
    out = {}
    for sec in ("ipv4", "ipv6", "tcp", "udp", "icmp"):
        cols = _core_cols(layout, sec)
        if not len(cols):
            out[sec] = None
        elif cols[-1] - cols[0] + 1 == len(cols):        # contiguous: a slice, no copy
            out[sec] = np.count_nonzero(bits[:, cols[0]:cols[-1] + 1] != -1, axis=1) / len(cols)
        else:
            out[sec] = np.count_nonzero(bits[:, cols] != -1, axis=1) / len(cols)
    return out


def decide_stacks(bits: np.ndarray, layout: Layout, stack_prior: np.ndarray | None = None,
                  rules: dict | None = None):
    """(is_packet, stack index into STACKS, shares, contradiction mask) for every row.

    ``stack_prior`` (per STACKS entry, from class priors: -inf for a stack the class never
    shows, else a small bonus that breaks near-ties towards the class's usual stack) is added to
    the scores of rows that are packets; whether a row is a packet is decided without it.
    With ``rules``, a stack whose transport file does not bind it to its IP version is no
    candidate."""
    shares = section_shares(bits, layout)
    n = len(bits)
    scores = np.full((n, len(STACKS)), -np.inf)
    filled = np.zeros((n, len(STACKS)))
    for k, (l3, l4) in enumerate(STACKS):
        if shares[l3] is None or shares[l4] is None or \
                (rules is not None and E.bound_number(rules, l3, l4) is None):
            continue
        s = np.zeros(n)
        for sec, sh in shares.items():
            if sh is None:
                continue
            s += sh if sec in (l3, l4) else 1.0 - sh
        scores[:, k] = s
        filled[:, k] = (shares[l3] + shares[l4]) / 2
    best = np.argmax(scores, axis=1)
    rows = np.arange(n)
    share = filled[rows, best]
    if stack_prior is not None and np.isfinite(scores + stack_prior[None, :]).any():
        best = np.argmax(scores + stack_prior[None, :], axis=1)
    # Half filled makes a packet (blank padding stays blank even with 30% of pixels flipped).
    # An image whose rows are all less filled (a model that under-paints) keeps the rows
    # within 0.1 of its best-filled one, down to 20%.
    threshold = float(np.clip(share.max(initial=0.0) - 0.1, MIN_PACKET_SHARE, PACKET_SHARE))
    is_packet = share >= threshold
    # Two protocols in one row: another L3 or L4 section is also more than half filled.
    l3_filled = sum((shares[s] > 0.5).astype(int) for s in ("ipv4", "ipv6") if shares[s] is not None)
    l4_filled = sum((shares[s] > 0.5).astype(int) for s in ("tcp", "udp", "icmp") if shares[s] is not None)
    contradiction = (l3_filled > 1) | (l4_filled > 1)
    partial = np.zeros(n, dtype=bool)
    for k, (l3, l4) in enumerate(STACKS):
        m = best == k
        if m.any():
            partial[m] = (shares[l3][m] < 1) | (shares[l4][m] < 1)
    return is_packet, best, shares, contradiction, partial


def _bits(bits, layout, name):
    sl = layout.fields.get(name)
    return None if sl is None else bits[:, sl]


def read_rows(bits: np.ndarray, layout: Layout, rules: dict,
              stack_prior: np.ndarray | None = None) -> Rows:
    """Decide stacks and move every row's fields to their nearest legal values
    (``stack_prior``: see ``decide_stacks``)."""
    is_packet, best, _, contradiction, partial = decide_stacks(bits, layout, stack_prior, rules)
    idx = np.flatnonzero(is_packet)
    b = bits[idx]
    stack = best[idx]
    v6 = np.isin(stack, (3, 4))
    l4name = np.array([STACKS[k][1] for k in range(len(STACKS))])[stack]
    n = len(idx)
    r = Rows(index=idx, v6=v6, proto=np.zeros(n, dtype=np.int64))
    r.problems["two protocols in one row"] = contradiction[idx]
    r.problems["header sections partly blank"] = partial[idx]
    for name in ("tcp", "udp", "icmp"):
        r.proto[l4name == name] = rules[name].number

    # Generic fields: nearest legal value, or the generated value where every value is legal.
    packed = np.packbits(b == 1, axis=1)
    fields = layout.fields
    l4_masks = [(name, r.proto == rules[name].number) for name in ("tcp", "udp", "icmp")]
    for proto, mask in (("ipv4", ~v6), ("ipv6", v6), *l4_masks):
        pr = rules[proto]
        for fr in pr.fields:
            col = pr.column(fr.name)
            if fr.bits > 63 or fr.compute in ("address", "options", "checksum"):
                continue
            sl = fields.get(col)
            if sl is None:
                r.f[col] = np.zeros(n, dtype=np.int64) if fr.values is None else \
                    np.full(n, fr.values[0], dtype=np.int64)
                continue
            raw = F.packed_ints(packed, sl.start, fr.bits)
            r.f[col + ":gen"] = raw
            if fr.compute is None and (fr.values is not None or fr.range is not None):
                if fr.values is not None and len(fr.values) == 1:
                    v = np.full(n, fr.values[0], dtype=np.int64)
                elif fr.values is None:
                    v = np.clip(raw, *fr.range)
                else:
                    v = fr.snap(b[:, sl])
                bad = mask & (v != raw)
                if bad.any() and fr.check:
                    r.problems[f"{col} not a legal value"] = bad
                r.f[col] = v
            else:
                r.f[col] = raw

    # Flags: nearest legal combination.
    tcp = rules["tcp"]
    names, _ = tcp.flag_table()
    fb = [_bits(b, layout, tcp.column(nm)) for nm in names]
    if all(x is not None for x in fb):
        flag_bits = np.concatenate(fb, axis=1)
        snapped = E.snap_flags(tcp, flag_bits)
        r.problems["tcp flags not a legal combination"] = (r.proto == tcp.number) & \
            np.any(snapped != (flag_bits == 1), axis=1)
        for j, nm in enumerate(names):
            r.f[tcp.column(nm)] = snapped[:, j].astype(np.int64)

    # ICMP: nearest legal (type, code) pair.
    icmp = rules["icmp"]
    tb, cb = _bits(b, layout, "icmp_type"), _bits(b, layout, "icmp_code")
    if tb is not None and cb is not None:
        t, c = E.snap_icmp(icmp, np.concatenate([tb, cb], axis=1))
        r.problems["icmp type/code not a legal pair"] = (r.proto == icmp.number) & \
            ((t != r.f["icmp_type:gen"]) | (c != r.f["icmp_code:gen"]))
        r.f["icmp_type"], r.f["icmp_code"] = t, c

    # Option areas: length from the filled structure; content walked after trace repair (the
    # legal kinds depend on flags the trace decides).
    for proto, attr in (("ipv4", "ip"), ("tcp", "tcp")):
        pr = rules[proto]
        sl = fields.get(pr.column(pr.header["options_field"]))
        if sl is None:
            vals, optlen = np.zeros((n, 40), np.uint8), np.zeros(n, np.int64)
        else:
            vals, share = F.packed_bytes(b, packed, sl)
            optlen = E.options_length_from_coverage(share, pr.options)
        mask = ~v6 if proto == "ipv4" else r.proto == pr.number
        optlen = np.where(mask, optlen, 0)
        hl_field = pr.column(pr.header["length_field"])
        gen_hl = r.f.get(hl_field + ":gen")
        if gen_hl is not None:
            r.problems[f"{hl_field} disagrees with the options"] = mask & \
                (gen_hl * pr.header["length_unit"] != pr.header["fixed_bytes"] + optlen)
        setattr(r, attr + "_opt", vals)
        setattr(r, attr + "_optlen", optlen)

    # Payload length from the generated IP length (the model's length field), bounded by the MTU.
    l4_hl = np.where(r.proto == tcp.number, 20 + r.tcp_optlen, 8)
    ip_hl = np.where(v6, 40, 20 + r.ip_optlen)
    gen_len = np.where(v6, r.f.get("ipv6_len:gen", r.f["ipv6_len"]) + 40,
                       r.f.get("ipv4_tl:gen", r.f["ipv4_tl"]))
    mtu = rules["ipv4"].header.get("max_total_length", 1500)
    payload = np.clip(gen_len - ip_hl - l4_hl, 0, mtu - ip_hl - l4_hl)
    r.problems["IP length does not cover its headers"] = gen_len < ip_hl + l4_hl
    r.problems["IP length above the MTU"] = gen_len > mtu
    udp_gen = r.f.get("udp_len:gen")
    if udp_gen is not None:
        r.problems["UDP length disagrees with the IP length"] = (r.proto == rules["udp"].number) & \
            (udp_gen != gen_len - ip_hl)
    proto_gen = np.where(v6, r.f.get("ipv6_nh:gen", r.proto), r.f.get("ipv4_proto:gen", r.proto))
    r.problems["IP protocol number disagrees with the transport section"] = proto_gen != r.proto
    r.payload_len = payload
    if layout.payload_bytes and "payload_bit" in layout.fields:
        r.payload, _ = F.bytes_of(b[:, layout.fields["payload_bit"]])
    # Addresses the layout keeps (nprint layout) are offered to address assignment.
    for attr, names in (("gen_src", ("ipv4_src", "ipv6_src")), ("gen_dst", ("ipv4_dst", "ipv6_dst"))):
        g4, g6 = _bits(b, layout, names[0]), _bits(b, layout, names[1])
        if g4 is not None and g6 is not None:
            a = np.zeros((n, 16), np.uint8)
            a[~v6, :4] = F.bytes_of(g4[~v6])[0]
            a[v6] = F.bytes_of(g6[v6])[0]
            setattr(r, attr, a)
    return r


# --- building packets ---------------------------------------------------------------------------

def _put(mat, rows, col, value, nbytes):
    v = np.asarray(value, dtype=np.int64)
    for k in range(nbytes):
        mat[rows, col + k] = (v >> (8 * (nbytes - 1 - k))) & 0xFF


def build(r: Rows, rules: dict, ts_sec, ts_nsec, body: np.ndarray, body_len: np.ndarray,
          macs: tuple[np.ndarray, np.ndarray]) -> tuple[P.PacketBatch, np.ndarray]:
    """Ethernet frames of every row with lengths and checksums computed; returns the batch and
    the (n, width) header matrix (for tests and reports).

    ``body`` (n, B) holds the bytes after the transport header that are not zero (payload bits,
    ICMP bodies); ``body_len`` is each row's total payload length."""
    n = len(r)
    v6 = r.v6
    ip_hl = np.where(v6, 40, 20 + r.ip_optlen)
    l4_hl = np.where(r.proto == 6, 20 + r.tcp_optlen, 8)
    ip_total = ip_hl + l4_hl + body_len
    bw = body.shape[1]
    width = ETH + 60 + 60 + bw
    width += width % 2
    M = np.zeros((n, width), dtype=np.uint8)
    rows = np.arange(n)
    f = r.f
    # Ethernet
    M[:, 0:6] = macs[1]
    M[:, 6:12] = macs[0]
    ethertype = np.where(v6, rules["ipv6"].bind["ethertype"], rules["ipv4"].bind["ethertype"])
    _put(M, rows, 12, ethertype, 2)
    # IPv4
    a = rows[~v6]
    if len(a):
        M[a, ETH] = 0x40 | (ip_hl[a] // 4)
        _put(M, a, ETH + 1, f["ipv4_tos"][a], 1)
        _put(M, a, ETH + 2, ip_total[a], 2)
        _put(M, a, ETH + 4, f["ipv4_id"][a], 2)
        _put(M, a, ETH + 6, (f["ipv4_dfbit"][a] << 14), 2)
        _put(M, a, ETH + 8, f["ipv4_ttl"][a], 1)
        _put(M, a, ETH + 9, r.proto[a], 1)
        M[a, ETH + 12:ETH + 16] = r.src[a, :4]
        M[a, ETH + 16:ETH + 20] = r.dst[a, :4]
        M[a, ETH + 20:ETH + 60] = r.ip_opt[a]
        ip4 = rules["ipv4"]
        ck = C.stored_value(ip4, C.covered_sums(M[a], ip4, np.full(len(a), ETH), ip_hl[a], ip_total[a]))
        _put(M, a, ETH + C.field_byte(ip4), ck, 2)
    # IPv6
    s6 = rows[v6]
    if len(s6):
        word = (6 << 28) | (f["ipv6_tc"][s6] << 20) | f["ipv6_fl"][s6]
        _put(M, s6, ETH, word, 4)
        _put(M, s6, ETH + 4, ip_total[s6] - 40, 2)
        _put(M, s6, ETH + 6, r.proto[s6], 1)
        _put(M, s6, ETH + 7, f["ipv6_hl"][s6], 1)
        M[s6, ETH + 8:ETH + 24] = r.src[s6]
        M[s6, ETH + 24:ETH + 40] = r.dst[s6]
    # Transport headers at ETH + ip_hl; built in their own block, then placed.
    T = np.zeros((n, 60 + bw), dtype=np.uint8)
    t = rows[r.proto == 6]
    if len(t):
        _put(T, t, 0, f["tcp_sprt"][t], 2)
        _put(T, t, 2, f["tcp_dprt"][t], 2)
        _put(T, t, 4, f["tcp_seq"][t], 4)
        _put(T, t, 8, f["tcp_ackn"][t], 4)
        flags = (f["tcp_cwr"][t] << 7) | (f["tcp_ece"][t] << 6) | (f["tcp_urg"][t] << 5) | \
            (f["tcp_ackf"][t] << 4) | (f["tcp_psh"][t] << 3) | (f["tcp_rst"][t] << 2) | \
            (f["tcp_syn"][t] << 1) | f["tcp_fin"][t]
        _put(T, t, 12, ((l4_hl[t] // 4) << 12) | flags, 2)
        _put(T, t, 14, f["tcp_wsize"][t], 2)
        _put(T, t, 18, f["tcp_urp"][t], 2)
        T[t, 20:60] = r.tcp_opt[t]
    u = rows[r.proto == 17]
    if len(u):
        _put(T, u, 0, f["udp_sport"][u], 2)
        _put(T, u, 2, f["udp_dport"][u], 2)
        _put(T, u, 4, 8 + body_len[u], 2)
    i = rows[r.proto == 1]
    if len(i):
        _put(T, i, 0, f["icmp_type"][i], 1)
        _put(T, i, 1, f["icmp_code"][i], 1)
        _put(T, i, 4, f["icmp_roh"][i], 4)
    # Body right after each transport header.
    if bw:
        j = np.arange(bw)
        T[rows[:, None], l4_hl[:, None] + j[None, :]] = np.where(j[None, :] < body_len[:, None], body, 0)
    tw = T.shape[1]
    M[rows[:, None], ETH + ip_hl[:, None] + np.arange(tw)[None, :]] = T
    # Transport checksums, each as its rule file's checksum block says (coverage, pseudo-header).
    l4_off = ETH + ip_hl
    seg = l4_hl + body_len
    src = np.where(v6[:, None], r.src, np.pad(r.src[:, :4], ((0, 0), (0, 12))))
    dst = np.where(v6[:, None], r.dst, np.pad(r.dst[:, :4], ((0, 0), (0, 12))))
    for pr in (rules[p] for p in E.layer_protocols(rules, 4).values()):
        m = (r.proto == pr.number) & (pr.checksum is not None)
        if m.any():
            total = C.covered_sums(M[m], pr, l4_off[m], l4_hl[m], seg[m], src[m], dst[m])
            _put(M, rows[m], l4_off[m] + C.field_byte(pr), C.stored_value(pr, total), 2)
    # Flatten: each frame is its header bytes then zeros up to its length.
    frame_len = ETH + ip_total
    offset = np.zeros(n, dtype=np.int64)
    if n:
        offset[1:] = np.cumsum(frame_len)[:-1]
    data = np.zeros(int(frame_len.sum()), dtype=np.uint8)
    col = np.arange(width)
    inside = col[None, :] < frame_len[:, None]
    data[(offset[:, None] + col[None, :])[inside]] = M[inside]
    batch = P.PacketBatch(data, offset, frame_len.astype(np.int64), frame_len.astype(np.int64),
                          np.asarray(ts_sec, np.int64), np.asarray(ts_nsec, np.int64),
                          np.full(n, P.LINKTYPE_ETHERNET, dtype=np.int32),
                          np.arange(n, dtype=np.int64))
    return batch, M
