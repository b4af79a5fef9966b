"""pcap -> images (+ sidecars) and images -> pcap: the functions behind pcap2img and img2pcap."""
from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from netdiff.image import sidecar as sc
from netdiff.bits.codec import (SKIP_REASONS, Parsed, decapsulated_counts, kept_bytes, encode,
                                flow_keys, flow_sides, overlay, overlay_bytes)
from netdiff.bits.layout import Layout, NETDIFFUSION
from netdiff.errors import CaptureError, ImageError, NetdiffError
from netdiff.image.codec import pad_rows, read_png_bits, read_png_bytes, write_png
from netdiff.io.pcap import CaptureReader, PacketBatch, write_pcap

CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap", ".dmp")
GROUPINGS = ("file", "flow", "window")
TIMING_FILE = "timing.json"     # per-class inter-arrival model written next to the images
PRIORS_FILE = "field_priors.json"   # per-class header field distributions, beside timing.json


@dataclass
class ConvertSummary:
    files: int = 0
    images: int = 0
    packets_read: int = 0
    rows: int = 0
    skipped: Counter = field(default_factory=Counter)
    decapsulated: Counter = field(default_factory=Counter)   # encapsulation -> packets unwrapped
    errors: list[str] = field(default_factory=list)     # one line per file that failed
    notes: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    gaps: dict = field(default_factory=dict)             # class -> [inter-arrival seconds arrays]
    gap_kinds: dict = field(default_factory=dict)        # class -> [their kinds, timing.gap_kinds]
    short_gaps: dict = field(default_factory=dict)       # class -> [timing.short_flow_offsets of a block]
    priors: object = None                                # PriorsLearner fed with every image
    classes: set = field(default_factory=set)            # classes that got at least one image

    def to_dict(self) -> dict:
        return {"files": self.files, "images": self.images, "packets_read": self.packets_read,
                "rows": self.rows, "skipped": dict(self.skipped),
                "decapsulated": dict(self.decapsulated), "errors": self.errors, "notes": self.notes}


def find_captures(inp: Path, cls: str | None = None) -> list[tuple[Path, str]]:
    """(capture, class) pairs: a single file, or DIR/<class>/*.pcap, or DIR/*.pcap."""
    inp = Path(inp)
    if not inp.exists():
        raise NetdiffError(f"{inp}: no such file or directory")
    if inp.is_file():
        return [(inp, cls or inp.parent.name or "default")]
    found = []
    for f in sorted(inp.rglob("*")):
        if f.is_file() and f.suffix.lower() in CAPTURE_SUFFIXES:
            found.append((f, cls or (f.parent.name if f.parent != inp else inp.name)))
    if not found:
        raise NetdiffError(f"{inp}: no capture files (*.pcap, *.pcapng) in this directory")
    return found


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class _Rows:
    """Encoded packets waiting to be cut into images."""

    bits: np.ndarray
    batch: PacketBatch
    residual: np.ndarray
    l3: np.ndarray
    flow: np.ndarray        # flow key of every packet (codec.flow_keys): for the timing model
    side: np.ndarray        # and which way it runs in that flow (codec.flow_sides)

    @staticmethod
    def concat(parts: list["_Rows"]) -> "_Rows":
        if len(parts) == 1:
            return parts[0]
        return _Rows(np.concatenate([p.bits for p in parts]), PacketBatch.concat([p.batch for p in parts]),
                     np.concatenate([p.residual for p in parts]), np.concatenate([p.l3 for p in parts]),
                     np.concatenate([p.flow for p in parts]), np.concatenate([p.side for p in parts]))

    def split(self, n: int) -> tuple["_Rows", "_Rows"]:
        cut = int(self.batch.caplen[:n].sum())
        idx_a, idx_b = np.arange(n), np.arange(n, len(self.batch))
        return (_Rows(self.bits[:n], self.batch.take(idx_a), self.residual[:cut], self.l3[:n], self.flow[:n],
                      self.side[:n]),
                _Rows(self.bits[n:], self.batch.take(idx_b), self.residual[cut:], self.l3[n:], self.flow[n:],
                      self.side[n:]))

    def take(self, idx: np.ndarray) -> "_Rows":
        starts = np.zeros(len(self.batch), dtype=np.int64)
        if len(self.batch):
            starts[1:] = np.cumsum(self.batch.caplen)[:-1]
        cap = self.batch.caplen[idx]
        k = np.arange(int(cap.sum()), dtype=np.int64)
        src = np.repeat(starts[idx] - np.concatenate([[0], np.cumsum(cap)[:-1]]), cap) + k
        return _Rows(self.bits[idx], self.batch.take(idx), self.residual[src], self.l3[idx], self.flow[idx],
                     self.side[idx])


