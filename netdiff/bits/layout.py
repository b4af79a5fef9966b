"""The one nPrint bit layout: sections, fields, widths, column names.

Everything that needs to know where a field lives (encoder, decoder, images, repair rules,
evaluation) derives it from ``SECTIONS`` below, so names and widths are defined once.

Conventions are nPrint 1.2.1's: a column is ``<field>_<i>`` with i = 0 the most significant bit,
bytes in wire order, sections always in the order eth, ipv4, ipv6, tcp, udp, icmp, payload.
Values are 1, 0 or the fill value (-1 by default) for "absent".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

# (field name, width in bits) per section, in wire order.
SECTIONS: dict[str, tuple[tuple[str, int], ...]] = {
    "eth": (("eth_dhost", 48), ("eth_shost", 48), ("eth_ethertype", 16)),
    "ipv4": (
        ("ipv4_ver", 4), ("ipv4_hl", 4), ("ipv4_tos", 8), ("ipv4_tl", 16), ("ipv4_id", 16),
        ("ipv4_rbit", 1), ("ipv4_dfbit", 1), ("ipv4_mfbit", 1), ("ipv4_foff", 13),
        ("ipv4_ttl", 8), ("ipv4_proto", 8), ("ipv4_cksum", 16), ("ipv4_src", 32),
        ("ipv4_dst", 32), ("ipv4_opt", 320),
    ),
    "ipv6": (
        ("ipv6_ver", 4), ("ipv6_tc", 8), ("ipv6_fl", 20), ("ipv6_len", 16), ("ipv6_nh", 8),
        ("ipv6_hl", 8), ("ipv6_src", 128), ("ipv6_dst", 128),
    ),
    "tcp": (
        ("tcp_sprt", 16), ("tcp_dprt", 16), ("tcp_seq", 32), ("tcp_ackn", 32), ("tcp_doff", 4),
        ("tcp_res", 3), ("tcp_ns", 1), ("tcp_cwr", 1), ("tcp_ece", 1), ("tcp_urg", 1),
        ("tcp_ackf", 1), ("tcp_psh", 1), ("tcp_rst", 1), ("tcp_syn", 1), ("tcp_fin", 1),
        ("tcp_wsize", 16), ("tcp_cksum", 16), ("tcp_urp", 16), ("tcp_opt", 320),
    ),
    "udp": (("udp_sport", 16), ("udp_dport", 16), ("udp_len", 16), ("udp_cksum", 16)),
    "icmp": (("icmp_type", 8), ("icmp_code", 8), ("icmp_cksum", 16), ("icmp_roh", 32)),
}
SECTION_ORDER = ("eth", "ipv4", "ipv6", "tcp", "udp", "icmp", "payload")
SECTION_BITS = {name: sum(w for _, w in fields) for name, fields in SECTIONS.items()}
assert SECTION_BITS == {"eth": 112, "ipv4": 480, "ipv6": 320, "tcp": 480, "udp": 64, "icmp": 64}
# Header bytes a section holds at most (the rest of its budget is fill).
SECTION_BYTES = {name: bits // 8 for name, bits in SECTION_BITS.items()}

ADDRESS_FIELDS = ("ipv4_src", "ipv4_dst", "ipv6_src", "ipv6_dst")


def field_table(sections: tuple[str, ...], payload_bytes: int = 0) -> list[tuple[str, str, int, int]]:
    """(section, field, first bit within the section, width) for the chosen sections, in order."""
    out = []
    for sec in SECTION_ORDER:
        if sec not in sections:
            continue
        if sec == "payload":
            if payload_bytes:
                out.append(("payload", "payload_bit", 0, 8 * payload_bytes))
            continue
        start = 0
        for name, width in SECTIONS[sec]:
            out.append((sec, name, start, width))
            start += width
    return out


@dataclass(frozen=True)
class Layout:
    """Which nPrint columns an array (or image) holds.

    ``sections`` are encoded in nPrint's order; ``drop`` removes whole fields (NetDiffusion drops
    the four address fields); ``payload_bytes`` is nPrint's ``-p``; ``height`` only matters for
    images (packets per image, padding rows are fill).
    """

    sections: tuple[str, ...] = ("ipv4", "ipv6", "tcp", "udp", "icmp")
    payload_bytes: int = 0
    drop: tuple[str, ...] = ()
    height: int = 1024
    name: str = field(default="custom", compare=False)

    def __post_init__(self):
        unknown = [s for s in self.sections if s not in SECTION_ORDER]
        if unknown:
            raise ValueError(f"unknown section(s) {unknown}; known: {', '.join(SECTION_ORDER)}")
        known_fields = {f for s in SECTIONS.values() for f, _ in s}
        bad = [f for f in self.drop if f not in known_fields]
        if bad:
            raise ValueError(f"unknown field(s) to drop: {bad}")
        if self.payload_bytes < 0 or self.height < 1:
            raise ValueError("payload_bytes must be >= 0 and height >= 1")
        # Canonical order whatever order the caller gave (nPrint does the same).
        ordered = tuple(s for s in SECTION_ORDER if s in self.sections)
        if self.payload_bytes and "payload" not in ordered:
            ordered = ordered + ("payload",)
        object.__setattr__(self, "sections", ordered)

    # --- full (all fields of the chosen sections) -------------------------------------------
    @cached_property
    def full_fields(self) -> list[tuple[str, str, int, int]]:
        return field_table(self.sections, self.payload_bytes)

    @cached_property
    def section_offsets(self) -> dict[str, tuple[int, int]]:
        """Section -> (first column, width) in the *full* matrix (before dropping fields)."""
        out, pos = {}, 0
        for sec in self.sections:
            width = 8 * self.payload_bytes if sec == "payload" else SECTION_BITS[sec]
            if width:
                out[sec] = (pos, width)
            pos += width
        return out

    @cached_property
    def section_bytes(self) -> dict[str, tuple[int, int]]:
        """Section -> (first byte, bytes) in the full matrix read as bytes (8 columns each)."""
        return {sec: (c0 // 8, width // 8) for sec, (c0, width) in self.section_offsets.items()}

    @cached_property
    def byte_map(self) -> tuple[tuple[str, int], ...]:
        """(section, byte within the section's header) of every byte of the full matrix."""
        return tuple((sec, j) for sec, (_, nbytes) in self.section_bytes.items() for j in range(nbytes))

    @cached_property
    def full_width(self) -> int:
        return sum(w for _, w in self.section_offsets.values())

    @cached_property
    def keep(self) -> np.ndarray:
        """Indices of the full matrix's columns that this layout keeps."""
        cols, pos = [], 0
        for sec, name, _, width in self.full_fields:
            if name not in self.drop:
                cols.extend(range(pos, pos + width))
            pos += width
        return np.asarray(cols, dtype=np.int64)

    # --- kept columns -------------------------------------------------------------------------
    @cached_property
    def columns(self) -> list[str]:
        names = []
        for _, name, _, width in self.full_fields:
            if name not in self.drop:
                names.extend(f"{name}_{i}" for i in range(width))
        return names

    @property
    def width(self) -> int:
        return len(self.keep)

    @cached_property
    def fields(self) -> dict[str, slice]:
        """Field name -> slice of columns in the kept matrix."""
        out, pos = {}, 0
        for _, name, _, width in self.full_fields:
            if name in self.drop:
                continue
            out[name] = slice(pos, pos + width)
            pos += width
        return out

    def to_dict(self) -> dict:
        return {"name": self.name, "sections": list(self.sections), "payload_bytes": self.payload_bytes,
                "drop": list(self.drop), "height": self.height}

    @classmethod
    def from_dict(cls, d: dict) -> "Layout":
        return cls(sections=tuple(d["sections"]), payload_bytes=int(d.get("payload_bytes", 0)),
                   drop=tuple(d.get("drop", ())), height=int(d.get("height", 1024)),
                   name=d.get("name", "custom"))


# Named layouts selectable from the CLI.
NETDIFFUSION = Layout(drop=ADDRESS_FIELDS, name="netdiffusion")      # 1088 columns
NPRINT = Layout(name="nprint")                                        # 1408 columns, with addresses


# Layouts by name: netdiffusion (default), nprint (with addresses), full (eth too). Readers that
# guess a layout from an image's width derive their table from these (netdiff.image.reader).
PRESETS = {
    "netdiffusion": dict(sections=("ipv4", "ipv6", "tcp", "udp", "icmp"), drop=ADDRESS_FIELDS),
    "nprint": dict(sections=("ipv4", "ipv6", "tcp", "udp", "icmp"), drop=()),
    "full": dict(sections=("eth", "ipv4", "ipv6", "tcp", "udp", "icmp"), drop=()),
}


def named_layout(name: str, payload_bytes: int = 0, height: int = 1024) -> Layout:
    """The preset layout ``name`` (see ``PRESETS``) with this payload and height."""
    if name not in PRESETS:
        raise ValueError(f"unknown layout {name!r}; choose one of {', '.join(PRESETS)}")
    return Layout(payload_bytes=payload_bytes, height=height, name=name, **PRESETS[name])


assert NETDIFFUSION.width == 1088 and NPRINT.width == 1408
