"""netdiff nprint against the nPrint tool over a corpus of captures of every link type.

    python benchmarks/nprint_corpus.py [DIR ...] [--nprint /path/to/nprint] [--json OUT]

Without DIR, netdiff's own regression corpus (tests/core/linkcorpus.py: scapy-built captures of
every link type in docs/nprint.md plus the odd cases) is written to a temporary folder; with DIR,
every *.pcap / *.pcapng / *.cap under it is used (a real-world corpus). Each file is run through
`netdiff nprint -F -1 -P f -4 -6 -t -u -i -p 0 -c 1024 -R -A` in a subprocess and sorted into:

  identical   byte-identical to the nPrint tool's CSV
  documented  differs from nPrint only where docs/nprint.md says it does (see ``explain``)
  differs     any other difference (a bug to fix)
  refused     netdiff exit 1 with a one-line error (a file nPrint reads too counts against us)
  internal    netdiff exit 2 or a traceback (always a bug)

Without the nPrint tool (`nprint` not on PATH and no --nprint) only netdiff's side is run: exit
codes, rows and the divergence checks that need no reference, and the comparison is reported as
skipped. The nPrint binary is not built on netdiff's CI machines, so this is a benchmark, not a test.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "core"))

FLAGS = ["-F", "-1", "-4", "-6", "-t", "-u", "-i", "-p", "0", "-c", "1024", "-R", "-A"]
SUFFIXES = (".pcap", ".pcapng", ".cap")


def run_netdiff(path: Path, out: Path) -> tuple[int, str]:
    r = subprocess.run([sys.executable, "-m", "netdiff", "nprint", "-P", str(path), *FLAGS, "-W", str(out)],
                       capture_output=True, text=True)
    return r.returncode, r.stderr


def run_nprint(binary: str, path: Path, out: Path) -> int:
    return subprocess.run([binary, "-P", str(path), *FLAGS, "-W", str(out)], capture_output=True).returncode


def explain(path: Path, ours: bytes, theirs: bytes) -> str | None:
    """The docs/nprint.md divergence a difference falls under, or None when none explains it."""
    from netdiff.io.pcap import read_capture

    a, b = ours.splitlines(), theirs.splitlines()
    if a[:1] != b[:1]:
        return None
    batch, _ = read_capture(path)
    causes = set()
    if (batch.ts_sec >= 2 ** 31).any():
        causes.add("timestamp past 2038")
    if (batch.caplen < batch.wirelen).any() or (batch.caplen < 54).any():
        causes.add("bytes beyond the captured length")
    if not causes:
        return None
    if len(a) != len(b) and "bytes beyond the captured length" not in causes:
        return None
    # Rows nPrint wrote with a wrapped 32-bit tv_sec: compare with the wrap undone.
    if causes == {"timestamp past 2038"} and len(a) == len(b):
        for x, y in zip(a[1:], b[1:]):
            xs, ys = x.split(b",", 4), y.split(b",", 4)
            if xs[0] != ys[0] or xs[4] != ys[4] or int(xs[2]) % 2 ** 32 != int(ys[2]) % 2 ** 32:
                return None
    return ", ".join(sorted(causes))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="*", type=Path)
    ap.add_argument("--nprint", default=shutil.which("nprint"), help="the nPrint 1.2.1 binary")
    ap.add_argument("--json", type=Path, help="write the per-file results here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.dirs:
            files = sorted(f for d in args.dirs for f in d.rglob("*") if f.suffix.lower() in SUFFIXES)
        else:
            from linkcorpus import write_corpus
            files = sorted(write_corpus(tmp / "corpus").values())
        counts: Counter = Counter()
        results = []
        for i, f in enumerate(files):
            ours, theirs = tmp / f"{i}.netdiff.csv", tmp / f"{i}.nprint.csv"
            code, err = run_netdiff(f, ours)
            if code == 2 or "Traceback" in err:
                verdict = "internal"
            elif code != 0:
                verdict = "refused"
            elif not args.nprint:
                verdict = "netdiff ok (no nPrint to compare)"
            elif run_nprint(args.nprint, f, theirs) != 0:
                verdict = "nprint failed"
            elif ours.read_bytes() == theirs.read_bytes():
                verdict = "identical"
            else:
                why = explain(f, ours.read_bytes(), theirs.read_bytes())
                verdict = f"documented ({why})" if why else "differs"
            counts[verdict.split(" (")[0]] += 1
            results.append({"file": str(f), "verdict": verdict, "stderr": err.strip().splitlines()[-1:]})
            print(f"{verdict:40s} {f.name}", flush=True)
    print(f"\n{len(files)} captures: " + ", ".join(f"{n} {k}" for k, n in counts.most_common()))
    if not args.nprint:
        print("nPrint tool not found (put `nprint` on PATH or pass --nprint): comparison skipped")
    if args.json:
        args.json.write_text(json.dumps({"counts": counts, "files": results}, indent=1))
    return 1 if counts["internal"] or counts["differs"] else 0


if __name__ == "__main__":
    sys.exit(main())
