"""Streaming pcap / pcapng reader and writer over numpy arrays.

The record walk is the only sequential part: it collects record offsets, then every header field
of a whole chunk is gathered at once. Packets come out as ``PacketBatch`` objects (one flat byte
buffer plus per-packet arrays), a few tens of thousands at a time, so memory stays flat whatever
the capture's size.
"""
from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from netdiff.errors import CaptureError
from netdiff.io.atomic import atomic_write_bytes

# Link types (https://www.tcpdump.org/linktypes.html).
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW_ALIASES = (12, 14, 101)   # DLT_RAW differs between OSes; 101 is LINKTYPE_RAW
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
LINKTYPE_SLIP = 8
LINKTYPE_PPP = 9
LINKTYPE_PPP_HDLC = 50          # PPP over serial (HDLC-like framing; Cisco HDLC frames occur too)
LINKTYPE_C_HDLC = 104
LINKTYPE_IEEE802_11 = 105
LINKTYPE_FRELAY = 107
LINKTYPE_RADIOTAP = 127
LINKTYPE_PPI = 192
# Every link type is read (nPrint reads them all); bits/codec.py knows where the IP header of
# each of these lies, and reads any other one the way nPrint does.

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BOM = 0x1A2B3C4D
MAX_CAPLEN = 262144          # libpcap's MAXIMUM_SNAPLEN: larger records mean a corrupt file
CHUNK_BYTES = 32 << 20
CHUNK_PACKETS = 65536


@dataclass
class PacketBatch:
    """Packets as arrays. ``data[offset[i]:offset[i] + caplen[i]]`` is packet i's bytes."""

    data: np.ndarray        # uint8, flat
    offset: np.ndarray      # int64
    caplen: np.ndarray      # int64
    wirelen: np.ndarray     # int64 (length on the wire)
    ts_sec: np.ndarray      # int64
    ts_nsec: np.ndarray     # int64, nanoseconds within the second
    linktype: np.ndarray    # int32
    number: np.ndarray      # int64, 0-based position of the packet in its file

    def __len__(self) -> int:
        return len(self.offset)

    def packet(self, i: int) -> bytes:
        o = int(self.offset[i])
        return self.data[o:o + int(self.caplen[i])].tobytes()

    def take(self, idx: np.ndarray) -> "PacketBatch":
        """A batch of the selected packets (the byte buffer is shared)."""
        return PacketBatch(self.data, self.offset[idx], self.caplen[idx], self.wirelen[idx],
                           self.ts_sec[idx], self.ts_nsec[idx], self.linktype[idx], self.number[idx])

    @classmethod
    def from_packets(cls, packets: list[bytes], ts_sec=None, ts_nsec=None, linktype=LINKTYPE_ETHERNET,
                     wirelen=None, first_number: int = 0) -> "PacketBatch":
        n = len(packets)
        lens = np.fromiter((len(p) for p in packets), dtype=np.int64, count=n)
        offset = np.zeros(n, dtype=np.int64)
        if n:
            offset[1:] = np.cumsum(lens)[:-1]
        data = np.frombuffer(b"".join(packets), dtype=np.uint8) if n else np.zeros(0, np.uint8)
        z = np.zeros(n, dtype=np.int64)
        lt = np.broadcast_to(np.asarray(linktype, dtype=np.int32), (n,)).copy()
        return cls(data, offset, lens, lens.copy() if wirelen is None else np.asarray(wirelen, np.int64),
                   z.copy() if ts_sec is None else np.asarray(ts_sec, np.int64),
                   z.copy() if ts_nsec is None else np.asarray(ts_nsec, np.int64),
                   lt, np.arange(first_number, first_number + n, dtype=np.int64))

    @staticmethod
    def concat(batches: list["PacketBatch"]) -> "PacketBatch":
        if not batches:
            return PacketBatch.from_packets([])
        if len(batches) == 1:
            return batches[0]
        bases = np.cumsum([0] + [len(b.data) for b in batches[:-1]])
        return PacketBatch(
            np.concatenate([b.data for b in batches]),
            np.concatenate([b.offset + base for b, base in zip(batches, bases)]),
            *(np.concatenate([getattr(b, f) for b in batches])
              for f in ("caplen", "wirelen", "ts_sec", "ts_nsec", "linktype", "number")))