def _encode_chunk(batch: PacketBatch, layout: Layout, keep_payload: bool) -> tuple[_Rows, Parsed]:
    bits, p = encode(batch, layout)
    ok = np.flatnonzero(p.reason == 0)
    res = sc.residual_bytes(batch, p, layout, keep_payload)
    key, side = flow_sides(p)
    return _Rows(bits, batch.take(ok), res, p.l3[ok], key[ok], side[ok]), p


def flow_labels(batch: PacketBatch, p: Parsed) -> np.ndarray:
    """Bidirectional 5-tuple label (0..F-1, in order of first packet) of every encodable packet."""
    _, first, inverse = np.unique(flow_keys(p)[p.reason == 0], return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))   # relabel flows by first appearance
    return order[inverse.reshape(-1)]


def pcap2img(inp, out_dir, *, layout: Layout = NETDIFFUSION, cls: str | None = None,
             group: str = "file", window: int | None = None, keep_payload: bool = True,
             max_images: int | None = None, min_packets: int = 1,
             progress: Callable[[str], None] | None = None) -> ConvertSummary:
    """Convert a capture or a directory of ``<class>/*.pcap`` into images with sidecars."""
    if group not in GROUPINGS:
        raise NetdiffError(f"unknown grouping {group!r}; choose one of {', '.join(GROUPINGS)}")
    per_image = layout.height
    if group == "window":
        if not window or window < 1:
            raise NetdiffError("--group window needs --window N (packets per image, N >= 1)")
        if window > layout.height:
            raise NetdiffError(f"--window {window} is larger than the image height {layout.height}")
        per_image = window
    out_dir = Path(out_dir)
    summary = ConvertSummary()
    from netdiff.packet_repair.priors import PriorsLearner
    summary.priors = PriorsLearner()
    for path, klass in find_captures(Path(inp), cls):
        try:
            _convert_one(path, klass, out_dir, layout, group, per_image, keep_payload, max_images,
                         min_packets, summary)
            summary.files += 1
        except (CaptureError, NetdiffError) as e:
            summary.errors.append(str(e))
        except OSError as e:
            summary.errors.append(f"{path}: {e.strerror or e}")
        if progress:
            progress(str(path))
    _learn_timing(summary, out_dir)
    if summary.priors.packets:
        # Header field distributions per class (no address, no packet), for repair's --priors.
        summary.priors.result().save(out_dir / PRIORS_FILE)
    return summary


def _learn_timing(summary: ConvertSummary, out_dir: Path) -> None:
    """Inter-arrival times per class, for repairing generated images of this dataset. A class
    whose images hold one packet each (or whose clock never moves forward) has none: its images
    are still written, and the summary says img2pcap will stamp it with the default gaps."""
    from netdiff.packet_repair import TimingModel

    learned: set = set()
    if summary.gaps:
        try:
            model = TimingModel.learn(summary.gaps, summary.gap_kinds, summary.short_gaps)
        except NetdiffError:
            model = None
        if model is not None:
            model.save(out_dir / TIMING_FILE)
            learned = set(model.classes)
    missing = sorted(summary.classes - learned)
    if missing:
        summary.notes.append(
            f"no timing model learned for class {', '.join(missing)}: no inter-arrival times "
            "(one packet per image, or timestamps that never increase); img2pcap stamps its "
            "packets with the default gaps" + ("" if learned else f"; {TIMING_FILE} not written"))


