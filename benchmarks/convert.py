"""Conversion throughput: pcap -> bit matrix, -> PNG (+ sidecar), -> nPrint CSV, PNG -> pcap.

    python benchmarks/convert.py [--packets 100000] [--nprint /path/to/nprint] [--cores 0]

Builds a ~100k-packet capture from ../shared/data/pcaps (netdiff's own samples when absent),
pins itself to one core (--cores) and prints packets/s per stage. With --nprint, the nPrint
tool's CSV speed on the same capture is measured too.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from netdiff.bits.codec import encode                     # noqa: E402
from netdiff.bits.layout import NETDIFFUSION, Layout      # noqa: E402
from netdiff.pipeline.conversions import img2pcap_many, pcap2img      # noqa: E402
from netdiff.io.pcap import CaptureReader, PacketBatch, read_capture, write_pcap  # noqa: E402
from netdiff.nprint_csv.writer import pcap_to_csv         # noqa: E402


def build_capture(path: Path, target: int) -> int:
    shared = REPO.parent / "shared" / "data" / "pcaps"
    batches = []
    if shared.is_dir():
        for f in sorted(shared.glob("*/*.pcap")):
            b, _ = read_capture(f)
            batches.append(b.take(np.flatnonzero(b.linktype == 1)))
    else:
        from netdiff.pipeline.sample_captures import write_samples
        d = path.parent / "samples"
        for f in write_samples(d, seed=1, scale=4):
            batches.append(read_capture(f)[0])
    one = PacketBatch.concat(batches)
    reps = -(-target // len(one))
    big = PacketBatch.concat([one] * reps).take(np.arange(target))
    # monotonic timestamps, like one long capture
    big.ts_sec = 1_700_000_000 + np.arange(target) // 1000
    big.ts_nsec = (np.arange(target) % 1000) * 1_000_000
    write_pcap(path, big, nanosecond=False)
    return target


def timed(fn, repeat=3):
    """Best CPU time of the process over ``repeat`` runs (robust on a shared machine); the wall
    time of that run is printed beside it."""
    best = (float("inf"), 0.0)
    for _ in range(repeat):
        c, t = time.process_time(), time.perf_counter()
        fn()
        best = min(best, (time.process_time() - c, time.perf_counter() - t))
    timed.wall = best[1]
    return best[0]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=100_000)
    ap.add_argument("--nprint", help="path of the nPrint binary, to measure it on the same capture")
    ap.add_argument("--cores", default="0", help="CPU ids to pin to (comma-separated), '' for none")
    args = ap.parse_args(argv)
    if args.cores:
        os.sched_setaffinity(0, {int(c) for c in args.cores.split(",")})
    tmp = Path(tempfile.mkdtemp(prefix="netdiff-bench-"))
    try:
        cap = tmp / "bench.pcap"
        n = build_capture(cap, args.packets)
        size = cap.stat().st_size / 1e6
        print(f"capture: {n} packets, {size:.1f} MB, pinned to cores {args.cores or 'all'}")
        full = Layout(sections=("ipv4", "ipv6", "tcp", "udp", "icmp"))

        def matrix():
            return sum(len(encode(b, NETDIFFUSION)[0]) for b in CaptureReader(cap))

        rows = matrix()
        t = timed(matrix)
        print(f"pcap -> bit matrix (1088 cols):  {n / t:>10,.0f} packets/s  ({t:.3f} s CPU, {timed.wall:.3f} s wall)")
        t = timed(lambda: pcap_to_csv(cap, os.devnull, full, relative=True, absolute=True), repeat=2)
        print(f"pcap -> nPrint CSV (1408 cols):  {n / t:>10,.0f} packets/s  ({t:.3f} s CPU, {timed.wall:.3f} s wall)")
        out = tmp / "img"
        t = timed(lambda: (shutil.rmtree(out, ignore_errors=True), pcap2img(cap, out)), repeat=2)
        print(f"pcap -> PNG + sidecar:           {n / t:>10,.0f} packets/s  ({t:.3f} s CPU, {timed.wall:.3f} s wall, "
              f"{len(list(out.rglob('*.png')))} images)")
        t = timed(lambda: list(img2pcap_many(out, tmp / "rebuilt")), repeat=2)
        print(f"PNG + sidecar -> pcap (exact):   {rows / t:>10,.0f} packets/s  ({t:.3f} s CPU, {timed.wall:.3f} s wall)")
        if args.nprint:
            cmd = [args.nprint, "-P", str(cap), "-4", "-6", "-t", "-u", "-i", "-R", "-A", "-W", str(tmp / "n.csv")]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            t = time.perf_counter() - t0   # a child process: wall time
            print(f"nPrint tool, pcap -> CSV:        {n / t:>10,.0f} packets/s  ({t:.3f} s)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
