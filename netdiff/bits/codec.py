"""Packets <-> nPrint bit matrices, vectorised over whole batches.

Encoding follows nPrint 1.2.1: a header present in the packet is copied byte for byte (MSB
first) up to its own length (IHL, doff), the rest of the section's budget is fill; a header not
in the packet is all fill. Packets nPrint gives no row (not IPv4/IPv6 with TCP/UDP/ICMP) are
returned with the reason they were left out.

Decoding is the inverse for one row: a byte is "covered" by the matrix when none of its 8 bits
is fill; covered bytes are written over a base packet at the offsets the row's own IHL/doff give.
Repair serialises through the same path: ``pack_fields`` turns field values into section bytes
by the field table, ``overlay_bytes`` places them.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from netdiff.bits.fields import (ADDRESSES, FIELDS, FIXED_BYTES, FRAGMENT_FIELDS, IP_PROTOCOL,
                                 PORTED_SECTIONS, PORTS, PROTO_SECTIONS, SECTION_PROTOS, SECTION_VERSIONS,
                                 VERSION_SECTIONS, ByteSource, cached, header_bytes, header_length,
                                 per_section, read_field, read_field_bytes, total_length)
from netdiff.bits.layout import SECTION_BYTES, SECTIONS, Layout
from netdiff.io import pcap as P

MAX_ENCAP_BYTES = 512      # IP headers further into the frame than this are left out

# Why a packet gets no row (index = code); 0 means it was encoded.
SKIP_REASONS = (
    "",
    "empty packet (0 bytes captured)",
    "not IPv4 or IPv6 (link-layer protocol)",
    "IP version is neither 4 nor 6",
    "truncated IP header",
    "IPv4 header length below 20 bytes",
    "IP fragment after the first (holds no transport header)",
    "IPv4 payload is not TCP, UDP or ICMP",
    "ICMPv6 (nPrint has no ICMPv6 section)",
    "IPv6 extension header before the transport header",
    "IPv6 payload is not TCP, UDP or ICMP",
    "802.1Q/QinQ-tagged frame (nPrint reads no VLAN tags)",
    # where the IP header was looked for under other headers and not found
    "truncated link-layer header (radiotap/PPI length below 8)",
    "802.11 management or control frame",
    "802.11 data frame without payload (null function)",
    "802.11 frame encrypted (protected bit set)",
    "802.11 data not LLC/SNAP-encapsulated",
    "PPP control protocol or non-IP PPP payload",
    "Frame Relay frame not carrying IP",
    "MPLS payload is not IP",
    "PPI header for a link type netdiff does not read",
    f"IP header more than {MAX_ENCAP_BYTES} bytes into the frame",
    "unknown link type, no plausible IP header where nPrint looks",
)
(OK, R_EMPTY, R_NONIP, R_VERSION, R_TRUNC_IP, R_IHL, R_FRAG, R_PROTO4, R_ICMP6, R_EXT6,
 R_PROTO6, R_VLAN, R_TRUNC_LINK, R_WLAN_MGMT, R_WLAN_NODATA, R_WLAN_PROT, R_WLAN_SNAP, R_PPP, R_FR,
 R_MPLS, R_PPI, R_DEEP, R_UNKNOWN_LINK) = range(len(SKIP_REASONS))
IPV6_EXTENSIONS = (0, 43, 44, 50, 51, 60, 135, 139, 140, 253, 254)
VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)

_FILL_CODE = 256


def _bit_lut(fill: int) -> np.ndarray:
    lut = np.empty((257, 8), dtype=np.int8)
    lut[:256] = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1)
    lut[256] = fill
    return lut


_LUTS: dict[int, np.ndarray] = {}


def bit_lut(fill: int) -> np.ndarray:
    """(257,) int64 whose 8 bytes are the 8 int8 bit values of each byte code: one ``take``
    expands a whole byte matrix to bits."""
    if fill not in _LUTS:
        _LUTS[fill] = np.ascontiguousarray(_bit_lut(fill)).view(np.int64).reshape(257)
    return _LUTS[fill]


@dataclass
class Parsed:
    """Per-packet header offsets and types for a batch (arrays of the batch's length)."""

    reason: np.ndarray      # int8 code, 0 = encodable
    eth: np.ndarray         # bool, Ethernet header present
    l3: np.ndarray          # int64, offset of the IP header
    version: np.ndarray     # 4 / 6 / 0
    ip_hlen: np.ndarray     # IP header bytes (IHL * 4, or 40)
    proto: np.ndarray       # 6 / 17 / 1 (0 when skipped)
    l4: np.ndarray          # offset of the transport header
    l4_hlen: np.ndarray     # transport header bytes declared (doff * 4, 8, 8)
    payload_len: np.ndarray # payload bytes by the IP lengths (>= 0)
    window: np.ndarray = field(repr=False, default=None)   # gathered bytes (N, W)
    eth_at: np.ndarray = field(repr=False, default=None)   # offset of the Ethernet header (-1: none)
    wireless: np.ndarray = field(repr=False, default=None) # radiotap rows nPrint writes without IP
    encap: np.ndarray = field(repr=False, default=None)    # ENCAPSULATIONS bits passed to reach l3

    def start(self, section: str) -> np.ndarray:
        """Where a section's header starts in each packet (meaningful where it has one)."""
        if section == "eth":
            return np.zeros_like(self.l3) if self.eth_at is None else np.maximum(self.eth_at, 0)
        if section in SECTION_VERSIONS:
            return self.l3
        if section in SECTION_PROTOS:
            return self.l4
        if section == "payload":
            return self.l4 + self.l4_hlen
        raise ValueError(f"unknown section {section!r}")

    def header(self, section: str) -> ByteSource:
        """Byte source (``fields.read_field``) of every packet's ``section`` header."""
        return header_bytes(self.window, self.start(section))

    def read(self, name: str) -> np.ndarray:
        """(N,) int64 value of one header field in every packet (garbage where the packet does
        not hold that field's header: mask with ``version``/``proto``)."""
        return read_field(self.header(FIELDS[name].section), name)


def gather_window(batch: P.PacketBatch, width: int) -> np.ndarray:
    """(N, width) uint8: each packet's first ``width`` bytes, zero beyond its captured length."""
    n = len(batch)
    if n == 0:
        return np.zeros((0, width), dtype=np.uint8)
    data = batch.data
    if len(data) < int(batch.offset.max()) + width:
        data = np.concatenate([data, np.zeros(width, dtype=np.uint8)])
    # Row gather over a strided view of the buffer: one contiguous copy per packet.
    windows = np.lib.stride_tricks.as_strided(data, shape=(len(data) - width + 1, width),
                                              strides=(data.strides[0], data.strides[0]), writeable=False)
    g = windows[batch.offset]
    short = np.flatnonzero(batch.caplen < width)
    if len(short):
        g[short] *= (np.arange(width) < batch.caplen[short, None])
    return g


# --- where the IP header is: link layers, encapsulations and tunnels -----------------------------
#
# A small state machine run over whole batches: every packet has a "kind" (what the bytes at its
# current offset are) and each step moves all packets of one kind at once. Protocol knowledge is
# the tables below; the handlers only read the fields the tables point at.

# States. END: an IP header at ``off``; FAIL: none found (``why`` says why).
(K_END, K_FAIL, K_ETH, K_SLL, K_SLL2, K_CHDLC, K_ETYPE, K_IP, K_NULL, K_PPP, K_PPP_SERIAL, K_FR,
 K_WLAN, K_RADIOTAP, K_PPI, K_MPLS, K_GRE, K_VXLAN, K_GUESS) = range(19)

# Link type -> (state, offset of the first header).
LINK_START = {
    P.LINKTYPE_ETHERNET: (K_ETH, 0), P.LINKTYPE_LINUX_SLL: (K_SLL, 0), P.LINKTYPE_LINUX_SLL2: (K_SLL2, 0),
    **{lt: (K_IP, 0) for lt in (*P.LINKTYPE_RAW_ALIASES, P.LINKTYPE_IPV4, P.LINKTYPE_IPV6)},
    P.LINKTYPE_NULL: (K_NULL, 0), P.LINKTYPE_LOOP: (K_NULL, 0), P.LINKTYPE_SLIP: (K_IP, 16),
    P.LINKTYPE_PPP: (K_PPP_SERIAL, 0), P.LINKTYPE_PPP_HDLC: (K_PPP_SERIAL, 0),
    P.LINKTYPE_C_HDLC: (K_CHDLC, 0), P.LINKTYPE_FRELAY: (K_FR, 0), P.LINKTYPE_IEEE802_11: (K_WLAN, 0),
    P.LINKTYPE_RADIOTAP: (K_RADIOTAP, 0), P.LINKTYPE_PPI: (K_PPI, 0),
}
# Headers that end in an ethertype: state -> (ethertype offset, header length).
ETHERTYPE_HEADERS = {K_ETH: (FIELDS["eth_ethertype"].first_byte, FIXED_BYTES["eth"]),
                     K_SLL: (14, 16), K_SLL2: (0, 20), K_CHDLC: (2, 4)}
ETHERTYPE_IP = (0x0800, 0x86DD)
ETHERTYPE_NEXT = {0x8847: K_MPLS, 0x8848: K_MPLS, 0x6558: K_ETH, 0x880B: K_PPP}
ETHERTYPE_PPPOE_SESSION = 0x8864          # 6-byte PPPoE header, then a PPP protocol field
PPP_IP = (0x0021, 0x0057)
CISCO_HDLC_ADDRESSES = (0x0F, 0x8F)       # found on "PPP" serial links too
FR_NLPID_IP = (0xCC, 0x8E)
FR_NLPID_SNAP = 0x80
BSD_AF_INET = (2, 10, 24, 28, 30)         # AF_INET, AF_INET6 of Linux, BSDs, macOS
PPI_DLT_NEXT = {105: K_WLAN, 1: K_ETH, 127: K_RADIOTAP}
VXLAN_PORTS = (4789, 8472)                # IANA, and Linux's historical default
IP_IN_IP = {4: 4, 41: 6}                  # IPv4 protocol -> inner IP version
IPPROTO_GRE = 47
MAX_STEPS = 24

# What a packet went through on the way to its IP header (bit i = ENCAPSULATIONS[i]).
ENCAPSULATIONS = ("802.1Q/QinQ", "MPLS", "PPPoE", "PPP", "Cisco HDLC", "Frame Relay", "802.11 LLC/SNAP",
                  "radiotap", "PPI", "GRE", "VXLAN", "IP in IP", "SLIP")
(E_VLAN, E_MPLS, E_PPPOE, E_PPP, E_CHDLC, E_FR, E_WLAN, E_RADIOTAP, E_PPI, E_GRE, E_VXLAN, E_IPIP,
 E_SLIP) = (1 << i for i in range(len(ENCAPSULATIONS)))


@dataclass
class Located:
    """Per packet: IP header offset, Ethernet header offset (-1: none), skip reason (0 = found),
    whether it is a radiotap row nPrint writes without IP, and the encapsulations passed."""

    l3: np.ndarray
    eth_at: np.ndarray
    reason: np.ndarray
    wireless: np.ndarray
    encap: np.ndarray


def byte_reader(batch: P.PacketBatch):
    """``read(rows, at)``: byte ``at`` of each packet in ``rows`` as int64, 0 beyond its captured
    length (so a truncated header reads as zeros, never as the next packet's bytes)."""
    data, base, cap = batch.data, batch.offset, batch.caplen
    last = len(data) - 1

    def read(rows: np.ndarray, at: np.ndarray) -> np.ndarray:
        at = np.broadcast_to(np.asarray(at, dtype=np.int64), rows.shape)
        inside = (at >= 0) & (at < cap[rows])
        if last < 0:
            return np.zeros(len(rows), dtype=np.int64)
        idx = np.minimum(base[rows] + np.where(inside, at, 0), last)
        return np.where(inside, data[idx], 0).astype(np.int64)

    return read


def locate_ip(batch: P.PacketBatch, links: str = "netdiff", vlan: bool = True) -> Located:
    """Find each packet's IP header.

    ``links="netdiff"`` goes through every link layer, encapsulation and tunnel in the tables
    above (a tunnel's inner IP packet is the one encoded; when the inner one cannot be found the
    outer one is); link types it does not know are read as nPrint reads them, with a sanity check
    of the IP lengths. ``links="nprint"`` finds the IP header exactly where nPrint 1.2.1 does."""
    if links == "nprint":
        return _locate_nprint(batch, vlan)
    if links != "netdiff":
        raise ValueError(f"links must be 'netdiff' or 'nprint', not {links!r}")
    n = len(batch)
    rows = np.arange(n)
    b = byte_reader(batch)

    def be16(r, at):
        return (b(r, at) << 8) | b(r, at + 1)

    lt = batch.linktype
    kind = np.full(n, K_GUESS, dtype=np.int8)
    off = np.zeros(n, dtype=np.int64)
    for t in np.unique(lt).tolist():
        if t in LINK_START:
            kind[lt == t], off[lt == t] = LINK_START[t]
    et = np.zeros(n, dtype=np.int64)             # the ethertype a K_ETYPE packet dispatches on
    why = np.zeros(n, dtype=np.int8)
    encap = np.where(lt == P.LINKTYPE_SLIP, E_SLIP, 0).astype(np.int32)
    guessed = kind == K_GUESS
    found = np.full(n, -1, dtype=np.int64)       # innermost IP header found so far (tunnels)
    found_encap = np.zeros(n, dtype=np.int32)

    def fail(r, code):
        kind[r] = K_FAIL
        why[r] = code

    def go(r, k, at, bit=0):
        kind[r] = k
        off[r] = at
        if bit:
            encap[r] |= bit

    def on_header(k, r):                          # Ethernet, SLL, SLL2, Cisco HDLC
        at, hlen = ETHERTYPE_HEADERS[k]
        et[r] = be16(r, off[r] + at)
        go(r, K_ETYPE, off[r] + hlen, E_CHDLC if k == K_CHDLC else 0)

    def on_ethertype(r):
        e = et[r]
        ip = np.isin(e, ETHERTYPE_IP)
        go(r[ip], K_IP, off[r[ip]])
        tag = np.isin(e, VLAN_TPIDS)
        if tag.any():
            t = r[tag]
            if vlan:
                et[t] = be16(t, off[t] + 2)
                go(t, K_ETYPE, off[t] + 4, E_VLAN)
            else:
                fail(t, R_VLAN)
        pppoe = e == ETHERTYPE_PPPOE_SESSION
        go(r[pppoe], K_PPP, off[r[pppoe]] + 6, E_PPPOE)
        done = ip | tag | pppoe
        for value, k in ETHERTYPE_NEXT.items():
            m = (e == value) & ~done
            go(r[m], k, off[r[m]])
            done |= m
        fail(r[~done], R_NONIP)

    def on_ppp(r, serial=False):
        if serial:
            hdlc = np.isin(b(r, off[r]), CISCO_HDLC_ADDRESSES)
            go(r[hdlc], K_CHDLC, off[r[hdlc]])
            r = r[~hdlc]
        o = off[r] + 2 * ((b(r, off[r]) == 0xFF) & (b(r, off[r] + 1) == 0x03))
        first = b(r, o)
        short = (first & 1) == 1                  # protocol field compressed to one byte
        proto = np.where(short, first, (first << 8) | b(r, o + 1))
        ip = np.isin(proto, PPP_IP)
        go(r[ip], K_IP, (o + np.where(short, 1, 2))[ip], E_PPP)
        fail(r[~ip], R_PPP)

    def on_fr(r):
        o = off[r]
        nlpid = b(r, o + 3)
        ctrl = b(r, o + 2) == 0x03
        ip = ctrl & np.isin(nlpid, FR_NLPID_IP)
        go(r[ip], K_IP, o[ip] + 4, E_FR)
        # SNAP: NLPID 0x80 (or a 0x00 pad first), OUI, then an ethertype
        pad = ctrl & (nlpid == 0) & (b(r, o + 4) == FR_NLPID_SNAP)
        snap = (ctrl & (nlpid == FR_NLPID_SNAP)) | pad
        s = o + pad
        et[r[snap]] = be16(r[snap], s[snap] + 7)
        go(r[snap], K_ETYPE, s[snap] + 9, E_FR)
        fail(r[~(ip | snap)], R_FR)

    def on_wlan(r):
        o = off[r]
        fc0, fc1 = b(r, o), b(r, o + 1)
        ftype, sub = (fc0 >> 2) & 3, fc0 >> 4
        qos = (sub & 8) > 0
        hlen = 24 + 6 * ((fc1 & 3) == 3) + 2 * qos + 4 * (qos & ((fc1 & 0x80) > 0))
        h = o + hlen
        snap = (b(r, h) == 0xAA) & (b(r, h + 1) == 0xAA) & (b(r, h + 2) == 0x03)
        is_data = ftype == 2
        fail(r[~is_data], R_WLAN_MGMT)
        nodata = is_data & ((sub & 4) > 0)
        fail(r[nodata], R_WLAN_NODATA)
        prot = is_data & ~nodata & ((fc1 & 0x40) > 0)
        fail(r[prot], R_WLAN_PROT)
        rest = is_data & ~nodata & ~prot
        fail(r[rest & ~snap], R_WLAN_SNAP)
        ok = rest & snap
        et[r[ok]] = be16(r[ok], h[ok] + 6)
        go(r[ok], K_ETYPE, h[ok] + 8, E_WLAN)

    def on_le_header(r, k):                       # radiotap, PPI: little-endian length at +2
        o = off[r]
        hlen = b(r, o + 2) | (b(r, o + 3) << 8)
        short = hlen < 8
        fail(r[short], R_TRUNC_LINK)
        r, o, hlen = r[~short], o[~short], hlen[~short]
        if k == K_RADIOTAP:
            go(r, K_WLAN, o + hlen, E_RADIOTAP)
            return
        dlt = b(r, o + 4) | (b(r, o + 5) << 8) | (b(r, o + 6) << 16) | (b(r, o + 7) << 24)
        known = np.zeros(len(r), dtype=bool)
        for value, nxt in PPI_DLT_NEXT.items():
            m = dlt == value
            go(r[m], nxt, o[m] + hlen[m], E_PPI)
            known |= m
        fail(r[~known], R_PPI)

    def on_mpls(r):
        o = off[r].copy()
        active = np.ones(len(r), dtype=bool)
        for _ in range(8):                        # label stack, up to the bottom-of-stack bit
            bos = (b(r, o + 2) & 1) == 1
            o = o + 4 * active
            active &= ~bos
            if not active.any():
                break
        ip = ~active & np.isin(b(r, o) >> 4, (4, 6))
        go(r[ip], K_IP, o[ip], E_MPLS)
        fail(r[~ip], R_MPLS)

    def on_gre(r):
        o = off[r]
        b0, b1 = b(r, o), b(r, o + 1)
        ver = b1 & 7
        ptype = be16(r, o + 2)
        v0 = (ver == 0) & ((b0 & 0x40) == 0)      # no source routing
        hlen = 4 + 4 * (((b0 & 0x80) > 0).astype(np.int64) + ((b0 & 0x20) > 0) + ((b0 & 0x10) > 0))
        et[r[v0]] = ptype[v0]
        go(r[v0], K_ETYPE, o[v0] + hlen[v0], E_GRE)
        pptp = (ver == 1) & (ptype == 0x880B)     # enhanced GRE (PPTP) carries PPP
        plen = 8 + 4 * (((b0 & 0x10) > 0).astype(np.int64) + ((b1 & 0x80) > 0))
        go(r[pptp], K_PPP, o[pptp] + plen[pptp], E_GRE)
        fail(r[~(v0 | pptp)], R_NONIP)

    def on_vxlan(r):
        ok = (b(r, off[r]) & 0x08) > 0
        go(r[ok], K_ETH, off[r[ok]] + 8, E_VXLAN)
        fail(r[~ok], R_NONIP)

    def on_null(r):
        o = off[r]
        b0, b1, b2, b3 = (b(r, o + i) for i in range(4))
        le = b0 | (b1 << 8) | (b2 << 16) | (b3 << 24)
        be = (b0 << 24) | (b1 << 16) | (b2 << 8) | b3
        fam = np.where((lt[r] == P.LINKTYPE_NULL) & (le < 256), le, be)
        ip = np.isin(fam, BSD_AF_INET)
        go(r[ip], K_IP, o[ip] + 4)
        fail(r[~ip], R_NONIP)

    def header(r, at) -> ByteSource:
        return cached(lambda j: b(r, at + j))

    def on_guess(r):                              # nPrint's reading of any other link type
        eth = np.isin(read_field(header(r, off[r]), "eth_ethertype"), ETHERTYPE_IP)
        go(r[eth], K_IP, off[r[eth]] + FIXED_BYTES["eth"])
        go(r[~eth], K_IP, off[r[~eth]])

    def on_ip(r):
        o = off[r]
        ip = header(r, o)
        ver = read_field(ip, "ipv4_ver")          # the version nibble is the same in IPv6
        bad = ~np.isin(ver, tuple(VERSION_SECTIONS))
        if guessed[r].any():
            # A link type netdiff does not know: accept only a header whose lengths fit the frame.
            wire = batch.wirelen[r] - o
            hl4, tl4 = header_length(ip, "ipv4"), total_length(ip, "ipv4")
            ok4 = (ver == 4) & (hl4 >= FIXED_BYTES["ipv4"]) & (tl4 >= hl4) & (tl4 <= wire)
            ok6 = (ver == 6) & (total_length(ip, "ipv6") <= wire)
            bad |= guessed[r] & ~(ok4 | ok6)
        fail(r[bad & ~guessed[r]], R_VERSION)
        fail(r[bad & guessed[r]], R_UNKNOWN_LINK)
        r, o, ver = r[~bad], o[~bad], ver[~bad]
        ip = header(r, o)
        found[r] = o
        found_encap[r] = encap[r]
        hlen = np.where(ver == 4, header_length(ip, "ipv4"), header_length(ip, "ipv6"))
        proto = np.where(ver == 4, read_field(ip, IP_PROTOCOL["ipv4"]),
                         read_field(ip, IP_PROTOCOL["ipv6"]))
        frag = read_field(ip, FRAGMENT_FIELDS[0]) | read_field(ip, FRAGMENT_FIELDS[1])
        later = (ver == 4) & (frag > 0)           # a fragment: no inner header
        proto = np.where(later, -1, proto)
        inner = o + hlen
        nxt = header(r, inner)
        gre = proto == IPPROTO_GRE
        go(r[gre], K_GRE, inner[gre])
        ipip = np.zeros(len(r), dtype=bool)
        for pr, v in IP_IN_IP.items():
            m = (proto == pr) & (read_field(nxt, "ipv4_ver") == v)
            go(r[m], K_IP, inner[m], E_IPIP)
            ipip |= m
        vx = (proto == SECTION_PROTOS["udp"]) & np.isin(read_field(nxt, "udp_dport"), VXLAN_PORTS)
        go(r[vx], K_VXLAN, inner[vx] + FIXED_BYTES["udp"], E_VXLAN)
        kind[r[~(gre | ipip | vx)]] = K_END

    handlers = {K_ETYPE: on_ethertype, K_IP: on_ip, K_PPP: on_ppp, K_FR: on_fr, K_WLAN: on_wlan,
                K_MPLS: on_mpls, K_GRE: on_gre, K_VXLAN: on_vxlan, K_NULL: on_null, K_GUESS: on_guess,
                K_PPP_SERIAL: lambda r: on_ppp(r, serial=True),
                K_RADIOTAP: lambda r: on_le_header(r, K_RADIOTAP), K_PPI: lambda r: on_le_header(r, K_PPI),
                **{k: (lambda r, k=k: on_header(k, r)) for k in ETHERTYPE_HEADERS}}
    for _ in range(MAX_STEPS):
        active = kind > K_FAIL
        if not active.any():
            break
        for k in np.unique(kind[active]).tolist():
            handlers[k](rows[kind == k])
            if (off > MAX_ENCAP_BYTES).any():
                deep = rows[(off > MAX_ENCAP_BYTES) & (kind > K_FAIL)]
                fail(deep, R_DEEP)
    fail(rows[kind > K_FAIL], R_DEEP)             # still unwrapping after MAX_STEPS headers
    ok = found >= 0
    reason = np.where(ok, 0, np.where(why > 0, why, R_NONIP)).astype(np.int8)
    eth_at = np.where(ok & (lt == P.LINKTYPE_ETHERNET), 0, -1)
    eth_at = np.where(ok & guessed & (found == 14), 0, eth_at)
    return Located(np.where(ok, found, 0), eth_at, reason, np.zeros(n, dtype=bool),
                   np.where(ok, found_encap, 0))


def _locate_nprint(batch: P.PacketBatch, vlan: bool) -> Located:
    """nPrint 1.2.1: radiotap captures give one row per packet with no IP; Linux SLL loses its 16
    bytes; then, whatever the link type, the frame is Ethernet when bytes 12-13 say IPv4/IPv6,
    else the IP header is at its first byte."""
    n = len(batch)
    rows = np.arange(n)
    b = byte_reader(batch)
    lt = batch.linktype
    wireless = lt == P.LINKTYPE_RADIOTAP
    base = np.where(lt == P.LINKTYPE_LINUX_SLL, 16, 0).astype(np.int64)
    et = read_field(lambda j: b(rows, base + j), "eth_ethertype")
    eth = np.isin(et, ETHERTYPE_IP) & ~wireless
    l3 = np.where(eth, base + FIXED_BYTES["eth"], base)
    reason = np.zeros(n, dtype=np.int8)
    # nPrint reads the frame's first byte as an IP version; name the usual cause when it is not.
    version = read_field(lambda j: b(rows, l3 + j), "ipv4_ver")
    not_ip = ~eth & ~wireless & ~np.isin(version, tuple(VERSION_SECTIONS))
    framed = np.isin(lt, (P.LINKTYPE_ETHERNET, P.LINKTYPE_LINUX_SLL))
    reason[not_ip & framed] = R_NONIP
    reason[not_ip & framed & np.isin(et, VLAN_TPIDS) & (lt == P.LINKTYPE_ETHERNET)] = R_VLAN
    return Located(l3, np.where(eth, base, -1), reason, wireless, np.zeros(n, dtype=np.int32))


def parse(batch: P.PacketBatch, payload_bytes: int = 0, fragments: str = "skip",
          vlan: bool = True, links: str = "netdiff") -> Parsed:
    """Find every packet's IP and transport headers.

    ``links``: "netdiff" finds IP under every link layer, encapsulation and tunnel netdiff knows
    (``locate_ip``); "nprint" finds it where nPrint 1.2.1 does (``netdiff nprint``).
    ``fragments``: "skip" later fragments, or "nprint" to read them as nPrint does (their first
    payload bytes taken as a transport header). ``vlan=False`` gives tagged frames no row, as
    nPrint (which reads no 802.1Q tags) does."""
    n = len(batch)
    cap = batch.caplen
    loc = locate_ip(batch, links, vlan)
    l3, reason, wireless = loc.l3, loc.reason.copy(), loc.wireless
    nprint = links == "nprint"
    reason[(reason == 0) & (l3 > MAX_ENCAP_BYTES)] = R_DEEP
    reason[cap == 0] = R_EMPTY
    # The window reaches the deepest IP header of the batch plus two full headers and payload.
    reach = l3[(reason == 0) & (l3 < cap)]
    width = (max(26, int(reach.max()) if len(reach) else 0) + max(SECTION_BYTES[s] for s in SECTION_VERSIONS)
             + max(SECTION_BYTES[s] for s in SECTION_PROTOS) + payload_bytes)
    g = gather_window(batch, width)
    ip = header_bytes(g, l3)
    version = read_field(ip, "ipv4_ver")          # the version nibble is the same in IPv6
    reason[(reason == 0) & (cap <= l3) & ~wireless] = R_TRUNC_IP
    reason[(reason == 0) & ~np.isin(version, tuple(VERSION_SECTIONS)) & ~wireless] = R_VERSION

    v4 = (reason == 0) & (version == 4) & ~wireless
    v6 = (reason == 0) & (version == 6) & ~wireless
    ipver = np.where(v4 | v6, version, 0)
    ip_hlen = per_section(ipver, VERSION_SECTIONS, lambda sec: header_length(ip, sec))
    if nprint:
        # nPrint takes IHL as it is and reads past the captured bytes; netdiff writes a row as
        # soon as the protocol field was captured, with every byte beyond the capture as fill.
        proto_at = per_section(ipver, VERSION_SECTIONS, lambda sec: FIELDS[IP_PROTOCOL[sec]].first_byte)
        reason[(reason == 0) & (v4 | v6) & (cap <= l3 + proto_at)] = R_TRUNC_IP
    else:
        reason[v4 & (ip_hlen < FIXED_BYTES["ipv4"])] = R_IHL
        short = cap < l3 + np.maximum(ip_hlen, FIXED_BYTES["ipv4"])
        reason[(reason == 0) & short & ~wireless] = R_TRUNC_IP
    v4 &= reason == 0
    v6 &= reason == 0
    ipver = np.where(v4 | v6, version, 0)

    proto = per_section(ipver, VERSION_SECTIONS, lambda sec: read_field(ip, IP_PROTOCOL[sec]))
    ip_total = per_section(ipver, VERSION_SECTIONS, lambda sec: total_length(ip, sec))
    if fragments == "skip":
        reason[v4 & (read_field(ip, "ipv4_foff") > 0)] = R_FRAG
    known = np.isin(proto, tuple(PROTO_SECTIONS))
    reason[(reason == 0) & v4 & ~known] = R_PROTO4
    reason[(reason == 0) & v6 & (proto == 58)] = R_ICMP6
    reason[(reason == 0) & v6 & np.isin(proto, IPV6_EXTENSIONS)] = R_EXT6
    reason[(reason == 0) & v6 & ~known] = R_PROTO6
    ok = reason == 0
    proto[~ok] = 0
    version = np.where(ok, version, 0)

    l4 = l3 + ip_hlen
    # A TCP header cut by the capture reads as the bytes that are there (zero beyond).
    transport = header_bytes(g, l4)
    l4_hlen = per_section(proto, PROTO_SECTIONS, lambda sec: header_length(transport, sec))
    payload_len = np.where(ok, np.maximum(ip_total - ip_hlen - l4_hlen, 0), 0)
    return Parsed(reason, (loc.eth_at >= 0) & ok, l3, version, np.where(ok, ip_hlen, 0), proto, l4,
                  l4_hlen, payload_len, g, np.where(ok, loc.eth_at, -1), wireless & ok,
                  np.where(ok, loc.encap, 0))


def section_span(p: Parsed, cap: np.ndarray, sec: str, payload_bytes: int):
    """(start offset, valid byte count, budget) of one section for every packet."""
    start = p.start(sec)
    if sec == "payload":
        return start, np.minimum(p.payload_len, payload_bytes), payload_bytes
    if sec == "eth":
        nvalid = np.where(p.eth, FIXED_BYTES["eth"], 0)
    elif sec in SECTION_VERSIONS:
        nvalid = np.where(p.version == SECTION_VERSIONS[sec], p.ip_hlen, 0)
    else:
        nvalid = np.where(p.proto == SECTION_PROTOS[sec], p.l4_hlen, 0)
    return start, nvalid, SECTION_BYTES[sec]


@lru_cache(maxsize=64)
def kept_bytes(layout: Layout) -> np.ndarray | None:
    """Byte columns (of the full byte matrix) the layout keeps, or None if a dropped field is not
    byte-aligned (then whole bit columns are selected instead). Cached per layout: read-only."""
    keep = layout.keep
    if len(keep) % 8 or layout.full_width % 8:
        return None
    k = keep.reshape(-1, 8)
    if not (np.all(k[:, 0] % 8 == 0) and np.all(np.diff(k, axis=1) == 1)):
        return None
    out = k[:, 0] // 8
    out.setflags(write=False)
    return out


def _rows_at(g: np.ndarray, start: np.ndarray, budget: int, out: np.ndarray) -> None:
    """out[i, :] = g[i, start[i] : start[i] + budget] (zero past the window), by slicing per
    distinct start offset (a chunk has a handful: link header sizes, IHL and doff values)."""
    n, width = g.shape
    starts = np.unique(start)
    for s0 in starts.tolist():
        take = max(0, min(budget, width - s0))
        if len(starts) == 1:
            out[:, :take] = g[:, s0:s0 + take]
            out[:, take:] = 0
            return
        rows = np.flatnonzero(start == s0)
        out[rows, :take] = g[rows, s0:s0 + take]
        out[rows, take:] = 0


def byte_codes(batch: P.PacketBatch, p: Parsed, layout: Layout) -> np.ndarray:
    """(rows, full bytes) uint16: the byte value, or 256 where the section is fill."""
    ok = np.flatnonzero(p.reason == 0)
    g = p.window[ok] if len(ok) < len(p.reason) else p.window
    cap = batch.caplen[ok]
    codes = np.empty((len(ok), layout.full_width // 8), dtype=np.uint16)
    for sec, (c0, budget) in layout.section_bytes.items():
        start, nvalid, _ = section_span(p, batch.caplen, sec, layout.payload_bytes)
        start, nvalid = start[ok], nvalid[ok]
        block = codes[:, c0:c0 + budget]
        _rows_at(g, start, budget, block)
        limit = np.minimum(nvalid, np.maximum(cap - start, 0))
        np.copyto(block, _FILL_CODE, where=np.arange(budget) >= limit[:, None])
    return codes


def encode(batch: P.PacketBatch, layout: Layout, fill: int = -1, fragments: str = "skip",
           vlan: bool = True, parsed: Parsed | None = None,
           links: str = "netdiff") -> tuple[np.ndarray, Parsed]:
    """The int8 bit matrix (one row per encodable packet, ``layout.width`` columns) and the parse.

    Rows are the packets with ``parsed.reason == 0``, in order. ``links``: see ``parse``."""
    p = parsed if parsed is not None else parse(batch, layout.payload_bytes, fragments, vlan, links)
    codes = byte_codes(batch, p, layout)
    lut = bit_lut(fill)
    kb = kept_bytes(layout)
    n = len(codes)
    if kb is not None:
        return np.take(lut, codes[:, kb]).view(np.int8).reshape(n, layout.width), p
    return np.take(lut, codes).view(np.int8).reshape(n, layout.full_width)[:, layout.keep], p


def skipped_counts(p: Parsed) -> Counter:
    codes, counts = np.unique(p.reason[p.reason > 0], return_counts=True)
    return Counter({SKIP_REASONS[c]: int(k) for c, k in zip(codes, counts)})


def decapsulated_counts(p: Parsed) -> Counter:
    """Encodable packets per encapsulation netdiff went through to reach their IP header."""
    enc = p.encap[p.reason == 0] if p.encap is not None else np.zeros(0, np.int32)
    return Counter({name: int(((enc >> i) & 1).sum()) for i, name in enumerate(ENCAPSULATIONS)
                    if ((enc >> i) & 1).any()})


# --- field values <-> section bytes -------------------------------------------------------------

@lru_cache(maxsize=None)
def _word_parts(section: str) -> tuple:
    """Per field of a section: (name, first bit, width, parts). A part (word, right shift, mask,
    left shift) moves the field's bits that fall in one 64-bit word of the section into place;
    fields wider than 64 bits have none (they are given as bytes)."""
    out = []
    for name, width in SECTIONS[section]:
        start = FIELDS[name].offset
        end = start + width
        parts = []
        if width <= 64:
            for w in range(start // 64, (end - 1) // 64 + 1):
                lo, hi = max(start, 64 * w), min(end, 64 * (w + 1))
                parts.append((w, np.uint64(end - hi), np.uint64((1 << (hi - lo)) - 1),
                              np.uint64(64 * (w + 1) - hi)))
        out.append((name, start, width, tuple(parts)))
    return tuple(out)


def pack_fields(section: str, values: dict, n: int) -> np.ndarray:
    """(n, SECTION_BYTES[section]) uint8: a section's wire bytes with every given field at the
    bit offset and width the field table (``fields.FIELDS``, from ``layout.SECTIONS``) gives;
    fields not given are zero.

    ``values``: field name -> integers (one per row, or one for all) for fields up to 64 bits,
    or (n, width / 8) uint8 rows for byte-aligned fields (addresses, options, MACs). Values are
    cut to their field's width, so no field spills into its neighbour."""
    nbytes = SECTION_BYTES[section]
    # Fields are OR-ed into 64-bit words (a handful of array operations per field, whatever
    # its alignment), which are then read as big-endian bytes.
    words = np.zeros((-(-nbytes // 8), n), dtype=np.uint64)
    byte_rows = []
    for name, start, width, parts in _word_parts(section):
        v = values.get(name)
        if v is None:
            continue
        v = np.asarray(v)
        if v.ndim == 2:
            if start % 8 or v.shape[1] * 8 != width:
                raise ValueError(f"{name}: bytes given for a field of {width} bits at bit {start}")
            byte_rows.append((start // 8, v))
            continue
        if not parts:
            raise ValueError(f"{name} is {width} bits wide: give its bytes")
        v = v.astype(np.uint64)
        for w, right, mask, left in parts:
            words[w] |= ((v >> right) & mask) << left
    out = np.ascontiguousarray(words.T, dtype=">u8").view(np.uint8)[:, :nbytes]
    for b0, v in byte_rows:
        out[:, b0:b0 + v.shape[1]] = v
    return out


def put_field(block: np.ndarray, name: str, values) -> None:
    """Write one field (up to 63 bits) into rows of its section's bytes in place, leaving the
    bits of its neighbours as they are (a checksum written after the rest of the header)."""
    start, width = FIELDS[name].offset, FIELDS[name].width
    v = np.asarray(values, dtype=np.int64) & ((1 << width) - 1)
    end = start + width
    for b in range(start // 8, (end - 1) // 8 + 1):
        lo, hi = max(start, 8 * b), min(end, 8 * b + 8)
        mine = ((1 << (hi - lo)) - 1) << (8 * b + 8 - hi)
        block[:, b] = (block[:, b] & (0xFF ^ mine)) | (((v >> (end - hi)) << (8 * b + 8 - hi)) & mine)


# --- decoding -----------------------------------------------------------------------------------

def full_bits(bits: np.ndarray, layout: Layout, fill: int = -1) -> np.ndarray:
    """Kept columns back into the full-section matrix; dropped fields become fill."""
    if len(layout.keep) == layout.full_width:
        return bits
    out = np.full((len(bits), layout.full_width), fill, dtype=np.int8)
    out[:, layout.keep] = bits
    return out


_GATHER_BITS = np.uint64(sum(1 << (63 - 9 * k) for k in range(8)))


def bits_to_bytes(full: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, bytes) values and a mask of bytes whose 8 bits are all 0/1 (covered).

    Each group of 8 int8 values is read as one uint64: a byte is covered when no value has its
    sign bit set, and one multiply gathers the 8 low bits (MSB first) into the top byte."""
    n = len(full)
    v = np.ascontiguousarray(full, dtype=np.int8).reshape(n, -1, 8).view(np.uint64)[..., 0]
    covered = (v & np.uint64(0x8080808080808080)) == 0
    vals = ((v & np.uint64(0x0101010101010101)) * _GATHER_BITS) >> np.uint64(56)
    return vals.astype(np.uint8), covered


def overlay(base: P.PacketBatch, bits: np.ndarray, layout: Layout, l3: np.ndarray,
            fill: int = -1) -> P.PacketBatch:
    """Write each row's covered header bytes over the matching base packet.

    ``base`` holds the bytes the matrix does not (link header, addresses when dropped, payload);
    offsets come from the rows themselves, so a changed IHL or doff moves what follows it."""
    if kept_bytes(layout) is not None:
        return overlay_bytes(base, *bits_to_bytes(bits), layout, l3)
    return overlay_bytes(base, *bits_to_bytes(full_bits(bits, layout, fill)),
                         Layout(sections=layout.sections, payload_bytes=layout.payload_bytes), l3)


@lru_cache(maxsize=64)
def _byte_blocks(layout: Layout) -> tuple[dict, list]:
    """Where an image's byte columns land: {(section, byte): image column}, and per section its
    run of image columns (contiguous: kept columns keep nPrint's order) with their byte offsets."""
    kb = kept_bytes(layout)
    full = layout.byte_map
    where = {full[c]: i for i, c in enumerate(kb.tolist())}
    blocks = []
    for sec in layout.sections:
        cols = [i for (s, _), i in where.items() if s == sec]
        if cols:
            i0, i1 = min(cols), max(cols) + 1
            blocks.append((sec, i0, i1, np.array([full[c][1] for c in kb[i0:i1].tolist()])))
    return where, blocks


def overlay_bytes(base: P.PacketBatch, vals: np.ndarray, covered: np.ndarray, layout: Layout,
                  l3: np.ndarray, section_rows: dict | None = None) -> P.PacketBatch:
    """``overlay`` from the image's byte values and covered mask (``bits_to_bytes`` of its
    columns; the layout's dropped fields must be whole bytes). ``section_rows``: section -> the
    only rows that cover it, when the caller knows (repair's one IP and one transport section
    per row); other sections are looked for in every row."""
    n = len(base)
    if kept_bytes(layout) is None:
        raise ValueError("overlay_bytes needs a layout whose dropped fields are whole bytes")
    where, blocks = _byte_blocks(layout)
    data = base.data.copy()

    def header_byte(secs: tuple[str, ...], j: int, off: np.ndarray) -> np.ndarray:
        """Byte j of a header: the row's own value where the image covers it, else the base's."""
        safe = np.minimum(off, np.maximum(base.caplen - 1, 0))
        out = np.where(off < base.caplen, data[base.offset + safe], 0).astype(np.int64)
        for sec in secs:
            c = where.get((sec, j))
            if c is not None:
                out = np.where(covered[:, c], vals[:, c], out)
        return out

    def header(secs: tuple[str, ...], start: np.ndarray) -> ByteSource:
        return cached(lambda j: header_byte(secs, j, start + j))

    # Where each section starts in each packet, from the rows' own IHL / doff. The version
    # nibble and IHL are read where either IP section covers them.
    ip = header(tuple(VERSION_SECTIONS.values()), l3)
    ver = read_field(ip, "ipv4_ver")
    l4 = l3 + np.where(ver == 4, header_length(ip, "ipv4"), header_length(ip, "ipv6"))
    proto = np.where(ver == 4, read_field(header(("ipv4",), l3), IP_PROTOCOL["ipv4"]),
                     read_field(header(("ipv6",), l3), IP_PROTOCOL["ipv6"]))
    # Any protocol but TCP is given UDP's and ICMP's fixed 8 bytes.
    l4_hlen = np.where(proto == SECTION_PROTOS["tcp"], header_length(header(("tcp",), l4), "tcp"),
                       FIXED_BYTES["udp"])
    starts = {"eth": np.zeros(n, dtype=np.int64), **{sec: l3 for sec in SECTION_VERSIONS},
              **{sec: l4 for sec in SECTION_PROTOS}, "payload": l4 + l4_hlen}
    # Per section, its block of columns at the rows' own offsets; a block no row covers (UDP in
    # a TCP capture) costs one test.
    for sec, i0, i1, offs in blocks:
        rows = slice(None) if section_rows is None else section_rows.get(sec, slice(None))
        cov = covered[rows, i0:i1]
        if not cov.any():
            continue
        at = starts[sec][rows, None] + offs
        keep = cov & (at < base.caplen[rows, None])
        data[(at + base.offset[rows, None])[keep]] = vals[rows, i0:i1][keep]
    return P.PacketBatch(data, base.offset, base.caplen, base.wirelen, base.ts_sec, base.ts_nsec,
                         base.linktype, base.number)


def address_words(g: np.ndarray, l3: np.ndarray, v4: np.ndarray, end: str) -> tuple[np.ndarray, np.ndarray]:
    """An address of every packet as two 64-bit words (the bytes in order, IPv4's 4 then zeros),
    a key flows can be sorted and hashed by. ``g``: (n, W) packet bytes; ``l3``: IP header start;
    ``end``: "src" or "dst"."""
    k = ("src", "dst").index(end)
    ip = header_bytes(g, l3)
    a4 = read_field_bytes(ip, ADDRESSES["ipv4"][k])
    a6 = read_field_bytes(ip, ADDRESSES["ipv6"][k])
    b = np.where(v4[:, None], np.pad(a4, ((0, 0), (0, a6.shape[1] - a4.shape[1]))), a6)
    words = np.ascontiguousarray(b, dtype=np.uint8).view(">u8").astype(np.uint64)
    return words[:, 0], words[:, 1]


_FLOW_MIX = np.random.default_rng(0x666C6F77).integers(1, 2 ** 63, size=7, dtype=np.uint64) | np.uint64(1)


def flow_keys(p: Parsed) -> np.ndarray:
    """(N,) int64 key of every parsed packet's bidirectional flow: a hash of the protocol and the
    unordered pair of (address, port) endpoints (ports of TCP/UDP only), the same in every batch
    (windows of one capture can be followed across). A packet that was not parsed
    (reason != 0) gets -1."""
    return flow_sides(p)[0]


def flow_sides(p: Parsed) -> tuple[np.ndarray, np.ndarray]:
    """``flow_keys`` and (N,) bool: the packet runs from the higher (address, port) endpoint of
    its flow to the lower one (the same for every packet of one direction)."""
    n = len(p.reason)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    g = p.window
    ok = p.reason == 0
    v4 = p.version == 4
    l3 = np.where(ok, p.l3, 0)
    sh, sl = address_words(g, l3, v4, "src")
    dh, dl = address_words(g, l3, v4, "dst")
    # proto is 0 where the packet was not parsed: those get no ports.
    tp = header_bytes(g, np.where(ok, p.l4, 0))
    sp, dp = (per_section(p.proto, PORTED_SECTIONS, lambda sec: read_field(tp, PORTS[sec][end]))
              .astype(np.uint64) for end in (0, 1))
    less = (sh < dh) | ((sh == dh) & ((sl < dl) | ((sl == dl) & (sp <= dp))))
    cols = [p.proto.astype(np.uint64),
            np.where(less, sh, dh), np.where(less, sl, dl), np.where(less, sp, dp),
            np.where(less, dh, sh), np.where(less, dl, sl), np.where(less, dp, sp)]
    with np.errstate(over="ignore"):
        h = np.zeros(n, dtype=np.uint64)
        for c, m in zip(cols, _FLOW_MIX):
            h = (h ^ c) * m
            h ^= h >> np.uint64(29)
    key = (h >> np.uint64(1)).astype(np.int64)        # non-negative
    key[~ok] = -1
    return key, ~less