@dataclass
class CaptureInfo:
    """What the reader learnt about a file, including everything it had to skip and why."""

    path: str
    format: str = ""
    ts_precision: str = "us"
    snaplen: int = 0
    packets: int = 0
    linktypes: set = field(default_factory=set)
    problems: Counter = field(default_factory=Counter)   # problem -> count (records read past it)
    stopped: str | None = None                           # why reading ended early, if it did


def _gather(buf: np.ndarray, pos: np.ndarray, width: int) -> np.ndarray:
    return buf[pos[:, None] + np.arange(width)]


class CaptureReader:
    """Iterate over a pcap or pcapng file in ``PacketBatch`` chunks.

    Files that cannot be read at all raise ``CaptureError``; damage after the start (a truncated
    last record, a corrupt length) stops the walk, keeps every good packet before it and is
    reported in ``info.stopped`` / ``info.problems``.
    """

    def __init__(self, path, chunk_bytes: int = CHUNK_BYTES):
        self.path = Path(path)
        self.chunk_bytes = chunk_bytes
        self.info = CaptureInfo(str(path))
        if not self.path.exists():
            raise CaptureError(path, "no such file")
        if self.path.is_dir():
            raise CaptureError(path, "is a directory, not a capture file")
        size = self.path.stat().st_size
        if size == 0:
            raise CaptureError(path, "empty file (0 bytes), not a pcap or pcapng capture")
        with open(self.path, "rb") as f:
            head = f.read(24)
        if len(head) < 4:
            raise CaptureError(path, f"file too short ({len(head)} bytes) for a capture header")
        magic_le, magic_be = struct.unpack("<I", head[:4])[0], struct.unpack(">I", head[:4])[0]
        if magic_le == PCAPNG_SHB:
            self.info.format = "pcapng"
        elif magic_le in (PCAP_MAGIC_US, PCAP_MAGIC_NS) or magic_be in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            self.info.format = "pcap"
            if len(head) < 24:
                raise CaptureError(path, f"truncated pcap file header ({len(head)} of 24 bytes)")
            self._endian = "<" if magic_le in (PCAP_MAGIC_US, PCAP_MAGIC_NS) else ">"
            magic, vmaj, vmin, _, _, snaplen, network = struct.unpack(self._endian + "IHHiIII", head)
            self.info.ts_precision = "ns" if magic == PCAP_MAGIC_NS else "us"
            self.info.snaplen = snaplen
            # The upper bits of the link-type field can carry FCS information (pcap spec).
            self._linktype = network & 0x0FFFFFFF
            self.info.linktypes.add(self._linktype)
        else:
            raise CaptureError(path, f"not a pcap or pcapng file (magic 0x{magic_be:08x})")

    def __iter__(self) -> Iterator[PacketBatch]:
        if self.info.format == "pcap":
            yield from self._iter_pcap()
        else:
            yield from self._iter_pcapng()

    # --- classic pcap ---------------------------------------------------------------------------
    def _iter_pcap(self) -> Iterator[PacketBatch]:
        endian = self._endian
        u32 = struct.Struct(endian + "I").unpack_from
        maxcap = max(self.info.snaplen, MAX_CAPLEN)
        ns = self.info.ts_precision == "ns"
        number = 0
        with open(self.path, "rb") as f:
            f.seek(24)
            pending = b""
            eof = False
            while not eof:
                chunk = f.read(self.chunk_bytes)
                eof = len(chunk) < self.chunk_bytes
                buf = pending + chunk if pending else chunk
                n = len(buf)
                pos, offs, corrupt = 0, [], None
                append = offs.append
                while pos + 16 <= n:
                    incl = u32(buf, pos + 8)[0]
                    if incl > maxcap:
                        corrupt = (f"corrupt record {number + len(offs)}: captured length {incl} "
                                   f"exceeds the snapshot length {self.info.snaplen}")
                        break
                    end = pos + 16 + incl
                    if end > n:
                        break
                    append(pos)
                    pos = end
                if offs:
                    batch = self._pcap_batch(buf, np.asarray(offs, dtype=np.int64), endian, ns, number)
                    number += len(offs)
                    yield from self._split(batch)
                if corrupt:
                    self.info.stopped = corrupt
                    return
                pending = buf[pos:]
                if eof and pending:
                    if len(pending) < 16:
                        self.info.stopped = (f"truncated record header after packet {number} "
                                             f"({len(pending)} of 16 bytes)")
                    else:
                        incl = u32(pending, 8)[0]
                        self.info.stopped = (f"truncated packet {number}: {len(pending) - 16} of "
                                             f"{incl} captured bytes present")
                # A record larger than a chunk: keep reading until it fits.
                if not offs and not eof and len(pending) >= 16:
                    need = 16 + u32(pending, 8)[0]
                    if need > self.chunk_bytes:
                        pending += f.read(need - len(pending))
        self.info.packets = number

    def _pcap_batch(self, buf: bytes, offs: np.ndarray, endian: str, ns: bool, first: int) -> PacketBatch:
        arr = np.frombuffer(buf, dtype=np.uint8)
        hdr = _gather(arr, offs, 16).copy().view(endian + "u4").astype(np.int64)
        caplen, wirelen = hdr[:, 2], hdr[:, 3]
        frac = hdr[:, 1] if ns else hdr[:, 1] * 1000
        bad = caplen > self.info.snaplen
        if bad.any() and self.info.snaplen:
            self.info.problems["captured length larger than the file's snapshot length"] += int(bad.sum())
        short = wirelen < caplen
        if short.any():
            self.info.problems["length on the wire smaller than the captured length"] += int(short.sum())
            wirelen = np.maximum(wirelen, caplen)
        n = len(offs)
        self.info.packets = first + n
        return PacketBatch(arr, offs + 16, caplen, wirelen, hdr[:, 0], frac,
                           np.full(n, self._linktype, dtype=np.int32),
                           np.arange(first, first + n, dtype=np.int64))

    @staticmethod
    def _split(batch: PacketBatch) -> Iterator[PacketBatch]:
        n = len(batch)
        if n <= CHUNK_PACKETS:
            yield batch
            return
        for s in range(0, n, CHUNK_PACKETS):
            yield batch.take(np.arange(s, min(n, s + CHUNK_PACKETS)))

    # --- pcapng ---------------------------------------------------------------------------------
    def _iter_pcapng(self) -> Iterator[PacketBatch]:
        number = 0
        ifaces: list[tuple[int, int, int, int]] = []   # (linktype, units per second, is_pow2, snaplen)
        endian = "<"
        with open(self.path, "rb") as f:
            pending = b""
            eof = False
            while not eof:
                chunk = f.read(self.chunk_bytes)
                eof = len(chunk) < self.chunk_bytes
                buf = pending + chunk if pending else chunk
                n = len(buf)
                pos = 0
                rows: list[tuple] = []     # (data pos, caplen, wirelen, ts units, iface)
                stop = None
                while pos + 12 <= n:
                    btype = struct.unpack_from(endian + "I", buf, pos)[0]
                    if btype == PCAPNG_SHB:
                        bom = struct.unpack_from("<I", buf, pos + 8)[0]
                        if bom == PCAPNG_BOM:
                            endian = "<"
                        elif struct.unpack_from(">I", buf, pos + 8)[0] == PCAPNG_BOM:
                            endian = ">"
                        else:
                            stop = f"corrupt section header block at byte offset {pos}"
                            break
                    blen = struct.unpack_from(endian + "I", buf, pos + 4)[0]
                    if blen < 12 or blen % 4 or blen > MAX_CAPLEN + 4096:
                        stop = f"corrupt pcapng block at packet {number + len(rows)} (block length {blen})"
                        break
                    if pos + blen > n:
                        break
                    if btype == PCAPNG_SHB:
                        ifaces = []
                    elif btype == 1:   # interface description
                        lt, _, snap = struct.unpack_from(endian + "HHI", buf, pos + 8)
                        ups, pow2 = self._tsresol(buf, pos + 16, pos + blen - 4, endian)
                        ifaces.append((lt, ups, pow2, snap))
                        self.info.linktypes.add(lt)
                        if ups != 1_000_000:
                            self.info.ts_precision = "ns"
                    elif btype in (6, 2):  # enhanced packet / obsolete packet block
                        if btype == 6:
                            iface, hi, lo, cap, wire = struct.unpack_from(endian + "IIIII", buf, pos + 8)
                        else:
                            iface, _, hi, lo, cap, wire = struct.unpack_from(endian + "HHIIII", buf, pos + 8)
                        if iface >= len(ifaces):
                            stop = f"packet {number + len(rows)} names interface {iface}, which is not described"
                            break
                        if 28 + cap > blen:
                            stop = f"corrupt packet {number + len(rows)}: captured length {cap} exceeds its block"
                            break
                        rows.append((pos + 28, cap, wire, (hi << 32) | lo, iface))
                    elif btype == 3:   # simple packet block: interface 0, no timestamp
                        if not ifaces:
                            stop = "simple packet block before any interface description"
                            break
                        wire = struct.unpack_from(endian + "I", buf, pos + 8)[0]
                        cap = min(wire, blen - 16, ifaces[0][3] or wire)
                        rows.append((pos + 12, cap, wire, 0, 0))
                    pos += blen
                if rows:
                    batch = self._pcapng_batch(buf, rows, ifaces, number)
                    number += len(rows)
                    yield from self._split(batch)
                if stop:
                    self.info.stopped = stop
                    break
                pending = buf[pos:]
                if eof and pending:
                    self.info.stopped = f"truncated block after packet {number} ({len(pending)} bytes left)"
                if not rows and not eof and len(pending) >= 8:
                    need = struct.unpack_from(endian + "I", pending, 4)[0]
                    if need > self.chunk_bytes:
                        pending += f.read(need - len(pending))
        self.info.packets = number
        if number == 0 and not ifaces and self.info.stopped:
            raise CaptureError(self.path, self.info.stopped)

    @staticmethod
    def _tsresol(buf: bytes, start: int, end: int, endian: str) -> tuple[int, int]:
        """Units per second from the if_tsresol option (default microseconds)."""
        pos = start
        while pos + 4 <= end:
            code, length = struct.unpack_from(endian + "HH", buf, pos)
            if code == 0:
                break
            if code == 9 and length >= 1:
                v = buf[pos + 4]
                return (1 << (v & 0x7F), 1) if v & 0x80 else (10 ** v, 0)
            pos += 4 + ((length + 3) & ~3)
        return 1_000_000, 0

    def _pcapng_batch(self, buf: bytes, rows: list[tuple], ifaces, first: int) -> PacketBatch:
        arr = np.frombuffer(buf, dtype=np.uint8)
        pos, cap, wire, ts, iface = (np.asarray(c) for c in zip(*rows))
        lt = np.asarray([i[0] for i in ifaces], dtype=np.int32)[iface]
        sec = np.empty(len(rows), dtype=np.int64)
        nsec = np.empty(len(rows), dtype=np.int64)
        for k, (_, ups, pow2, _) in enumerate(ifaces):
            m = iface == k
            if not m.any():
                continue
            t = ts[m].astype(np.uint64)
            s, r = t // np.uint64(ups), t % np.uint64(ups)
            sec[m] = s.astype(np.int64)
            if ups <= 10 ** 9 and 10 ** 9 % ups == 0:
                nsec[m] = (r * np.uint64(10 ** 9 // ups)).astype(np.int64)
            else:   # binary or sub-nanosecond resolution: exact integer maths in Python
                nsec[m] = [int(x) * 10 ** 9 // ups for x in r]
        wire = np.maximum(wire.astype(np.int64), cap.astype(np.int64))
        self.info.packets = first + len(rows)
        return PacketBatch(arr, pos.astype(np.int64), cap.astype(np.int64), wire, sec, nsec, lt,
                           np.arange(first, first + len(rows), dtype=np.int64))


def read_capture(path) -> tuple[PacketBatch, CaptureInfo]:
    """The whole capture in one batch (for captures that fit in memory)."""
    reader = CaptureReader(path)
    batch = PacketBatch.concat(list(reader))
    return batch, reader.info


# --- writing ------------------------------------------------------------------------------------

def write_pcap(path, batch: PacketBatch, nanosecond: bool = True, snaplen: int = MAX_CAPLEN) -> None:
    """Write packets atomically: pcap when they share one link type, pcapng otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, encode_pcap(batch, nanosecond, snaplen) if len(np.unique(batch.linktype)) <= 1
                       else encode_pcapng(batch))


def encode_pcap(batch: PacketBatch, nanosecond: bool = True, snaplen: int = MAX_CAPLEN) -> bytes:
    n = len(batch)
    linktype = int(batch.linktype[0]) if n else LINKTYPE_ETHERNET
    head = struct.pack("<IHHiIII", PCAP_MAGIC_NS if nanosecond else PCAP_MAGIC_US, 2, 4, 0, 0,
                       max(snaplen, int(batch.caplen.max()) if n else 0), linktype)
    if not n:
        return head
    frac = batch.ts_nsec if nanosecond else batch.ts_nsec // 1000
    hdr = np.stack([batch.ts_sec, frac, batch.caplen, batch.wirelen], axis=1).astype("<u4")
    total = int(batch.caplen.sum())
    starts = np.zeros(n, dtype=np.int64)
    starts[1:] = np.cumsum(batch.caplen)[:-1]
    if np.array_equal(batch.offset, starts) and len(batch.data) == total:
        # Packets lie back to back (the usual case after decoding): interleave the record
        # headers with two masked copies instead of a per-packet loop.
        out = np.empty(total + 16 * n, dtype=np.uint8)
        is_hdr = np.zeros(len(out), dtype=bool)
        is_hdr[(starts + 16 * np.arange(n))[:, None] + np.arange(16)] = True
        out[is_hdr] = hdr.view(np.uint8).reshape(-1)
        out[~is_hdr] = batch.data
        return head + out.tobytes()
    raw = hdr.tobytes()
    data = memoryview(batch.data)
    parts = [head]
    for i, (o, c) in enumerate(zip(batch.offset.tolist(), batch.caplen.tolist())):
        parts.append(raw[16 * i:16 * i + 16])
        parts.append(data[o:o + c])
    return b"".join(parts)


def encode_pcapng(batch: PacketBatch) -> bytes:
    """pcapng with one interface per link type, nanosecond timestamps."""
    parts = [struct.pack("<IIIHHqI", PCAPNG_SHB, 28, PCAPNG_BOM, 1, 0, -1, 28)]
    lts = [int(x) for x in np.unique(batch.linktype)]
    for lt in lts:
        opt = struct.pack("<HHB3x", 9, 1, 9) + struct.pack("<HH", 0, 0)
        blen = 20 + len(opt)
        parts.append(struct.pack("<IIHHI", 1, blen, lt, 0, 0) + opt + struct.pack("<I", blen))
    ifidx = {lt: i for i, lt in enumerate(lts)}
    for i in range(len(batch)):
        data = batch.packet(i)
        pad = (-len(data)) % 4
        blen = 32 + len(data) + pad
        ts = int(batch.ts_sec[i]) * 10 ** 9 + int(batch.ts_nsec[i])
        parts.append(struct.pack("<IIIIIII", 6, blen, ifidx[int(batch.linktype[i])], ts >> 32,
                                 ts & 0xFFFFFFFF, len(data), int(batch.wirelen[i]))
                     + data + b"\0" * pad + struct.pack("<I", blen))
    return b"".join(parts)
