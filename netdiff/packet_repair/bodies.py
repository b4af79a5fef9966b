"""What follows the transport header: payload bytes, and the ICMP rest-of-header and bodies
whose meaning the ICMP rule file declares per type."""
from __future__ import annotations

import numpy as np

from netdiff.bits.codec import pack_fields, put_field
from netdiff.errors import NetdiffError
from netdiff.packet_repair.rows import Rows
from netdiff.rules import checksum as C
from netdiff.rules import engine as E

ORIGINAL_DATAGRAM = 28      # quoted IPv4 header (20) + first 8 bytes (RFC 792)
TIMESTAMPS = 12


def rest_of_header(state, targets) -> None:
    """``compute: icmp_rest`` (rules/compute.py): ``icmp_rest`` for each field naming it."""
    for pr, fr in targets:
        icmp_rest(state.r, pr, pr.column(fr.name))


def icmp_rest(r: Rows, pr, col: str) -> None:
    """Rest-of-header ``col`` by type (id_seq kept; unused zero; MTU, pointer, gateway
    legalised), for the rows of protocol ``pr`` (whose file lists the types)."""
    f = r.f
    icmp = r.proto == pr.number
    if not icmp.any():
        return
    info = E.icmp_type_info(pr)
    roh = f[col].copy()
    type_col, code_col = pr.column("type"), pr.column("code")
    for t, d in info.items():
        m = icmp & (f[type_col] == t)
        if not m.any():
            continue
        kind = np.full(len(r), d["rest"], dtype=object)
        for code, k in (d.get("rest_by_code") or {}).items():
            kind[m & (f[code_col] == int(code))] = k
        for k in set(kind[m]):
            mk = m & (kind == k)
            if k == "unused":
                roh[mk] = 0
            elif k == "mtu":
                roh[mk] = np.clip(roh[mk] & 0xFFFF, 68, 65535)
            elif k == "pointer":
                roh[mk] = np.clip(roh[mk] >> 24, 0, ORIGINAL_DATAGRAM - 1) << 24
            elif k == "gateway":
                a = r.src[mk, :4].astype(np.int64)
                roh[mk] = (a[:, 0] << 24) | (a[:, 1] << 16) | (a[:, 2] << 8) | a[:, 3]
            elif k != "id_seq":
                raise NetdiffError(f"{pr.path}: unknown rest-of-header kind {k!r} "
                                   "(id_seq, unused, mtu, pointer, gateway)")
    f[col] = roh


def bodies(r: Rows, rules: dict, payload_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, B) body bytes and each row's payload length (zeros beyond B)."""
    n = len(r)
    width = max(payload_bytes, ORIGINAL_DATAGRAM)
    body = np.zeros((n, width), dtype=np.uint8)
    length = r.payload_len.astype(np.int64).copy()
    if r.payload is not None and payload_bytes:
        body[:, :payload_bytes] = r.payload
    icmp = r.proto == rules["icmp"].number
    if icmp.any():
        info = E.icmp_type_info(rules["icmp"])
        lut = np.full(256, "", dtype=object)
        for t, d in info.items():
            lut[t] = d["body"]
        kinds = np.where(icmp, lut[r.f["icmp_type"] & 0xFF], "")
        ts = icmp & (kinds == "timestamps")
        length[ts] = TIMESTAMPS
        body[ts, :TIMESTAMPS] = 0
        od = np.flatnonzero(icmp & (kinds == "original_datagram"))
        if len(od):
            length[od] = ORIGINAL_DATAGRAM
            body[od] = 0
            body[od, :ORIGINAL_DATAGRAM] = _quoted(r, rules, od)
    return body, length


def _quoted(r: Rows, rules: dict, rows: np.ndarray) -> np.ndarray:
    """The datagram an ICMP error quotes: the client's UDP probe to the error's sender."""
    k = len(rows)
    ip, udp = rules["ipv4"], rules["udp"]
    ip_hl = ip.header["fixed_bytes"]
    header = pack_fields("ipv4", {
        "ipv4_ver": ip.field("ver").values[0], "ipv4_hl": ip_hl // ip.header["length_unit"],
        "ipv4_tl": ORIGINAL_DATAGRAM, "ipv4_ttl": 64, "ipv4_proto": udp.number,
        "ipv4_src": r.dst[rows, :4],          # the original sender is the error's destination
        "ipv4_dst": r.src[rows, :4]}, k)[:, :ip_hl]
    zero = np.zeros(k, np.int64)
    # The IPv4 rule has no pseudo-header: no addresses or protocol to pass.
    put_field(header, "ipv4_cksum", C.rule_checksum(ip.checksum, header, np.full(k, ip_hl), zero, zero,
                                                    None, None, None))
    probe = pack_fields("udp", {"udp_sport": 49152 + (rows % 16384), "udp_dport": 33434,
                                "udp_len": udp.header["fixed_bytes"]}, k)      # an empty probe
    return np.concatenate([header, probe], axis=1)
