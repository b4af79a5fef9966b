"""netdiff nprint against the nPrint tool over corpora of captures, for several flag sets.

    python benchmarks/nprint_corpus.py [DIR ...] [--nprint /path/to/nprint] [--flags NAME ...]
                                       [--json OUT] [--shared]

Without DIR, netdiff's own regression corpora are written to a temporary folder: the
encapsulation corpus (tests/core/linkcorpus.py) and the odd-capture corpus
(tests/core/nprintcorpus.py: every link type of issue 18, truncation, IP options, IPv6
extension headers, fragments, non-IP frames, VLANs, timestamps past 2038, pcapng, nanosecond and
big-endian files). ``--shared`` adds ../shared/data/pcaps (the 36 captures of the oracle tests).
With DIR, every *.pcap / *.pcapng / *.cap under it is used (a real-world corpus).

Each file is run through ``netdiff nprint -P FILE <flags> -W OUT`` (in process, through the CLI's
entry point) for every flag set, and through the nPrint binary with the same flags, and sorted:

  identical   byte-identical CSV
  documented  every differing cell (and every unmatched row) falls under a divergence that
              docs/nprint.md lists; the verdict names them
  differs     any other difference (a bug to fix)
  refused     netdiff exit 1 with a one-line error (the verdict says whether nPrint failed too)
  internal    netdiff exit 2 or a traceback (always a bug)

How a difference is attributed, cell by cell: netdiff is run a second time on a copy of the
capture whose rows' packets are zero-padded past their captured length; a cell that changes is
one nPrint reads from beyond the captured bytes ("bytes beyond the captured length"). tv_sec and
rts cells that agree modulo 2^32 s are "timestamp past 2038"; cells that match once netdiff's row is laid out
as nPrint prints it (radiotap values again in place of the wlan ones, everything after shifted,
cut to the header's width) are "-w repeats radiotap", and cells past nPrint's row are "-p on
radiotap rows"; payload cells of IPv6 TCP rows are "IPv6 TCP payload offset"; the index of
radiotap rows with -O 5 is "-O 5 transmitter address". nPrint crashing where netdiff writes a
CSV is documented only with -p and a row whose IP length is below its headers. Rows are matched by their timestamps;
rows only one side has must come from packets whose IP decision lies beyond the captured bytes,
or (pcapng with interfaces of different link types) from packets after libpcap stopped.

Without the nPrint tool (`nprint` not on PATH and no --nprint) only netdiff's side is run (exit
codes and rows) and the comparison is reported as skipped. The nPrint binary is not built on
netdiff's CI machines, so this is a benchmark; tests/core/test_nprint_corpus.py runs the same
comparison when NPRINT names a binary.
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "core"))

FLAG_SETS = {
    "issue": ["-F", "-1", "-4", "-6", "-t", "-u", "-i", "-p", "0", "-c", "1024", "-R", "-A"],
    "default": ["-4", "-t", "-u"],
    "payload": ["-4", "-6", "-t", "-u", "-i", "-p", "10", "-R", "-A"],
    "eth_flow": ["-e", "-4", "-6", "-t", "-u", "-i", "-F", "0", "-O", "4", "-A"],
    "ports": ["-6", "-t", "-u", "-O", "3", "-c", "500", "-A"],
    "wireless": ["-r", "-w", "-4", "-R", "-A"],
    "tx_mac": ["-r", "-O", "5", "-A"],
}
SUFFIXES = (".pcap", ".pcapng", ".cap")
WRAP_S = 2 ** 32

BEYOND = "bytes beyond the captured length"
Y2038 = "timestamp past 2038"
WLAN = "-w repeats radiotap"
V6PAY = "IPv6 TCP payload offset"
TXMAC = "-O 5 transmitter address"
KINDS = ["identical", "documented", "refused", "internal", "differs", "netdiff ok"]
STOP = "pcapng interfaces of different link types"
RTPAY = "-p on radiotap rows"
CRASH = "nPrint crashes: IP length below its headers with -p"


def run_netdiff(path: Path, flags: list[str], out: Path) -> tuple[int, str]:
    from netdiff.cli import main
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["nprint", "-P", str(path), *flags, "-W", str(out)])
    return code, err.getvalue()


def run_nprint(binary: str, path: Path, flags: list[str], out: Path) -> int:
    return subprocess.run([binary, "-P", str(path), *flags, "-W", str(out)], capture_output=True).returncode


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def flag_value(flags: list[str], flag: str, default: int = 0) -> int:
    return int(flags[flags.index(flag) + 1]) if flag in flags else default


def row_packets(path: Path, flags: list[str]):
    """The packets netdiff writes rows for (as one batch), per-row version / proto / radiotap,
    how many packets' IP decision lies beyond their captured bytes, and the link types seen."""
    from netdiff.bits.codec import R_EMPTY, R_TRUNC_IP, parse
    from netdiff.io.pcap import CaptureReader, PacketBatch

    count = flag_value(flags, "-c")
    batches, parsed, read, undecidable, links = [], [], 0, 0, set()
    for batch in CaptureReader(path):
        if count and read + len(batch) > count:
            batch = batch.take(np.arange(count - read))
        read += len(batch)
        p = parse(batch, flag_value(flags, "-p"), fragments="nprint", vlan=False, links="nprint")
        ok = np.flatnonzero(p.reason == 0)
        batches.append(batch.take(ok))
        parsed.append((p.version[ok], p.proto[ok], p.wireless[ok], p.l3[ok], p.ip_hlen[ok], p.l4[ok], p.l4_hlen[ok]))
        undecidable += int(np.isin(p.reason, (R_EMPTY, R_TRUNC_IP)).sum()
                           + ((batch.caplen < 14) & (p.reason == 0)).sum())
        links |= set(batch.linktype.tolist())
        if count and read >= count:
            break
    rows = PacketBatch.concat(batches) if batches else None
    info = {k: np.concatenate([x[i] for x in parsed]) if parsed else np.zeros(0, int)
            for i, k in enumerate(("version", "proto", "wireless", "l3", "ip_hlen", "l4", "l4_hlen"))}
    return rows, info, undecidable, links


