"""netdiff's own checks of every packet: the protocol_rules/*.yaml that repair applies
(fixed values, lengths, dependencies, bindings, checksums), read from the same loaded rules."""
from __future__ import annotations

import numpy as np

from netdiff.bits import codec
from netdiff.bits.fields import (ADDRESSES, FIELDS, FIXED_BYTES, LENGTH_FIELDS, VERSION_SECTIONS,
                                 header_bytes, header_length, per_section, read_field,
                                 read_field_bytes, total_length)
from netdiff.rules import checksum as C
from netdiff.rules import engine as E


def check_batch(batch, rules: dict | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({rule: bool mask of packets breaking it}, mask of packets the rules could read)."""
    rules = rules or E.load_rules()
    p = codec.parse(batch)
    n = len(batch)
    checked = p.reason == 0
    fails: dict[str, np.ndarray] = {}

    def add(name, mask):
        if mask.any():
            fails[name] = fails.get(name, np.zeros(n, bool)) | mask

    # Whole IP packets as a zero-padded matrix (for checksums), chunked to bound memory.
    l3 = p.l3
    ip_avail = batch.caplen - l3
    g = p.window
    rows = np.arange(n)
    ip = header_bytes(g, l3)
    ip_total = per_section(p.version, VERSION_SECTIONS, lambda sec: total_length(ip, sec))
    wire_avail = batch.wirelen - l3
    add("IP length beyond the frame", checked & (ip_total > wire_avail))
    complete = checked & (ip_total <= ip_avail)

    # Field values against the rule files (fixed headers, read from the gathered window).
    for proto, pr in sorted(rules.items(), key=lambda kv: kv[1].layer):   # masks from bind
        mask, start = (checked & (p.version == pr.bind["version"]), l3) if pr.layer == 3 else \
            (checked & (p.proto == pr.number), p.l4)
        r = rows[mask]
        if not len(r):
            continue
        hdr = header_bytes(g, start[r], rows=r)
        fixed_bits = pr.header.get("fixed_bytes", 8) * 8
        vals = {}
        for fr in pr.fields:
            if fr.offset + fr.bits > fixed_bits or fr.bits > 56:
                continue
            v = read_field(hdr, pr.column(fr.name))
            vals[fr.name] = v
            if fr.check and (fr.values is not None or fr.range is not None):
                bad = np.zeros(n, bool)
                bad[r] = ~fr.legal(v)
                add(f"{pr.column(fr.name)} not a legal value", bad)
        if pr.flags:
            names, _ = pr.flag_table()
            fl = np.stack([vals[k] for k in names], axis=1)
            bad = np.zeros(n, bool)
            bad[r] = ~E.flags_legal(pr, fl)
            add(f"{proto} flags not a legal combination", bad)
        if pr.dependencies:         # the same entries repair applies (engine.apply_dependencies)
            hlen = vals[pr.header["length_field"]] * pr.header["length_unit"] \
                if "length_field" in pr.header else pr.header["fixed_bytes"]
            payload = ip_total[r] - (p.ip_hlen[r] if pr.layer == 4 else 0) - hlen
            for name, m in E.dependency_failures(pr, vals, payload).items():
                bad = np.zeros(n, bool)
                bad[r] = m
                add(name, bad)
        if pr.types:
            pairs = pr.icmp_pairs()
            tc = vals["type"] * 256 + vals["code"]
            bad = np.zeros(n, bool)
            bad[r] = ~np.isin(tc, pairs[:, 0] * 256 + pairs[:, 1])
            add("icmp type/code not a legal pair", bad)
        if pr.options is not None:
            hl = header_length(hdr, pr.section)
            optlen = np.clip(hl - FIXED_BYTES[pr.section], 0, pr.options.max_bytes)
            ob = read_field_bytes(hdr, LENGTH_FIELDS[pr.section][2])[:, :pr.options.max_bytes]
            full = {k: vals[k] == 1 for k in pr.options.flag_names()}
            _, changed = E.walk_options(pr.options, ob, optlen, full, keep_unknown=True)
            bad = np.zeros(n, bool)
            bad[r] = changed
            add(f"{proto} options break the option grammar", bad)
            if pr.layer == 4:
                bad = np.zeros(n, bool)
                bad[r] = hl > ip_total[r] - p.ip_hlen[r]
                add(f"{proto} header longer than the IP payload", bad)
        dl = pr.computed("datagram_length")
        if dl is not None:
            bad = np.zeros(n, bool)
            bad[r] = vals[dl.name] != ip_total[r] - p.ip_hlen[r]
            add(f"{proto} length disagrees with the IP length", bad)

    # Checksums over complete packets.
    ok_ck = _checksums(batch, p, ip_total, complete, rules)
    for name, bad in ok_ck.items():
        add(name, bad)
    return fails, checked


def _checksums(batch, p, ip_total, complete, rules) -> dict[str, np.ndarray]:
    n = len(batch)
    ip4 = rules["ipv4"]
    carried = [rules[x] for x in E.layer_protocols(rules, 4).values() if rules[x].checksum is not None]
    out = {k: np.zeros(n, bool) for k in [f"{ip4.protocol} header checksum wrong"] +
           [f"{pr.protocol} checksum wrong" for pr in carried]}
    idx = np.flatnonzero(complete)
    budget = 1 << 24
    i = 0
    while i < len(idx):
        width = int(ip_total[idx[i]])
        j = i
        while j < len(idx) and (j - i + 1) * max(width, int(ip_total[idx[j]])) <= budget:
            width = max(width, int(ip_total[idx[j]]))
            j += 1
        j = max(j, i + 1)
        sel = idx[i:j]
        # room for IPv6 addresses in any chunk
        width = max(int(ip_total[sel].max()), FIELDS[ADDRESSES["ipv6"][1]].end_byte)
        width += width % 2
        col = np.arange(width)
        src = batch.offset[sel, None] + p.l3[sel, None] + col[None, :]
        inside = col[None, :] < ip_total[sel, None]
        mat = np.where(inside, batch.data[np.minimum(src, len(batch.data) - 1)], 0).astype(np.uint8)
        v4 = p.version[sel] == ip4.bind["version"]
        k = len(sel)
        zero = np.zeros(k, np.int64)
        hl = p.ip_hlen[sel]
        seg = ip_total[sel] - hl
        s4 = np.flatnonzero(v4)
        bad4 = ~C.verify(C.covered_sums(mat[s4], ip4, zero[s4], hl[s4], ip_total[sel][s4]))
        out[f"{ip4.protocol} header checksum wrong"][sel[s4]] = bad4
        ip = header_bytes(mat, zero)

        def address(end: int) -> np.ndarray:
            a4, a6 = (read_field_bytes(ip, ADDRESSES[sec][end]) for sec in ("ipv4", "ipv6"))
            return np.where(v4[:, None], np.pad(a4, ((0, 0), (0, a6.shape[1] - a4.shape[1]))), a6)

        srcs, dsts = address(0), address(1)
        l3_name = np.full(k, "", dtype=object)
        for ver, name in E.layer_protocols(rules, 3).items():
            l3_name[p.version[sel] == ver] = name
        for pr in carried:
            m = np.flatnonzero(p.proto[sel] == pr.number)
            if not len(m):
                continue
            good = C.verify(C.covered_sums(mat[m], pr, hl[m], p.l4_hlen[sel][m], seg[m], srcs[m], dsts[m]))
            stored = read_field(header_bytes(mat, hl[m], rows=m), pr.column(pr.checksum["field"]))
            # a zero the file allows over this IP version means "no checksum" (UDP over IPv4)
            none = (stored == 0) & np.isin(l3_name[m], list(pr.checksum.get("optional_over", ())))
            out[f"{pr.protocol} checksum wrong"][sel[m]] = ~good & ~none
        i = j
    return out
