"""Time `netdiff evaluate` on the ten shared classes (54k packets) and print the headline numbers.

Real = every other packet of each shared capture; synthetic = the remaining packets with the
IPv4 TTL redrawn at random (a generator that gets one field wrong), written as pcaps; no
training set (half of the real set stands in). Run:

    .venv/bin/python benchmarks/evaluate.py [--data ../shared/data/pcaps] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def build(data: Path, root: Path, seed: int = 0) -> tuple[Path, Path]:
    from netdiff.bits.codec import parse
    from netdiff.io.pcap import PacketBatch, read_capture, write_pcap

    rng = np.random.default_rng(seed)
    for pcap in sorted(data.glob("*/*.pcap")):
        batch, _ = read_capture(pcap)
        real = batch.take(np.arange(0, len(batch), 2))
        syn = batch.take(np.arange(1, len(batch), 2))
        p = parse(syn)
        data_copy = syn.data.copy()
        v4 = np.flatnonzero(p.version == 4)
        data_copy[syn.offset[v4] + p.l3[v4] + 8] = rng.integers(1, 256, len(v4), dtype=np.uint8)
        syn = PacketBatch(data_copy, syn.offset, syn.caplen, syn.wirelen, syn.ts_sec, syn.ts_nsec,
                          syn.linktype, syn.number)
        cls = pcap.parent.name
        write_pcap(root / "real" / cls / pcap.name, real, nanosecond=False)
        write_pcap(root / "synthetic" / cls / pcap.name, syn, nanosecond=False)
    return root / "real", root / "synthetic"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared/data/pcaps")
    ap.add_argument("--keep", type=Path, default=None, help="write inputs and report here")
    ap.add_argument("--no-figures", action="store_true")
    args = ap.parse_args()
    from netdiff.eval import evaluate, summary_line

    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        real, syn = build(args.data, root)
        t = time.perf_counter()
        rep = evaluate(real, syn, root / "report", seed=0, figures=not args.no_figures, progress=False)
        wall = time.perf_counter() - t
    print(f"cpus available: {len(os.sched_getaffinity(0))}")
    print(f"packets: real {rep['inputs']['real']['packets']}, synthetic {rep['inputs']['synthetic']['packets']}, "
          f"classes {len(rep['classes'])}")
    print(f"evaluate wall time: {wall:.1f} s")
    print("steps (s): " + json.dumps(rep["timing_s"]))
    print(summary_line(rep))
    print("ttl decoded-field JSD: synthetic %.3f, real vs real %.3f" % (
        rep["fidelity"]["overall"]["decoded_fields"]["ttl"]["jsd"],
        rep["calibration"]["real_vs_real"]["fidelity"]["overall"]["decoded_fields"]["ttl"]["jsd"]))


if __name__ == "__main__":
    main()
