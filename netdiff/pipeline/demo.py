"""The embedded default job: netdiff's own sample captures through the conversion round trip."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from netdiff.image import sidecar as sc
from netdiff.pipeline.conversions import img2pcap_many, pcap2img
from netdiff.io.pcap import read_capture
from netdiff.pipeline.sample_captures import write_samples
from netdiff.validation.pcaps import validate_pcaps


def compare_rebuilt(images_dir: Path, rebuilt_dir: Path) -> dict:
    """Packets and timestamps of every rebuilt pcap against the capture its sidecar names."""
    checked = differing = 0
    cache: dict[str, object] = {}
    for side in sc.iter_sidecars(images_dir):
        doc = sc.read(side)
        src = doc["source"]["path"]
        if src not in cache:
            cache[src] = read_capture(src)[0]
        orig = cache[src]
        rebuilt, _ = read_capture((rebuilt_dir / side.relative_to(images_dir)).with_suffix(".pcap"))
        idx = np.asarray(doc["packets"]["number"], dtype=np.int64)
        same_ts = np.array_equal(orig.ts_sec[idx], rebuilt.ts_sec) and \
            np.array_equal(orig.ts_nsec[idx], rebuilt.ts_nsec)
        for j, i in enumerate(idx.tolist()):
            checked += 1
            if not same_ts or orig.packet(i) != rebuilt.packet(j):
                differing += 1
    return {"packets_compared": checked, "packets_differing": differing}


def run_demo(out: Path, seed: int = 0, echo: Callable[[str], None] = print) -> dict:
    t0 = time.perf_counter()
    caps, imgs, rebuilt = out / "captures", out / "images", out / "rebuilt"
    paths = write_samples(caps, seed=seed)
    echo(f"[1/4] wrote {len(paths)} sample captures (seed {seed}) -> {caps}")
    s = pcap2img(caps, imgs)
    echo(f"[2/4] pcap2img: {s.images} images of 1088x1024 from {s.rows} packets -> {imgs}")
    results = [r for r in img2pcap_many(imgs, rebuilt)]
    errors = [r for r in results if isinstance(r, str)]
    echo(f"[3/4] img2pcap: {len(results) - len(errors)} pcaps rebuilt exactly -> {rebuilt}")
    cmp = compare_rebuilt(imgs, rebuilt)
    ok = not errors and not s.errors and cmp["packets_differing"] == 0
    echo(f"[4/4] compared {cmp['packets_compared']} packets with the originals: "
         f"{cmp['packets_differing']} differ (bytes or timestamps)")
    summary = {"ok": ok, "images": s.images, "packets": s.rows, **cmp, "errors": errors + s.errors,
               "seconds": round(time.perf_counter() - t0, 2), "rebuilt": str(rebuilt)}
    report = validate_pcaps(sorted(rebuilt.rglob("*.pcap")), replay=False)
    summary["validation"] = {"ok": bool(report.get("ok"))}
    summary["ok"] = summary["ok"] and bool(report.get("ok"))
    echo(f"validate: {'all packets valid' if report.get('ok') else 'FAILURES'}")
    echo(f"demo {'OK' if summary['ok'] else 'FAILED'} in {summary['seconds']} s; "
         f"rebuilt pcaps are in {rebuilt}")
    return summary