def padded_csv(rows, flags: list[str], tmp: Path, byte: int) -> list[list[str]]:
    """netdiff's rows for the same packets padded with 4096 ``byte``s past their captured length."""
    from netdiff.io.pcap import PacketBatch, write_pcap

    pkts = [rows.packet(i) + bytes([byte]) * 4096 for i in range(len(rows))]
    pad = PacketBatch.from_packets(pkts, ts_sec=rows.ts_sec, ts_nsec=rows.ts_nsec, linktype=rows.linktype)
    pad.wirelen = np.maximum(rows.wirelen, pad.caplen)
    src = tmp / "padded.pcap"
    write_pcap(src, pad)
    out = tmp / "padded.csv"
    code, err = run_netdiff(src, _drop(flags, "-c") if "-c" in flags else flags, out)
    if code:
        raise RuntimeError(f"padded copy: {err}")
    return [ln.split(",") for ln in out.read_text().splitlines()[1:]]


def _drop(flags: list[str], flag: str) -> list[str]:
    i = flags.index(flag)
    return flags[:i] + flags[i + 2:]


def nprint_row(row: list[str], head: list[str], flags: list[str], wireless: bool) -> list:
    """A netdiff row as nPrint 1.2.1 prints it: its -w branch writes the 448 radiotap values again
    (not the 80 wlan ones), its radiotap rows hold no payload values, and it prints as many
    values as the header has, whatever the row holds (None: memory past nPrint's row)."""
    if "-w" not in flags and not (wireless and "-p" in flags and flag_value(flags, "-p")):
        return row
    first = next((k for k, h in enumerate(head) if "_" in h and h not in ("tv_sec", "tv_usec") and h[-1].isdigit()),
                 len(head))
    cols = head[first:]
    bits = row[first:]
    rt = [v for h, v in zip(cols, bits) if h.startswith("radiotap_")]
    mid = [v for h, v in zip(cols, bits) if not h.startswith(("radiotap_", "wlan_", "payload_bit"))]
    pay = [v for h, v in zip(cols, bits) if h.startswith("payload_bit")]
    vec = rt + (rt if "-w" in flags else []) + mid + ([] if wireless else pay)
    return row[:first] + (vec + [None] * len(bits))[:len(bits)]


def payload_underflow(path: Path, flags: list[str]) -> bool:
    """With -p, a row whose IP length is below its IP and transport headers (or whose transport
    header is not all captured): nPrint's payload length wraps round and it reads until it crashes."""
    if not flag_value(flags, "-p"):
        return False
    rows, info, _, _ = row_packets(path, flags)
    for i in range(len(rows) if rows is not None else 0):
        pkt, l3 = rows.packet(i), int(info["l3"][i])
        if info["wireless"][i]:
            continue
        total = (int.from_bytes(pkt[l3 + 2:l3 + 4], "big") if info["version"][i] == 4
                 else 40 + int.from_bytes(pkt[l3 + 4:l3 + 6], "big"))
        l4_end = int(info["l4"][i]) + (int(info["l4_hlen"][i]) if info["proto"][i] == 6 else 8)
        if total < int(info["ip_hlen"][i]) + int(info["l4_hlen"][i]) or l4_end > len(pkt) or \
                (info["proto"][i] == 6 and int(info["l4"][i]) + 13 > len(pkt)):
            return True
    return False


