"""Read a folder of captures or images into one ``TrafficSet`` (bit rows plus what each row is).

A folder holds pcaps (``<class>/*.pcap`` when classes are known, or files at the top level, class
"all") or palette PNGs (``<class>/*.png``, or any PNG with a ``<stem>.json`` sidecar whose "class"
key names it). Pcaps are encoded with the NPRINT layout (addresses kept, so flows can be built);
images are read by ``netdiff.image.reader.read_image`` (nearest palette colour; the layout their
PNG text or sidecar names, or the one their width implies).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from netdiff.bits.layout import NETDIFFUSION, NPRINT, Layout
from netdiff.errors import NetdiffError

PCAP_SUFFIXES = (".pcap", ".pcapng", ".cap")
IMAGE_SUFFIXES = (".png",)
TOP_CLASS = "all"


@dataclass
class TrafficSet:
    """Packets as nPrint rows, with their class, source unit, image, flow and time.

    ``group`` is the file (pcaps) or image (PNGs) a row came from; ``image`` numbers the
    ``layout.height``-row blocks an image model sees (for PNGs the image itself); ``ts`` is NaN
    where no time is known."""

    path: str
    kind: str                   # "pcap" or "png"
    layout: Layout
    bits: np.ndarray            # (N, layout.width) int8 in {-1, 0, 1}
    label: np.ndarray           # (N,) int index into classes
    classes: list[str]
    group: np.ndarray           # (N,) int
    image: np.ndarray           # (N,) int
    ts: np.ndarray              # (N,) float64 seconds
    files: list[str]            # group index -> source file
    pcap_paths: list[str]
    flow: np.ndarray | None = None   # (N,) int bidirectional flow id (see flows.flow_ids)
    # pcaps: packets whose IP header sat under other headers, per encapsulation, and packets left
    # out, per reason (netdiff.bits.codec's counts, summed over the files)
    decapsulated: dict = field(default_factory=dict)
    skipped: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.bits)

    def take(self, rows: np.ndarray) -> "TrafficSet":
        rows = np.asarray(rows)
        return replace(self, bits=self.bits[rows], label=self.label[rows], group=self.group[rows],
                       image=self.image[rows], ts=self.ts[rows],
                       flow=None if self.flow is None else self.flow[rows])

    def reblock(self) -> "TrafficSet":
        """Captures: images renumbered as consecutive blocks of ``layout.height`` rows within each
        file, as pcap2img would cut this (sub)set. Image sets are returned unchanged."""
        if self.kind == "png" or len(self) == 0:
            return self
        g = self.group
        starts = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1]
        pos = np.arange(len(g)) - np.repeat(starts, np.diff(np.r_[starts, len(g)]))
        key = np.stack([g, pos // self.layout.height], axis=1)
        _, image = np.unique(key, axis=0, return_inverse=True)
        return replace(self, image=image.reshape(-1).astype(np.int64))

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.label, minlength=len(self.classes))
        return {c: int(k) for c, k in zip(self.classes, counts) if k}

    def relabel(self, classes: list[str]) -> "TrafficSet":
        """The same rows with class indices into a wider list of class names."""
        index = {c: i for i, c in enumerate(classes)}
        lut = np.array([index[c] for c in self.classes], dtype=np.int64)
        return replace(self, label=lut[self.label] if len(self.label) else self.label,
                       classes=list(classes))


def _class_of(path: Path, root: Path) -> str:
    rel = path.relative_to(root)
    return rel.parts[0] if len(rel.parts) > 1 else TOP_CLASS


def _files(root: Path, suffixes) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
                  and not p.name.startswith("."))


def load_dir(path, progress: bool = False) -> TrafficSet:
    """A folder of pcaps or of images; raises NetdiffError naming what is wrong."""
    root = Path(path)
    if not root.is_dir():
        raise NetdiffError(f"{root}: not a folder (evaluate reads folders of pcaps or images)")
    pcaps, pngs = _files(root, PCAP_SUFFIXES), _files(root, IMAGE_SUFFIXES)
    if pcaps and pngs:
        raise NetdiffError(f"{root}: holds both pcaps and PNG images; give one kind per folder")
    if pcaps:
        ts = _load_pcaps(root, pcaps, progress)
    elif pngs:
        ts = _load_pngs(root, pngs, progress)
    else:
        raise NetdiffError(f"{root}: no .pcap/.pcapng or .png files found")
    if len(ts) == 0:
        raise NetdiffError(f"{root}: no packet nPrint can encode (IPv4/IPv6 with TCP, UDP or ICMP)")
    from netdiff.eval.flows import flow_ids

    ts.flow = flow_ids(ts)
    return ts


def _bar(items, progress: bool, desc: str):
    from tqdm import tqdm

    return tqdm(items, desc=desc, disable=not progress, leave=False, unit="file")


def _load_pcaps(root: Path, paths: list[Path], progress: bool) -> TrafficSet:
    from collections import Counter

    from netdiff.bits.codec import decapsulated_counts, encode, skipped_counts
    from netdiff.io.pcap import read_capture

    layout = NPRINT
    classes = sorted({_class_of(p, root) for p in paths})
    cls_index = {c: i for i, c in enumerate(classes)}
    bits, label, group, image, ts = [], [], [], [], []
    next_image = 0
    decap, skipped = Counter(), Counter()
    for g, p in enumerate(_bar(paths, progress, f"reading {root.name}")):
        batch, _ = read_capture(p)
        m, parsed = encode(batch, layout)
        decap += decapsulated_counts(parsed)
        skipped += skipped_counts(parsed)
        ok = parsed.reason == 0
        n = len(m)
        bits.append(m)
        label.append(np.full(n, cls_index[_class_of(p, root)], dtype=np.int64))
        group.append(np.full(n, g, dtype=np.int64))
        # Blocks of ``height`` packets, as pcap2img cuts a capture into images.
        blocks = np.arange(n) // layout.height
        image.append(next_image + blocks)
        next_image += int(blocks[-1]) + 1 if n else 0
        ts.append(batch.ts_sec[ok].astype(np.float64) + batch.ts_nsec[ok] * 1e-9)
    return TrafficSet(str(root), "pcap", layout, _cat(bits, (0, layout.width), np.int8),
                      _cat(label), classes, _cat(group), _cat(image), _cat(ts, dtype=np.float64),
                      [str(p) for p in paths], [str(p) for p in paths],
                      decapsulated=dict(decap), skipped=dict(skipped))


def _cat(parts, shape=(0,), dtype=np.int64):
    return np.concatenate(parts) if parts else np.zeros(shape, dtype=dtype)


def _sidecar(png: Path) -> dict:
    side = png.with_suffix(".json")
    if not side.is_file():
        return {}
    try:
        data = json.loads(side.read_text())
    except (OSError, ValueError) as e:
        raise NetdiffError(f"{side}: unreadable sidecar ({e.__class__.__name__}: {e})") from None
    if not isinstance(data, dict):
        raise NetdiffError(f"{side}: sidecar is not a JSON object")
    return data


def _load_pngs(root: Path, paths: list[Path], progress: bool) -> TrafficSet:
    from netdiff.image.reader import read_image

    rows = []   # (class, bits, ts)
    layout = None
    for png in _bar(paths, progress, f"reading {root.name}"):
        side = _sidecar(png)
        # Generated images are scored as drawn: off-palette colours take the nearest bit, and
        # nothing is resampled (a bit column that is not there cannot be scored).
        got = read_image(png, mode="nearest", fit="width", sidecar=side)
        m, lay = got.bits, got.layout
        if layout is None:
            layout = lay
        elif lay.columns != layout.columns:
            raise NetdiffError(f"{png}: layout {lay.name!r} differs from the folder's other images "
                               f"({layout.name!r})")
        m = m[~np.all(m == -1, axis=1)]     # padding rows hold no packet
        cls = side.get("class") or _class_of(png, root)
        ts = np.full(len(m), np.nan)
        pk = side.get("packets") or {}
        if "ts_sec" in pk:
            sec = np.asarray(pk["ts_sec"], dtype=np.float64)[:len(m)]
            nsec = np.asarray(pk.get("ts_nsec", np.zeros(len(sec))), dtype=np.float64)[:len(sec)]
            ts[:len(sec)] = sec + nsec * 1e-9
        rows.append((str(cls), m, ts))
    classes = sorted({c for c, _, _ in rows})
    cls_index = {c: i for i, c in enumerate(classes)}
    n = [len(m) for _, m, _ in rows]
    idx = np.repeat(np.arange(len(rows)), n)
    return TrafficSet(str(root), "png", layout,
                      _cat([m for _, m, _ in rows], (0, layout.width), np.int8),
                      np.array([cls_index[c] for c, _, _ in rows], dtype=np.int64)[idx], classes,
                      idx.copy(), idx.copy(), _cat([t for _, _, t in rows], dtype=np.float64),
                      [str(p) for p in paths], [])


def common_layout(*layouts: Layout) -> Layout:
    """The layout of the columns every given layout holds (shared sections, union of drops)."""
    sections = tuple(s for s in layouts[0].sections if all(s in x.sections for x in layouts[1:]))
    drop = sorted({f for x in layouts for f in x.drop})
    payload = min(x.payload_bytes for x in layouts)
    if payload == 0:
        sections = tuple(s for s in sections if s != "payload")
    if not sections:
        raise NetdiffError("the inputs' layouts share no nPrint section: "
                           + ", ".join(repr(x.name) for x in layouts))
    out = Layout(sections=sections, payload_bytes=payload, drop=tuple(drop), height=layouts[0].height)
    name = next((x.name for x in (NETDIFFUSION, NPRINT, *layouts) if x.columns == out.columns), "common")
    return replace(out, name=name)


def column_index(layout: Layout, target: Layout) -> np.ndarray:
    """Indices of ``layout``'s columns that make up ``target``'s, in ``target``'s order."""
    pos = {c: i for i, c in enumerate(layout.columns)}
    missing = [c for c in target.columns if c not in pos]
    if missing:
        raise NetdiffError(f"layout {layout.name!r} lacks column {missing[0]}")
    return np.array([pos[c] for c in target.columns], dtype=np.int64)


def restrict(ts: TrafficSet, layout: Layout) -> TrafficSet:
    """The set with only ``layout``'s columns (flows stay as computed on the full columns)."""
    if ts.layout.columns == layout.columns:
        return replace(ts, layout=layout)
    cols = column_index(ts.layout, layout)
    return replace(ts, bits=np.ascontiguousarray(ts.bits[:, cols]), layout=layout)
