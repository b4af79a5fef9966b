"""Repair benchmark: validity by all three checks, speed per 1024-row image, bits kept.

Image kinds, built from every capture under --data (first 1024 packets each, netdiffusion
layout): converted real images, the same with 5% and 30% of pixels flipped, blurred and resized to
816x768 (NetDiffusion's training size) then quantised back, and as many uniformly random images.
Each kind's repaired packets go into one pcap that `validate_pcaps` checks (tshark with every
dissector on, tcpreplay in a namespace when root, netdiff's rules).

    taskset -c 0 .venv/bin/python benchmarks/repair.py            # one core, as in the docs
    .venv/bin/python benchmarks/repair.py --limit 5 --no-replay   # quick look
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from netdiff.bits.codec import encode  # noqa: E402
from netdiff.bits.layout import NETDIFFUSION as L  # noqa: E402
from netdiff.image.codec import bits_to_rgb  # noqa: E402
from netdiff.io.pcap import PacketBatch, write_pcap  # noqa: E402
from netdiff.packet_repair import quantize, repair  # noqa: E402
from netdiff.packet_repair.perturb import blur_resize, flip_pixels, random_bits, real_bits  # noqa: E402
from netdiff.validation.pcaps import validate_pcaps  # noqa: E402

KINDS = ("real", "flip5", "flip30", "blur_resize_816x768", "random")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "pcaps"))
    ap.add_argument("--limit", type=int, default=0, help="use only the first N captures")
    ap.add_argument("--no-replay", action="store_true")
    ap.add_argument("--repeats", type=int, default=5, help="timed repairs per image (median kept)")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    captures = sorted(Path(args.data).glob("*/*.pcap"))
    if args.limit:
        captures = captures[:args.limit]
    if not captures:
        sys.exit(f"no captures under {args.data}")
    batches = {k: [] for k in KINDS}
    times = {k: [] for k in KINDS}
    wall = {k: [] for k in KINDS}
    recovered = {k: [] for k in KINDS}
    qtimes = []
    kept = {k: [] for k in KINDS}
    packets_per_image = []
    for i, path in enumerate(captures):
        bits = real_bits(path, L)
        rgb = blur_resize(bits_to_rgb(bits))
        t0 = time.perf_counter()
        blurred, _ = quantize(rgb, L)
        qtimes.append(time.perf_counter() - t0)
        images = {"real": bits, "flip5": flip_pixels(bits, 0.05, i), "flip30": flip_pixels(bits, 0.30, i),
                  "blur_resize_816x768": blurred, "random": random_bits(L, i)}
        for kind, img in images.items():
            res = repair(img, L, seed=i)
            ts, walls = [], []
            for _ in range(args.repeats):
                # CPU time of this process: what one core spends, whatever else shares the box
                t0, w0 = time.process_time(), time.perf_counter()
                repair(img, L, seed=i)
                ts.append(time.process_time() - t0)
                walls.append(time.perf_counter() - w0)
            times[kind].append(statistics.median(ts))
            wall[kind].append(statistics.median(walls))
            batches[kind].append(res.batch)
            kept[kind].append(res.report["kept_share"])
            if kind != "random":
                # how much of the clean image the repaired packets give back (noise removed)
                out_bits, _ = encode(res.batch, L)
                recovered[kind].append(float((out_bits == bits[res.rows]).mean()))
            if kind == "real":
                packets_per_image.append(res.report["packets"])
        print(f"{i + 1}/{len(captures)} {path.parent.name}/{path.name}: "
              f"{packets_per_image[-1]} rows, repair {1000 * times['real'][-1]:.1f} ms (real), "
              f"{1000 * times['random'][-1]:.1f} ms (random)", file=sys.stderr)

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in KINDS:
            p = Path(tmp) / f"{kind}.pcap"
            write_pcap(p, PacketBatch.concat(batches[kind]))
            v = validate_pcaps([p], replay=not args.no_replay)["files"][0]
            # an upper bound on failing packets (a packet can fail several checks)
            bad = v["malformed"] + v["checksum_errors"] + v["expert_errors"] + v["rule_failed_packets"]
            rep = v["replay"]
            results[kind] = {
                "images": len(batches[kind]), "packets": v["packets"], "malformed": v["malformed"],
                "checksum_errors": v["checksum_errors"], "expert_errors": v["expert_errors"],
                "rule_failed_packets": v["rule_failed_packets"],
                "failures_by_dissector": v["failures_by_dissector"],
                "replay": rep if isinstance(rep, str) else f"{rep['sent']} sent / {rep['failed']} failed",
                "valid_share": 1 - bad / max(v["packets"], 1) if (isinstance(rep, str) or rep["failed"] == 0) else 0.0,
                "repair_s_median": statistics.median(times[kind]), "repair_s_max": max(times[kind]),
                "repair_wall_s_median": statistics.median(wall[kind]),
                "clean_bits_recovered": round(float(np.mean(recovered[kind])), 4) if recovered[kind] else None,
                "kept_share": {g: round(float(np.mean([k[g] for k in kept[kind] if g in k])), 4)
                               for g in kept[kind][0]},
            }
    results["_quantize_s_median"] = statistics.median(qtimes)
    results["_load_average"] = os.getloadavg()[0]

    print("\n| kind | images | packets | malformed | checksum err | expert err | rule fail | "
          "replay | valid | repair CPU s/image (median, max) | wall s (median) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for kind in KINDS:
        r = results[kind]
        print(f"| {kind} | {r['images']} | {r['packets']} | {r['malformed']} | {r['checksum_errors']} | "
              f"{r['expert_errors']} | {r['rule_failed_packets']} | {r['replay']} | "
              f"{100 * r['valid_share']:.1f}% | {r['repair_s_median']:.4f}, {r['repair_s_max']:.4f} | "
              f"{r['repair_wall_s_median']:.4f} |")
    groups = list(results["real"]["kept_share"])
    print("\nshare of bits kept (mean over images)\n\n| kind | " + " | ".join(groups) + " |")
    print("|---" * (len(groups) + 1) + "|")
    for kind in KINDS:
        print(f"| {kind} | " + " | ".join(f"{results[kind]['kept_share'][g]:.3f}" for g in groups) + " |")
    print("\nshare of the clean image's bits the repaired packets reproduce (noise removed): " +
          ", ".join(f"{k} {results[k]['clean_bits_recovered']:.3f}" for k in KINDS if k != "random"))
    print(f"\nquantise (816x768 -> 1088x1024 + nearest colour): {results['_quantize_s_median']:.4f} s median (wall)")
    print(f"load average during the run: {results['_load_average']:.1f} on {os.cpu_count()} cores")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
