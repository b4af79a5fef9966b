"""Peak memory of streaming conversion as the capture grows (it should stay flat).

    python benchmarks/memory.py [--sizes 1000000,10000000]

Writes captures of each size (records of ../shared/data/pcaps, or netdiff's samples, repeated),
then in a fresh process per size streams them through pcap -> bit matrix and pcap -> nPrint CSV
(to /dev/null) and prints the peak resident memory (ru_maxrss).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import os, resource, sys, time
sys.path.insert(0, {repo!r})
from netdiff.bits.codec import encode
from netdiff.bits.layout import NETDIFFUSION, Layout
from netdiff.io.pcap import CaptureReader
from netdiff.nprint_csv.writer import pcap_to_csv
path, mode = sys.argv[1], sys.argv[2]
t = time.perf_counter()
if mode == "matrix":
    n = sum(len(encode(b, NETDIFFUSION)[0]) for b in CaptureReader(path))
else:
    n = pcap_to_csv(path, os.devnull, Layout(sections=("ipv4", "ipv6", "tcp", "udp", "icmp")))["rows"]
dt = time.perf_counter() - t
print(n, dt, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def make_capture(path: Path, packets: int) -> None:
    sys.path.insert(0, str(REPO))
    import numpy as np
    from netdiff.io.pcap import PacketBatch, encode_pcap, read_capture
    shared = REPO.parent / "shared" / "data" / "pcaps"
    if shared.is_dir():
        bs = [read_capture(f)[0] for f in sorted(shared.glob("*/*.pcap"))]
        one = PacketBatch.concat([b.take(np.flatnonzero(b.linktype == 1)) for b in bs])
    else:
        from netdiff.pipeline.sample_captures import write_samples
        one = PacketBatch.concat([read_capture(f)[0] for f in write_samples(path.parent / "s", scale=8)])
    body = encode_pcap(one)
    head, records = body[:24], body[24:]
    reps, rest = divmod(packets, len(one))
    with open(path, "wb") as f:
        f.write(head)
        for _ in range(reps):
            f.write(records)
        if rest:
            f.write(encode_pcap(one.take(np.arange(rest)))[24:])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000000,10000000")
    ap.add_argument("--csv-max", type=int, default=1_000_000, help="largest size also run through CSV")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="netdiff-mem-") as d:
        for n in (int(x) for x in args.sizes.split(",")):
            cap = Path(d) / f"{n}.pcap"
            t = time.perf_counter()
            make_capture(cap, n)
            print(f"{n:>11,} packets ({cap.stat().st_size / 1e9:.2f} GB, written in {time.perf_counter() - t:.0f} s)")
            for mode in ("matrix", "csv"):
                if mode == "csv" and n > args.csv_max:
                    continue
                out = subprocess.run([sys.executable, "-c", CHILD.format(repo=str(REPO)), str(cap), mode],
                                     capture_output=True, text=True, check=True).stdout.split()
                rows, secs, rss = int(out[0]), float(out[1]), int(out[2])
                print(f"   {mode:>6}: {rows:>11,} rows in {secs:6.1f} s, peak RSS {rss} MiB")
            cap.unlink()


if __name__ == "__main__":
    main()
