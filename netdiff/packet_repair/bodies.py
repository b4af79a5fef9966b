"""What follows the transport header: payload bytes, and the ICMP rest-of-header and bodies
whose meaning the ICMP rule file declares per type."""
from __future__ import annotations

import numpy as np

from netdiff.bits.fields import SECTION_PROTOS
from netdiff.packet_repair.rows import Rows
from netdiff.rules import checksum as C
from netdiff.rules import engine as E

ORIGINAL_DATAGRAM = 28      # quoted IPv4 header (20) + first 8 bytes (RFC 792)
TIMESTAMPS = 12


def icmp_rest(r: Rows, rules: dict) -> None:
    """Rest-of-header by type (id_seq kept; unused zero; MTU, pointer, gateway legalised)."""
    f = r.f
    icmp = r.proto == SECTION_PROTOS["icmp"]
    if not icmp.any():
        return
    info = E.icmp_type_info(rules["icmp"])
    roh = f["icmp_roh"].copy()
    for t, d in info.items():
        m = icmp & (f["icmp_type"] == t)
        if not m.any():
            continue
        kind = np.full(len(r), d["rest"], dtype=object)
        for code, k in (d.get("rest_by_code") or {}).items():
            kind[m & (f["icmp_code"] == int(code))] = k
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
                raise ValueError(f"icmp.yaml: unknown rest-of-header kind {k!r}")
    f["icmp_roh"] = roh


def bodies(r: Rows, rules: dict, payload_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, B) body bytes and each row's payload length (zeros beyond B)."""
    n = len(r)
    width = max(payload_bytes, ORIGINAL_DATAGRAM)
    body = np.zeros((n, width), dtype=np.uint8)
    length = r.payload_len.astype(np.int64).copy()
    if r.payload is not None and payload_bytes:
        body[:, :payload_bytes] = r.payload
    icmp = r.proto == SECTION_PROTOS["icmp"]
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
            body[od, :ORIGINAL_DATAGRAM] = _quoted(r, od)
    return body, length


def _quoted(r: Rows, rows: np.ndarray) -> np.ndarray:
    """The datagram an ICMP error quotes: the client's UDP probe to the error's sender."""
    k = len(rows)
    q = np.zeros((k, ORIGINAL_DATAGRAM), dtype=np.uint8)
    q[:, 0] = 0x45
    q[:, 3] = ORIGINAL_DATAGRAM
    q[:, 8] = 64
    q[:, 9] = 17
    q[:, 12:16] = r.dst[rows, :4]          # the original sender is the error's destination
    q[:, 16:20] = r.src[rows, :4]
    ck = C.checksum(C.region_sum(q, np.zeros(k, np.int64), np.full(k, 20)))
    q[:, 10], q[:, 11] = ck >> 8, ck & 0xFF
    sport = 49152 + (rows % 16384)
    q[:, 20], q[:, 21] = sport >> 8, sport & 0xFF
    q[:, 22], q[:, 23] = 33434 >> 8, 33434 & 0xFF
    q[:, 25] = 8
    return q