def _convert_one(path: Path, klass: str, out_dir: Path, layout: Layout, group: str, per_image: int,
                 keep_payload: bool, max_images: int | None, min_packets: int,
                 summary: ConvertSummary) -> None:
    from netdiff.packet_repair.timing import SHORT_BLOCK, gap_kinds, short_flow_offsets

    reader = CaptureReader(path)
    source = {"path": str(path), "name": path.name, "sha256": _sha256(path),
              "format": reader.info.format}
    dest = out_dir / klass
    made = 0
    skipped_pending: list[tuple[int, str]] = []
    flows_seen: set = set()          # windows follow each other: a flow goes on across their edges
    block: list[tuple] = []          # (flow, side, ns) of packets in capture order, not yet learnt

    def learn_short(flow, side, ns, final: bool) -> None:
        # short flows are judged in blocks of the capture, whatever the image height
        block.append((flow, side, ns))
        f, sd, t = (np.concatenate(c) for c in zip(*block))
        block.clear()
        while len(f) >= SHORT_BLOCK or (final and len(f) > 1):
            cut = min(SHORT_BLOCK, len(f))
            got = short_flow_offsets(f[:cut], sd[:cut], t[:cut])
            if len(got):
                summary.short_gaps.setdefault(klass, []).append(got)
            f, sd, t = f[cut:], sd[cut:], t[cut:]
        if len(f):
            block.append((f, sd, t))

    def emit(rows: _Rows, tag: str, k: int, extra: dict) -> bool:
        nonlocal made, skipped_pending
        if max_images is not None and made >= max_images:
            return False
        png = dest / f"{path.stem}{tag}_{k:04d}.png"
        write_png(png, pad_rows(rows.bits, layout.height),
                  text={"netdiff:class": klass, "netdiff:layout": layout.name})
        doc = sc.build(layout=layout, cls=klass, source=source, group={"mode": group, **extra, "index": k},
                       batch=rows.batch, residual=rows.residual, l3=rows.l3, skipped=skipped_pending,
                       keep_payload=keep_payload, ts_precision=reader.info.ts_precision)
        sc.write(sc.sidecar_path(png), doc)
        skipped_pending = []
        if group in ("file", "window"):
            learn_short(rows.flow, rows.side,
                        rows.batch.ts_sec.astype(np.int64) * 1_000_000_000 + rows.batch.ts_nsec, final=False)
        if len(rows.batch) > 1:
            t = rows.batch.ts_sec * 1_000_000_000 + rows.batch.ts_nsec
            summary.gaps.setdefault(klass, []).append(np.diff(t) / 1e9)
            summary.gap_kinds.setdefault(klass, []).append(
                gap_kinds(rows.flow, flows_seen, sides=rows.side))
        if summary.priors is not None:
            summary.priors.add(klass, rows.batch, start=k == 0 or group == "flow")
        made += 1
        summary.classes.add(klass)
        summary.images += 1
        summary.rows += len(rows.batch)
        summary.outputs.append(str(png))
        return True

    def note_skips(batch: PacketBatch, p: Parsed) -> None:
        bad = np.flatnonzero(p.reason > 0)
        skipped_pending.extend(zip(batch.number[bad].tolist(), (SKIP_REASONS[c] for c in p.reason[bad])))
        for c in p.reason[bad]:
            summary.skipped[SKIP_REASONS[c]] += 1
        summary.decapsulated += decapsulated_counts(p)

    if group in ("file", "window"):
        pending: list[_Rows] = []
        have = 0
        k = 0
        for batch in reader:
            summary.packets_read += len(batch)
            rows, p = _encode_chunk(batch, layout, keep_payload)
            note_skips(batch, p)
            pending.append(rows)
            have += len(rows.batch)
            if have >= per_image:
                allrows = _Rows.concat(pending)
                while len(allrows.batch) >= per_image:
                    head, allrows = allrows.split(per_image)
                    if not emit(head, "", k, {}):
                        break
                    k += 1
                pending, have = [allrows], len(allrows.batch)
            if max_images is not None and made >= max_images:
                break
        rest = _Rows.concat(pending) if pending else None
        if rest is not None and len(rest.batch):
            emit(rest, "", k, {})
        if block:
            learn_short(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int64),
                        final=True)
    else:
        batches = list(reader)
        batch = PacketBatch.concat(batches)
        summary.packets_read += len(batch)
        rows, p = _encode_chunk(batch, layout, keep_payload)
        note_skips(batch, p)
        labels = flow_labels(batch, p)
        if len(batch) > 1:      # images hold one flow each: short flows are learnt in capture order
            learn_short(rows.flow, rows.side, batch.ts_sec.astype(np.int64) * 1_000_000_000 + batch.ts_nsec,
                        final=True)
        order = np.argsort(labels, kind="stable")
        bounds = np.flatnonzero(np.diff(labels[order])) + 1
        for f, idx in enumerate(np.split(order, bounds)):
            if len(idx) < min_packets:
                continue
            flow = rows.take(idx)
            for k in range(0, len(idx), per_image):
                if not emit(flow.take(np.arange(k, min(len(idx), k + per_image))), f"_flow{f:05d}",
                            k // per_image, {"flow": f}):
                    break
    if reader.info.stopped:
        summary.notes.append(f"{path}: read stopped early: {reader.info.stopped}")
    for prob, n in reader.info.problems.items():
        summary.notes.append(f"{path}: {n} packets with {prob}")
    if made == 0:
        summary.notes.append(f"{path}: no IPv4/IPv6 TCP/UDP/ICMP packets, no image written")


# --- images -> pcap -----------------------------------------------------------------------------

def find_images(inp: Path) -> list[Path]:
    inp = Path(inp)
    if not inp.exists():
        raise NetdiffError(f"{inp}: no such file or directory")
    if inp.is_file():
        return [inp]
    found = sorted(f for f in inp.rglob("*.png") if not f.name.startswith("."))
    if not found:
        raise NetdiffError(f"{inp}: no PNG images in this directory")
    return found


@dataclass
class ImageResult:
    png: str
    pcap: str
    mode: str            # "exact" or "repair"
    packets: int
    notes: list[str] = field(default_factory=list)


def img2pcap(png, out, *, strict: bool = False, seed: int = 0, address_pool: str | None = None,
             timing=None, layout: Layout | None = None, priors=None) -> ImageResult:
    """One image -> one pcap: exact when its sidecar describes a converted capture, else repair.

    ``priors``: class field distributions (``field_priors.json`` written by pcap2img: a path, its
    loaded JSON or a ``FieldPriors``); repair then replaces values the image's class never shows.
    """
    png, out = Path(png), Path(out)
    side = sc.sidecar_path(png)
    if side.exists():
        doc = sc.read(side)
        if sc.is_converted_capture(doc):
            return _exact(png, out, doc)
    if priors is not None and not hasattr(priors, "for_class"):
        from netdiff.packet_repair.priors import FieldPriors
        priors = FieldPriors.coerce(priors)
    return _repaired(png, out, strict=strict, seed=seed, address_pool=address_pool, timing=timing,
                     layout=layout, doc=sc.read(side) if side.exists() else None, priors=priors)


def _class_of(png: Path, doc: dict | None) -> str:
    """The sidecar's class, else the one netdiff generate wrote into the PNG, else the folder name."""
    if doc and doc.get("class"):
        return doc["class"]
    from netdiff.image.png import text_chunks

    try:
        with open(png, "rb") as f:
            head = f.read(4096)            # the text chunks come before the image data
    except OSError:
        head = b""
    return text_chunks(head).get("netdiff:class") or png.parent.name


def _exact(png: Path, out: Path, doc: dict) -> ImageResult:
    try:
        layout = Layout.from_dict(doc["layout"])
        rows = int(doc["rows"])
    except (KeyError, TypeError, ValueError) as e:
        raise ImageError(png, f"sidecar has no valid layout ({e})") from None
    if rows > layout.height:
        raise ImageError(png, f"sidecar lists {rows} packets but the image has {layout.height} rows")
    notes = []
    if kept_bytes(layout) is not None:
        # byte-aligned layout: straight from the packed pixels to header bytes
        vals, covered, blank = read_png_bytes(png, width=layout.width, height=layout.height)
        base, l3 = sc.base_batch(doc, png)
        batch = overlay_bytes(base, vals[:rows], covered[:rows], layout, l3)
    else:
        bits = read_png_bits(png, width=layout.width, height=layout.height)
        blank = (bits == -1).all(axis=1)
        base, l3 = sc.base_batch(doc, png)
        batch = overlay(base, bits[:rows], layout, l3, fill=-1)
    if not blank[rows:].all():
        notes.append(f"{int((~blank[rows:]).sum())} padding rows hold bits; ignored")
    write_pcap(out, batch, nanosecond=doc.get("ts_precision") == "ns")
    return ImageResult(str(png), str(out), "exact", len(batch), notes)


def _repaired(png: Path, out: Path, *, strict, seed, address_pool, timing, layout, doc,
              priors=None) -> ImageResult:
    from netdiff.image.reader import read_image
    from netdiff.packet_repair import repair

    # --strict repairs nothing it would have to guess at: palette colours only, no resampling.
    got = read_image(png, layout, mode="exact" if strict else "nearest",
                     fit="shape" if strict else "resize", sidecar=doc or {})
    bits, layout, notes = got.bits, got.layout, got.notes
    result = repair(bits, layout, seed=seed, address_pool=address_pool, timing=timing, strict=strict,
                    klass=_class_of(png, doc), priors=priors)
    write_pcap(out, result.batch, nanosecond=True)
    if isinstance(result.report.get("priors"), str):
        notes.append(result.report["priors"])
    return ImageResult(str(png), str(out), "repair", len(result.batch), list(notes))


def img2pcap_many(inp, out, **kw) -> Iterator[ImageResult | str]:
    """img2pcap over a PNG or a directory (mirrored under ``out``); yields results or error lines."""
    inp, out = Path(inp), Path(out)
    if kw.get("priors") is not None:        # read the file once, not once per image
        from netdiff.packet_repair.priors import FieldPriors
        kw["priors"] = FieldPriors.coerce(kw["priors"])
    images = find_images(inp)
    single = inp.is_file()
    for png in images:
        if single:
            dst = out / f"{png.stem}.pcap" if out.is_dir() or str(out).endswith("/") else out
        else:
            dst = (out / png.relative_to(inp)).with_suffix(".pcap")
        try:
            yield img2pcap(png, dst, **kw)
        except NetdiffError as e:
            yield str(e)