def explain(path: Path, flags: list[str], ours: bytes, theirs: bytes, tmp: Path) -> tuple[str | None, str]:
    """(the divergences that explain every difference, or None; a note on the first unexplained one)."""
    a, b = ours.decode().splitlines(), theirs.decode(errors="replace").splitlines()
    if a[:1] != b[:1]:
        return None, "header lines differ"
    head = a[0].split(",")
    col = {name: i for i, name in enumerate(head)}
    mine = [ln.split(",") for ln in a[1:]]
    other = [ln.split(",") for ln in b[1:]]
    rows, info, undecidable, links = row_packets(path, flags)
    if rows is None or len(rows) != len(mine):
        return None, "netdiff's rows do not match its own parse"
    # Padding with 0x00 and with 0xff: a cell that changes read bytes beyond the capture (a TCP
    # data offset read there is 0 with one padding and 15 with the other).
    padded = [padded_csv(rows, flags, tmp, b) if len(rows) else [] for b in (0x00, 0xFF)]
    causes: set[str] = set()

    # Match rows: by timestamps when -A gives them, else by the whole line less rts.
    def key(r):
        if "tv_sec" in col:
            return (int(r[col["tv_sec"]]) % WRAP_S, r[col["tv_usec"]])
        return tuple(v for j, v in enumerate(r) if head[j] != "rts")
    sm = difflib.SequenceMatcher(None, [key(r) for r in mine], [key(r) for r in other], autojunk=False)
    pairs, only_mine, only_theirs = [], [], []
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag == "equal" or (tag == "replace" and i2 - i1 == j2 - j1):
            pairs += list(zip(range(i1, i2), range(j1, j2)))
        else:
            only_mine += list(range(i1, i2))
            only_theirs += list(range(j1, j2))
    after_gap = set()
    if only_mine or only_theirs:
        stopped = len(links) > 1 and path.suffix == ".pcapng" and not only_theirs and \
            only_mine == list(range(len(mine) - len(only_mine), len(mine)))
        if stopped:
            causes.add(STOP)
        elif max(len(only_mine), len(only_theirs)) <= undecidable:
            causes.add(BEYOND)
            after_gap = {i + 1 for i in only_mine} | {j + 1 for j in only_theirs}
        else:
            return None, f"{len(only_mine)} rows only netdiff writes, {len(only_theirs)} only nPrint"
    index = flag_value(flags, "-O")
    for i, j in pairs:
        x, y = mine[i], other[j]
        if x == y:
            continue
        if len(x) != len(y):
            return None, f"row {i + 1}: {len(x)} vs {len(y)} cells"
        radio = bool(info["wireless"][i])
        x, z0, z1 = (nprint_row(r, head, flags, radio) for r in (x, padded[0][i], padded[1][i]))
        for k in np.flatnonzero([u != v for u, v in zip(mine[i], y)]).tolist():
            name = head[k]
            if x[k] is None:
                causes.add(RTPAY)
            elif x[k] == y[k]:
                causes.add(WLAN)
            elif x[k] != z0[k] or x[k] != z1[k]:
                causes.add(BEYOND)
            elif name == "tv_sec" and (int(x[k]) - int(y[k])) % WRAP_S == 0:
                causes.add(Y2038)
            elif name == "rts" and (int(x[k]) - int(y[k])) % (WRAP_S * 10 ** 6) == 0:
                causes.add(Y2038)
            elif name == "rts" and (j in after_gap or i in after_gap):
                causes.add(BEYOND)
            elif name.startswith("payload_bit") and info["version"][i] == 6 and info["proto"][i] == 6:
                causes.add(V6PAY)
            elif k == 0 and index == 5 and info["wireless"][i]:
                causes.add(TXMAC)
            else:
                return None, f"row {i + 1} column {name}: netdiff {x[k]}, nPrint {y[k]}"
    return ", ".join(sorted(causes)) or None, ""


