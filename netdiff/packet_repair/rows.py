"""Row repair: one generated image row -> one legal packet's header values.

1. Decide each row's stack (IPv4/IPv6 x TCP/UDP/ICMP) from which sections the model filled:
   the stack whose sections are most filled while the others are most blank wins; rows with
   nothing filled are image padding.
2. Move every field to its nearest legal value with the rules engine (values, ranges, flag
   combinations, ICMP type/code pairs), take option lengths from the filled structure.
3. ``build`` (after trace repair) serialises them: field values packed by the field table of
   bits/layout.py, lengths, then checksums, placed by the same code as the exact path.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from netdiff.bits.codec import overlay_bytes, pack_fields, put_field
from netdiff.bits.fields import FIELDS
from netdiff.bits.layout import SECTION_BYTES, Layout
from netdiff.io import pcap as P
from netdiff.rules import checksum as C
from netdiff.rules import engine as E
from netdiff.rules import fields as F

# Candidate stacks: (l3 section, l4 section). nPrint has no ICMPv6 section, so no IPv6 + ICMP.
STACKS = (("ipv4", "tcp"), ("ipv4", "udp"), ("ipv4", "icmp"), ("ipv6", "tcp"), ("ipv6", "udp"))
PACKET_SHARE = 0.5      # a row is a packet when its stack's sections are at least this filled
MIN_PACKET_SHARE = 0.2  # ... or, in an image with no such row, nearly as filled as its best row
# Rows attribute prefix of the option areas (``ip_opt``, ``tcp_optlen``) per section.
OPTION_ATTR = {"ipv4": "ip", "tcp": "tcp"}
PAYLOAD_OVERLAY = 64    # payload bytes build places with the header overlay (the rest directly)


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
    template: np.ndarray | None = None     # payload template per row (packet_repair/payloads.py)
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
    for proto, attr in OPTION_ATTR.items():
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
    ip_hl, l4_hl = header_lengths(r, rules)
    gen_len = np.where(v6, r.f.get("ipv6_len:gen", r.f["ipv6_len"]) + rules["ipv6"].header["fixed_bytes"],
                       r.f.get("ipv4_tl:gen", r.f["ipv4_tl"]))
    mtu = rules["ipv4"].header.get("max_total_length", 1500)
    payload = np.clip(gen_len - ip_hl - l4_hl, 0, mtu - ip_hl - l4_hl)
    r.problems["IP length does not cover its headers"] = gen_len < ip_hl + l4_hl
    r.problems["IP length above the MTU"] = gen_len > mtu
    udp_gen = r.f.get("udp_len:gen")
    if udp_gen is not None:
        udp = r.proto == rules["udp"].number
        r.problems["UDP length disagrees with the IP length"] = udp & (udp_gen != gen_len - ip_hl)
        # Two length fields, and the IP one leaves no payload where the UDP one gives some: the
        # model drew them apart (they agree on 0.2% of generated UDP rows, 99.4% of real ones) and
        # an empty datagram is rare (none of 5,803 real UDP rows of the shared captures), so the
        # UDP length is taken; trusting the IP length left 18% of generated DNS datagrams empty.
        empty = udp & (gen_len <= ip_hl + l4_hl) & (udp_gen > l4_hl)
        payload = np.where(empty, np.clip(udp_gen - l4_hl, 0, mtu - ip_hl - l4_hl), payload)
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
#
# One generic pass, as scapy's post_build: every section's field values (the rows' own, or what a
# protocol file's ``compute`` asks for) packed by the field table (bits/codec.py pack_fields),
# lengths first, checksums last, then placed by the exact path's overlay (overlay_bytes). Adding
# a header field or a computed length is a change to layout.py and a protocol file, not here.

def header_lengths(r: Rows, rules: dict) -> tuple[np.ndarray, np.ndarray]:
    """(IP header bytes, transport header bytes) of every row: its protocols' fixed bytes plus
    their options (IHL and doff follow from these)."""
    out = []
    for layer, masks in ((3, {"ipv4": ~r.v6, "ipv6": r.v6}), (4, None)):
        hl = np.zeros(len(r), dtype=np.int64)
        for pr in rules.values():
            if pr.layer != layer:
                continue
            m = masks[pr.section] if masks else r.proto == pr.number
            hl = np.where(m, pr.header["fixed_bytes"], hl)
            if "options_field" in pr.header:
                hl = np.where(m, hl + getattr(r, OPTION_ATTR[pr.section] + "_optlen"), hl)
        out.append(hl)
    return out[0], out[1]


@lru_cache(maxsize=16)
def frame_layout(body_bytes: int) -> Layout:
    """The sections of a built frame in wire order; the body is its payload section."""
    return Layout(sections=("eth", "ipv4", "ipv6", "tcp", "udp", "icmp"), payload_bytes=body_bytes,
                  name="frame")


def section_values(r: Rows, pr, rows: np.ndarray, hdr: np.ndarray, layer_len: np.ndarray) -> dict:
    """Field name -> values of one protocol's header for ``rows``: lengths, next protocol,
    addresses and options as the protocol file's ``compute`` names them, every other field the
    row's repaired value; checksums stay zero (computed last)."""
    out = {}
    for fr in pr.fields:
        col = pr.column(fr.name)
        how = fr.compute
        if how == "header_length":
            out[col] = hdr // pr.header["length_unit"]
        elif how in ("total_length", "datagram_length"):
            out[col] = layer_len
        elif how == "payload_length":
            out[col] = layer_len - hdr
        elif how == "next_protocol":
            out[col] = r.proto[rows]
        elif how == "address":          # fields src / dst: the rows' src / dst bytes
            out[col] = getattr(r, fr.name)[rows, :fr.bits // 8]
        elif how == "options":
            out[col] = getattr(r, OPTION_ATTR[pr.section] + "_opt")[rows]
        elif how != "checksum" and col in r.f:
            out[col] = r.f[col][rows]
    return out


def build(r: Rows, rules: dict, ts_sec, ts_nsec, body: np.ndarray, body_len: np.ndarray,
          macs: tuple[np.ndarray, np.ndarray]) -> P.PacketBatch:
    """Ethernet frames of every row with lengths and checksums computed.

    ``body`` (n, B) holds the bytes after the transport header that are not zero (payload bits,
    ICMP bodies); ``body_len`` is each row's total payload length."""
    n = len(r)
    by_section = {pr.section: pr for pr in rules.values()}
    # Lengths first, from the inside out: transport header + body, IP header + that, the frame.
    ip_hl, l4_hl = header_lengths(r, rules)
    l4_len = l4_hl + body_len
    ip_len = ip_hl + l4_len
    eth_bytes = SECTION_BYTES["eth"]
    frame_len = eth_bytes + ip_len

    # section -> (its rows, its packed bytes, its header length in those rows)
    every = slice(None)
    blocks = {"eth": (every, pack_fields("eth", {
        "eth_dhost": macs[1], "eth_shost": macs[0],
        "eth_ethertype": np.where(r.v6, by_section["ipv6"].bind["ethertype"],
                                  by_section["ipv4"].bind["ethertype"])}, n), np.full(n, eth_bytes))}
    sections = {"ipv4": (~r.v6, ip_hl, ip_len), "ipv6": (r.v6, ip_hl, ip_len),
                **{sec: (r.proto == pr.number, l4_hl, l4_len)
                   for sec, pr in by_section.items() if pr.layer == 4}}
    for sec, (m, hl, layer_len) in sections.items():
        rows = np.flatnonzero(m)
        if len(rows):
            values = section_values(r, by_section[sec], rows, hl[rows], layer_len[rows])
            blocks[sec] = (rows, pack_fields(sec, values, len(rows)), hl[rows])

    # Checksums last, each over what its rule says it covers (the IP header; the transport
    # header, its body and the IP pseudo-header).
    # Pseudo-headers sum the IP layer's addresses; an IPv4 one is the first bytes of the 16.
    ip_address = r.v6[:, None] | (np.arange(r.src.shape[1]) < FIELDS["ipv4_src"].width // 8)
    src, dst = np.where(ip_address, r.src, 0), np.where(ip_address, r.dst, 0)
    # Zero bytes add nothing to a checksum: only rows with payload content are summed.
    body_sum = np.zeros(n, np.int64)
    content = np.flatnonzero(body.any(axis=1)) if body.shape[1] else ()
    if len(content):
        body_sum[content] = C.region_sum(body[content], np.zeros(len(content), np.int64),
                                         body_len[content])
    for sec, (rows, block, h) in blocks.items():
        pr = by_section.get(sec)
        if pr is None or not pr.checksum:
            continue
        value = C.rule_checksum(pr.checksum, block, h, body_sum[rows], body_len[rows], src[rows],
                                dst[rows], r.proto[rows])
        put_field(block, pr.column(pr.checksum["field"]), value)

    # Placed as the exact path places an image's bytes over a capture (here over blank frames):
    # each header lands where the version, IHL and doff just written say it starts.
    # Payload bytes past the first PAYLOAD_OVERLAY go straight into the frames below: most rows
    # are zeros there (the blank frames' own), and the overlay's cost grows with its width.
    narrow = min(body.shape[1], PAYLOAD_OVERLAY)
    layout = frame_layout(narrow)
    vals = np.zeros((n, layout.full_width // 8), dtype=np.uint8)
    covered = np.zeros(vals.shape, dtype=bool)
    blocks["payload"] = (every, body[:, :narrow], np.minimum(body_len, narrow))
    for sec, (rows, block, length) in blocks.items():
        if sec not in layout.section_offsets:
            continue
        c0 = layout.section_offsets[sec][0] // 8
        k = block.shape[1]
        vals[rows, c0:c0 + k] = block
        covered[rows, c0:c0 + k] = np.arange(k)[None, :] < length[:, None]
    offset = np.zeros(n, dtype=np.int64)
    if n:
        offset[1:] = np.cumsum(frame_len)[:-1]
    blank = P.PacketBatch(np.zeros(int(frame_len.sum()), dtype=np.uint8), offset, frame_len,
                          frame_len, np.asarray(ts_sec, np.int64), np.asarray(ts_nsec, np.int64),
                          np.full(n, P.LINKTYPE_ETHERNET, dtype=np.int32), np.arange(n, dtype=np.int64))
    batch = overlay_bytes(blank, vals, covered, layout, np.full(n, eth_bytes, dtype=np.int64),
                          {sec: rows for sec, (rows, _, _) in blocks.items()})
    tail = np.flatnonzero(body[:, narrow:].any(axis=1)) if body.shape[1] > narrow else ()
    if len(tail):
        cols = np.arange(narrow, body.shape[1])
        inside = cols[None, :] < body_len[tail, None]
        at = (batch.offset[tail] + eth_bytes + ip_hl[tail] + l4_hl[tail])[:, None] + cols[None, :]
        batch.data[at[inside]] = body[tail, narrow:][inside]
    return batch
