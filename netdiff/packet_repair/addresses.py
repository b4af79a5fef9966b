"""Addresses for generated flows: drawn from a pool (CIDRs or single addresses) the user gives,
private ranges by default, never an address a real host cannot have as a unicast endpoint."""
from __future__ import annotations

import ipaddress

import numpy as np

from netdiff.errors import NetdiffError

DEFAULT_POOL = "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fd00::/8"
DEFAULT_V6 = "fd00::/8"

_V4_FORBIDDEN = [ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4",
    "255.255.255.255/32")]
_V6_FORBIDDEN = [ipaddress.ip_network(n) for n in ("::/127", "ff00::/8", "fe80::/10", "::ffff:0:0/96")]


def parse_pool(spec: str | None) -> tuple[list, list]:
    """'10.1.0.0/16,192.168.3.7,fd00:1::/64' -> (IPv4 networks, IPv6 networks)."""
    spec = spec or DEFAULT_POOL
    v4, v6 = [], []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        try:
            net = ipaddress.ip_network(part, strict=False)
        except ValueError:
            raise NetdiffError(f"address pool: {part!r} is not an address or CIDR") from None
        forbidden = _V4_FORBIDDEN if net.version == 4 else _V6_FORBIDDEN
        if any(net.subnet_of(f) for f in forbidden if f.version == net.version):
            raise NetdiffError(f"address pool: {part} holds no usable unicast address "
                               "(multicast, loopback, link-local, 0.0.0.0 or broadcast)")
        (v4 if net.version == 4 else v6).append(net)
    if not v4 and not v6:
        raise NetdiffError("address pool is empty")
    if not v6:
        v6 = [ipaddress.ip_network(DEFAULT_V6)]
    if not v4:
        v4 = [ipaddress.ip_network("10.0.0.0/8")]
    return v4, v6


def usable(addr: ipaddress._BaseAddress, net) -> bool:
    forbidden = _V4_FORBIDDEN if addr.version == 4 else _V6_FORBIDDEN
    if any(addr in f for f in forbidden):
        return False
    if net.num_addresses > 2 and addr in (net.network_address, net.broadcast_address):
        return False
    return True


class AddressPool:
    """Distinct usable addresses, drawn deterministically from the pool with a seed (whole
    batches at once: a random image can have a thousand endpoints)."""

    def __init__(self, spec: str | None = None, seed: int = 0):
        self.v4, self.v6 = parse_pool(spec)
        self.rng = np.random.default_rng(seed)
        self.used: set = set()

    def draw(self, version: int, k: int = 1) -> np.ndarray:
        """(k, 16) uint8 addresses (IPv4 in the first 4 bytes), distinct and never used before."""
        nets = self.v4 if version == 4 else self.v6
        sizes = np.array([float(n.num_addresses) for n in nets])
        out: list[bytes] = []
        for _ in range(50):
            need = k - len(out)
            if need <= 0:
                break
            m = 2 * need + 8
            which = self.rng.choice(len(nets), size=m, p=sizes / sizes.sum())
            cand = np.zeros((m, 16), dtype=np.uint8)
            for j, net in enumerate(nets):
                sel = np.flatnonzero(which == j)
                if not len(sel):
                    continue
                span = net.num_addresses
                lo, hi = (1, span - 1) if span > 2 else (0, span)
                off = self.rng.integers(lo, min(hi, 1 << 62), size=len(sel), dtype=np.int64)
                base = int(net.network_address)
                if version == 4:
                    v = (base + off).astype(np.uint32)
                    cand[sel, :4] = v.astype(">u4").view(np.uint8).reshape(-1, 4)
                else:
                    high, low = base >> 64, base & ((1 << 64) - 1)
                    lowv = (np.uint64(low) + off.astype(np.uint64))
                    cand[sel, :8] = np.frombuffer(high.to_bytes(8, "big"), np.uint8)
                    cand[sel, 8:] = lowv.astype(">u8").view(np.uint8).reshape(-1, 8)
            ok = usable_many(cand, version)
            for row in cand[ok]:
                key = row.tobytes()
                if key not in self.used:
                    self.used.add(key)
                    out.append(key)
                    if len(out) == k:
                        break
        if len(out) < k:
            raise NetdiffError(f"address pool {', '.join(map(str, nets))} has too few usable "
                               f"addresses for {k} endpoints")
        return np.frombuffer(b"".join(out), dtype=np.uint8).reshape(k, 16).copy()


def usable_many(a: np.ndarray, version: int) -> np.ndarray:
    """Rows of (n, 16) addresses that a unicast endpoint may have."""
    if version == 4:
        b0, b1 = a[:, 0], a[:, 1]
        last = a[:, 3]
        return ~((b0 == 0) | (b0 == 127) | (b0 >= 224) | ((b0 == 169) & (b1 == 254)) |
                 (last == 0) | (last == 255))     # .0 / .255 avoided: network/broadcast in /24s
    zero_hi = np.all(a[:, :15] == 0, axis=1)
    mapped = np.all(a[:, :10] == 0, axis=1) & (a[:, 10] == 0xFF) & (a[:, 11] == 0xFF)
    return ~((a[:, 0] == 0xFF) | ((a[:, 0] == 0xFE) & ((a[:, 1] & 0xC0) == 0x80)) | zero_hi | mapped)


def legal_unicast(packed: bytes) -> bool:
    addr = ipaddress.ip_address(packed)
    forbidden = _V4_FORBIDDEN if addr.version == 4 else _V6_FORBIDDEN
    return not any(addr in f for f in forbidden)


def mac_for(addr: bytes) -> bytes:
    """A locally administered unicast MAC derived from an IP address (02:00 + last 4 bytes)."""
    return b"\x02\x00" + addr[-4:]