def corpus_files(args, tmp: Path) -> list[tuple[str, Path]]:
    if args.dirs:
        return [(str(d), f) for d in args.dirs for f in sorted(d.rglob("*")) if f.suffix.lower() in SUFFIXES]
    from linkcorpus import write_corpus as link_corpus
    from nprintcorpus import write_corpus as odd_corpus
    files = [("link", f) for f in sorted(link_corpus(tmp / "link").values())]
    files += [("odd", f) for f in sorted(odd_corpus(tmp / "odd").values())]
    if args.shared:
        shared = REPO.parent / "shared" / "data" / "pcaps"
        files += [("shared", f) for f in sorted(shared.glob("*/*.pcap"))]
    return files


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="*", type=Path)
    ap.add_argument("--nprint", default=os.environ.get("NPRINT") or shutil.which("nprint"),
                    help="the nPrint 1.2.1 binary (default: $NPRINT, else nprint on PATH)")
    ap.add_argument("--flags", nargs="*", choices=sorted(FLAG_SETS), default=list(FLAG_SETS),
                    help="flag sets to run (default: all)")
    ap.add_argument("--shared", action="store_true", help="add ../shared/data/pcaps to the built corpora")
    ap.add_argument("--json", type=Path, help="write the per-file results here")
    ap.add_argument("--record", type=Path,
                    help="write {flag set: {file: [capture sha256, nPrint CSV sha256]}} of the built corpora's "
                         "byte-identical results here (tests/core/nprint_corpus_hashes.json)")
    ap.add_argument("-q", "--quiet", action="store_true", help="print only what is not identical")
    args = ap.parse_args(argv)
    if args.nprint and not Path(args.nprint).is_file():
        ap.error(f"--nprint {args.nprint}: no such file")
    table: dict[str, Counter] = {}
    results = []
    recorded: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = corpus_files(args, tmp)
        for fs in args.flags:
            flags = FLAG_SETS[fs]
            counts: Counter = Counter()
            for i, (group, f) in enumerate(files):
                ours, theirs = tmp / f"{i}.netdiff.csv", tmp / f"{i}.nprint.csv"
                for p in (ours, theirs):
                    p.unlink(missing_ok=True)
                code, err = run_netdiff(f, flags, ours)
                note = ""
                nrc = run_nprint(args.nprint, f, flags, theirs) if args.nprint else None
                if code == 2 or "Traceback" in err:
                    verdict = "internal"
                elif code != 0:
                    verdict = "refused"
                    if nrc is not None:
                        note = f"nPrint exit {nrc}" + (" (crashed)" if nrc < 0 or nrc > 128 else "")
                elif nrc is None:
                    verdict = "netdiff ok"
                elif nrc != 0:
                    verdict, note = "differs", f"nPrint exit {nrc}, netdiff 0"
                    if nrc < 0 and payload_underflow(f, flags):
                        verdict = f"documented ({CRASH})"
                elif ours.read_bytes() == theirs.read_bytes():
                    verdict = "identical"
                    if group in ("link", "odd"):
                        recorded.setdefault(fs, {})[f.name] = [sha(f.read_bytes()), sha(theirs.read_bytes())]
                else:
                    why, note = explain(f, flags, ours.read_bytes(), theirs.read_bytes(), tmp)
                    verdict = f"documented ({why})" if why else "differs"
                counts[verdict.split(" (")[0]] += 1
                if verdict.startswith("documented"):
                    for cause in verdict[len("documented ("):-1].split(", "):
                        counts[f"  {cause}"] += 1
                results.append({"flags": fs, "group": group, "file": f.name, "verdict": verdict, "note": note,
                                "stderr": err.strip().splitlines()[-1:]})
                if not (args.quiet and verdict == "identical"):
                    print(f"{fs:9s} {verdict:44s} {group}/{f.name} {note}", flush=True)
            table[fs] = counts
    groups = Counter(g for g, _ in files)
    print(f"\n{len(files)} captures per flag set: " + ", ".join(f"{n} {g}" for g, n in groups.items()))
    print(f"{'flag set':9s} {'group':7s} " + " ".join(f"{k:>10s}" for k in KINDS))
    for fs, counts in table.items():
        for g in [*groups, "all"]:
            c = Counter(r["verdict"].split(" (")[0] for r in results if r["flags"] == fs and g in (r["group"], "all"))
            print(f"{fs:9s} {g:7s} " + " ".join(f"{c[k]:10d}" for k in KINDS))
        for k, v in sorted(counts.items()):
            if k.startswith("  "):
                print(f"{'':17s} {v:4d} {k.strip()}")
    if not args.nprint:
        print("nPrint tool not found (pass --nprint, set NPRINT or put nprint on PATH): comparison skipped")
    if args.json:
        args.json.write_text(json.dumps({"flag_sets": FLAG_SETS, "counts": table, "files": results}, indent=1))
    if args.record:
        args.record.write_text(json.dumps({"nprint": "1.2.1 (oracle build, see docs/performance.md)",
                                           "flag_sets": {k: FLAG_SETS[k] for k in recorded},
                                           "identical": recorded}, indent=1, sort_keys=True) + "\n")
    bad = sum(c["internal"] + c["differs"] for c in table.values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
