"""Port sweep: every TCP and UDP port, as source and as destination, through repair and tshark.

For each transport and port 1..65535 two packets (the port as source, then as destination, the
other port drawn from 1..65535), each round with payload lengths drawn from what repair can
produce (half of them 1..64 bytes, where dissectors are pickiest, half up to the MTU). The
packets become image rows (netdiffusion layout), `repair` turns every 1024 rows into packets,
and tshark (every dissector on, checksums checked) judges them: the count of malformed packets
and expert errors must be 0.

    .venv/bin/python benchmarks/port_sweep.py                 # 4 rounds: 1,048,560 packets
    .venv/bin/python benchmarks/port_sweep.py --rounds 1 --ports 2000 --seed 1   # quick look
    .venv/bin/python benchmarks/port_sweep.py --derive        # measure measured.yaml again
    .venv/bin/python benchmarks/port_sweep.py --pairs         # every two templated ports

``--pairs`` sweeps what a random partner rarely meets: every two ports that both have a
template (both dissectors picky), each way, a short and a long payload each, through repair and
tshark. Repair gives such rows no payload (two dissectors that each want their own message:
before that rule, one round gave 3,632 malformed packets on 4,279 of the 55,252 pairs, and
each new round of lengths found more).

``--derive`` measures the port table of ``protocol_rules/payloads/measured.yaml`` and rewrites
it (then run the sweep again): with the protocol templates and the default only, every port at
a set of probe lengths (the port the lower one, the other 65535, both directions; a message still waiting for
TCP reassembly when the capture ends fails too: in a flow it would swallow the next segment);
for each port that fails,
candidate messages (plain fills; a text line ending in CRLF or a blank line; a head with a 2-
or 4-byte length field of what follows or of the whole message) at the probe lengths, then the best on every length 1..MTU. Per port the
candidate with the lowest length from which every longer one passes wins; shorter lengths at
which the default fails grow to it (``grow_below``); a port where no candidate passes gets an
``empty`` entry (its rows carry no payload).
"""
from __future__ import annotations

import argparse
import json
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from netdiff.bits.codec import encode  # noqa: E402
from netdiff.bits.layout import NETDIFFUSION  # noqa: E402
from netdiff.io.pcap import PacketBatch, write_pcap  # noqa: E402
from netdiff.packet_repair import payloads as PL  # noqa: E402
from netdiff.packet_repair import repair  # noqa: E402
from netdiff.rules import engine as E  # noqa: E402
from netdiff.validation.tshark import tshark_check  # noqa: E402

TRANSPORTS = {"udp": 17, "tcp": 6}
MAX_PAYLOAD = {"udp": 1472, "tcp": 1460}    # IPv4 over a 1500-byte MTU


def raw_packets(proto: int, sport, dport, length, payload: np.ndarray | None = None) -> PacketBatch:
    """IPv4 packets (checksums left zero) with ``payload`` rows (default zeros) of ``length``
    bytes: the image rows a model would draw, or, with payloads, what tshark alone judges."""
    out = []
    rows = payload if payload is not None else None
    for i, (s, d, n) in enumerate(zip(sport.tolist(), dport.tolist(), length.tolist())):
        if proto == 17:
            l4 = struct.pack("!HHHH", s, d, 8 + n, 0)
        else:
            l4 = struct.pack("!HHIIBBHHH", s, d, 1000, 2000, 5 << 4, 0x18, 65535, 0, 0)
        # every packet its own client address: its own TCP stream, never a retransmission
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4) + n, 1, 0x4000, 64, proto, 0,
                         (0x0A000000 + 1 + i % 0xFFFFF0).to_bytes(4, "big"), b"\x0b\0\0\x02")
        data = rows[i, :n].tobytes() if rows is not None else bytes(n)
        out.append(b"\x02\0\0\0\0\x02\x02\0\0\0\0\x01\x08\x00" + ip + l4 + data)
    return PacketBatch.from_packets(out)


def repaired(batch: PacketBatch, seed: int) -> tuple[PacketBatch, float]:
    """The packets' image rows repaired 1024 at a time; (packets, repair CPU seconds)."""
    bits, _ = encode(batch, NETDIFFUSION)
    out, cpu = [], 0.0
    for k in range(0, len(bits), NETDIFFUSION.height):
        t = time.process_time()
        res = repair(bits[k:k + NETDIFFUSION.height], NETDIFFUSION, seed=seed + k)
        cpu += time.process_time() - t
        out.append(res.batch)
    return PacketBatch.concat(out), cpu


def judge(batch: PacketBatch, work: Path, name: str) -> dict:
    path = work / f"{name}.pcap"
    write_pcap(path, batch)
    return tshark_check(str(path))


def sweep(rounds: int, seed: int, ports: int, work: Path) -> dict:
    rng = np.random.default_rng(seed)
    port = np.arange(1, ports + 1)
    result = {"packets": 0, "malformed": 0, "expert_errors": 0, "checksum_errors": 0,
              "incomplete_pdus": 0,
              "failures_by_dissector": {}, "failed_ports": {}, "repair_cpu_s": 0.0,
              "tshark_s": 0.0}
    for rnd in range(rounds):
        for name, proto in TRANSPORTS.items():
            other = rng.integers(1, 65536, size=2 * len(port))
            swept = np.concatenate([port, port])
            as_source = np.arange(2 * len(port)) < len(port)
            sport = np.where(as_source, swept, other)
            dport = np.where(as_source, other, swept)
            short = rng.random(len(swept)) < 0.5
            length = np.where(short, rng.integers(1, 65, len(swept)),
                              rng.integers(0, MAX_PAYLOAD[name] + 1, len(swept)))
            batch, cpu = repaired(raw_packets(proto, sport, dport, length), seed + rnd)
            t = time.perf_counter()
            v = judge(batch, work, f"{name}{rnd}")
            result["tshark_s"] += time.perf_counter() - t
            result["repair_cpu_s"] += cpu
            for k in ("packets", "malformed", "expert_errors", "checksum_errors", "incomplete_pdus"):
                result[k] += v[k]
            for k, c in v["failures_by_dissector"].items():
                result["failures_by_dissector"][k] = result["failures_by_dissector"].get(k, 0) + c
            for f in v["bad_frames"]:
                key = f"{name} {min(sport[f - 1], dport[f - 1])}"
                result["failed_ports"][key] = result["failed_ports"].get(key, 0) + 1
    return result


def pair_sweep(seed: int, work: Path, rounds: int = 1) -> dict:
    """Every two ports with a template, per transport: packets each way with a short (1..64)
    and a long (up to the MTU) payload per round, repaired and judged; the pairs tshark
    rejects."""
    rng = np.random.default_rng(seed)
    templates = E.load_payloads()
    result = {"packets": 0, "malformed": 0, "expert_errors": 0, "checksum_errors": 0,
              "failed_pairs": {}, "wall_s": 0.0}
    t0 = time.perf_counter()
    for name, proto in [(x, n) for _ in range(rounds) for x, n in TRANSPORTS.items()]:
        ports = np.array(sorted({p for t in templates if name in t.transports for p in t.ports}))
        a, b = np.triu_indices(len(ports), 1)
        lo, hi = ports[a], ports[b]
        sport = np.concatenate([lo, hi, lo, hi])
        dport = np.concatenate([hi, lo, hi, lo])
        k = len(lo)
        length = np.concatenate([rng.integers(1, 65, 2 * k),
                                 rng.integers(65, MAX_PAYLOAD[name] + 1, 2 * k)])
        for s in range(0, len(sport), CHUNK_ROWS):
            sl = slice(s, s + CHUNK_ROWS)
            batch, _ = repaired(raw_packets(proto, sport[sl], dport[sl], length[sl]), seed + s)
            v = judge(batch, work, f"pairs-{name}")
            for key in ("packets", "malformed", "expert_errors", "checksum_errors"):
                result[key] += v[key]
            for f in v["bad_frames"] + v["incomplete_frames"]:
                i = s + f - 1
                pair = f"{name} {min(sport[i], dport[i])} {max(sport[i], dport[i])}"
                result["failed_pairs"][pair] = result["failed_pairs"].get(pair, 0) + 1
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    return result


# --- deriving measured.yaml --------------------------------------------------------------------

FILLS = (0x00, 0x01, 0x41)
PROBE = (1, 2, 3, 4, 5, 6, 8, 12, 16, 24, 33, 48, 64, 100, 257, 600, 1001)
PARTNER = 65535          # the other port while deriving: higher than the port measured
CHUNK_ROWS = 40_000     # packets per tshark run while deriving (bounds memory)


def candidates() -> list:
    """Payload templates to try on a port, simplest first: plain fills, then a head of the fill
    byte with a 2- or 4-byte length field (of what follows it, or of the whole message)."""
    out = [[{"name": "data", "fill": f}] for f in FILLS]
    # text protocols over TCP wait for the end of a line (or of a header block)
    out += [[{"name": "line", "fill": "a"}, {"name": "end", "text": end}] for end in ("\r\n", "\r\n\r\n")]
    for width, offsets in ((2, range(8)), (4, (0, 4))):
        for at in offsets:
            for covers in (None, E.WHOLE_MESSAGE):
                for f in FILLS[:2]:
                    head = [{"name": "head", "hex": f"{f:02x}" * at}] if at else []
                    length = {"name": "length", "bytes": width, "compute": "message_length"}
                    if covers:
                        length["covers"] = covers
                    out.append(head + [length, {"name": "data", "fill": f}])
    return out


def rendered(template, proto: int, sport, dport, length) -> PacketBatch:
    """Raw packets whose payloads are ``template``'s message (through repair's renderer)."""
    table = PL.PayloadTable((template,), {proto: np.zeros((1, 65536), np.int64)}, {})
    body = np.zeros((len(length), int(max(length.max(initial=0), 1))), np.uint8)
    PL.render(table, np.zeros(len(length), np.int64), length, body)
    return raw_packets(proto, sport, dport, length, body)


def both_ways(ports, lengths) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sport, dport, length): every port with every length, to PARTNER and from it (a
    dissector may read a request and a response differently)."""
    p = np.repeat(np.asarray(ports), len(lengths))
    length = np.tile(np.asarray(lengths), len(ports))
    other = np.full(len(p), PARTNER)
    return np.concatenate([p, other]), np.concatenate([other, p]), np.concatenate([length, length])


def failing(proto: int, template, ports, lengths, work: Path) -> np.ndarray:
    """(ports, lengths) bool: tshark rejects ``template``'s message there, either way (the port
    the lower one)."""
    ports, lengths = np.asarray(ports), np.asarray(lengths)
    step = max(1, CHUNK_ROWS // (2 * len(lengths)))
    out = []
    for k in range(0, len(ports), step):
        sport, dport, length = both_ways(ports[k:k + step], lengths)
        bad = _rejected(rendered(template, proto, sport, dport, length), work)
        out.append(bad.reshape(2, -1, len(lengths)).any(axis=0))
    return np.concatenate(out) if out else np.zeros((0, len(lengths)), bool)


def _rejected(batch: PacketBatch, work: Path) -> np.ndarray:
    path = work / "derive.pcap"
    write_pcap(path, batch)
    v = tshark_check(str(path), checksums=False)
    bad = np.zeros(len(batch), bool)
    # a message still waiting for more bytes was never judged: it would swallow the next one
    bad[np.asarray(v["bad_frames"] + v["incomplete_frames"], np.int64) - 1] = True
    return bad


def derive(work: Path, templates: tuple) -> list[dict]:
    """Measured templates for every port whose dissector rejects what the other templates and
    the default write: per port the candidate from whose ``min_length`` on every length passes
    (lowest wins, simplest first), growing the shorter lengths at which the default fails."""
    rules = E.load_rules()
    table = PL.payload_table(rules, templates)
    cands = [E.payload_template("candidates", {"name": "c", "transport": "udp", "ports": [1],
                                               "message": m}) for m in candidates()]
    entries = []
    for name, proto in TRANSPORTS.items():
        top = MAX_PAYLOAD[name]
        probe = np.array([x for x in PROBE if x <= top] + [top])
        # 1. Discovery: every port with what repair writes now, at the probe lengths.
        owned = []
        step = CHUNK_ROWS // (2 * len(probe))
        for k in range(1, PARTNER, step):
            sport, dport, length = both_ways(np.arange(k, min(k + step, PARTNER)), probe)
            n = len(sport)
            pick, length = PL.choose(table, np.full(n, proto), sport, dport, length, np.full(n, top))
            body = np.zeros((n, top), np.uint8)
            PL.render(table, pick, length, body)
            bad = _rejected(raw_packets(proto, sport, dport, length, body), work)
            owned.append(np.unique(np.minimum(sport, dport)[bad]))
        owned = np.concatenate(owned)
        print(f"{name}: {len(owned)} ports reject the current payloads", file=sys.stderr)
        if not len(owned):
            continue
        # 2. Every candidate at the probe lengths; per port the lowest start wins.
        starts = np.full((len(cands), len(owned)), 1 << 20)
        for c, cand in enumerate(cands):
            fails = failing(proto, cand, owned, probe, work)
            last = np.where(fails.any(axis=1), probe[fails.shape[1] - 1 - np.argmax(fails[:, ::-1], axis=1)], 0)
            starts[c] = np.where(fails[:, -1], 1 << 20, last + 1)
        # 3. The winners on every length; a port whose winner fails at a longer length than the
        # probes showed tries the next candidate.
        lengths = np.arange(1, top + 1)
        zero = failing(proto, cands[0], owned, lengths, work)   # the default's own verdicts
        order = np.argsort(starts, axis=0, kind="stable")
        chosen = {}
        for attempt in range(3):
            todo = [j for j in range(len(owned)) if j not in chosen]
            by_cand = {}
            for j in todo:
                c = int(order[attempt, j])
                if starts[c, j] < (1 << 20):
                    by_cand.setdefault(c, []).append(j)
            for c, js in by_cand.items():
                fails = failing(proto, cands[c], owned[js], lengths, work)
                for k, j in enumerate(js):
                    bad_at = lengths[fails[k]]
                    start = int(bad_at[-1]) + 1 if len(bad_at) else 1
                    # reachable by every row (an IPv6 one has 20 bytes less room) and near
                    # what the probes showed
                    if start <= min(top - 20, 2 * max(int(starts[c, j]), 64)):
                        chosen[j] = (c, start)
        for j, port in enumerate(owned):
            if j not in chosen:     # no content passes: rows on this port carry none
                print(f"{name} {port}: no candidate passes; empty", file=sys.stderr)
                entries.append({"name": f"measured-{name}-{port}", "transport": name,
                                "ports": [int(port)], "empty": True})
                continue
            c, start = chosen[j]
            below = lengths[:start - 1][zero[j, :start - 1]]
            entries.append({"name": f"measured-{name}-{port}", "transport": name,
                            "ports": [int(port)], "min_length": max(start, cands[c].fixed),
                            "grow_below": int(below[-1]) + 1 if len(below) else 0,
                            "message": candidates()[c]})
    return _merged(entries)


def _merged(entries: list[dict]) -> list[dict]:
    """Ports with the same message and lengths share one entry."""
    out: dict[str, dict] = {}
    for e in entries:
        key = json.dumps({k: v for k, v in e.items() if k not in ("name", "ports")}, sort_keys=True)
        if key in out:
            out[key]["ports"] += e["ports"]
        else:
            out[key] = e
    for e in out.values():
        e["name"] = f"measured-{e['transport']}-{e['ports'][0]}"
    return list(out.values())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4, help="sweeps over every port (new lengths)")
    ap.add_argument("--ports", type=int, default=65535, help="sweep ports 1..N")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--derive", action="store_true",
                    help="measure protocol_rules/payloads/measured.yaml again (rewrites it)")
    ap.add_argument("--pairs", action="store_true",
                    help="sweep every two ports that both have a template, instead of every port")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    args.rounds_given = any(a.startswith("--rounds") for a in (argv if argv is not None else sys.argv[1:]))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.derive:
            keep = tuple(t for t in E.load_payloads() if Path(t.path).name != "measured.yaml")
            entries = derive(work, keep)
            _write_measured(entries)
            print(f"wrote {len(entries)} measured templates", file=sys.stderr)
            return 0         # the sweep loads the new file in a fresh run
        if args.pairs:
            result = pair_sweep(args.seed, work, args.rounds if args.rounds_given else 1)
            print(json.dumps({**result, "failed_pairs": len(result["failed_pairs"])}, indent=1))
            if args.json:
                Path(args.json).write_text(json.dumps(result, indent=1))
            return 0 if result["malformed"] == result["expert_errors"] == 0 else 1
        t0 = time.perf_counter()
        result = sweep(args.rounds, args.seed, args.ports, work)
        result["wall_s"] = round(time.perf_counter() - t0, 1)
    result["repair_cpu_s"] = round(result["repair_cpu_s"], 1)
    result["tshark_s"] = round(result["tshark_s"], 1)
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0 if result["malformed"] == result["expert_errors"] == result["checksum_errors"] == 0 else 1


def _write_measured(entries: list[dict]) -> None:
    import yaml

    about = ("Written by benchmarks/port_sweep.py --derive: ports whose dissector rejects the "
             "default and the protocol templates, and per port the fill from whose min_length on "
             "tshark accepts every length; shorter lengths at which the default fails grow "
             f"(grow_below). Measure again after a tshark upgrade. Measured with {_tshark_version()}")
    text = yaml.safe_dump({"about": about}, width=96) + "templates:\n" + "".join(
        "  - " + yaml.safe_dump(e, default_flow_style=True, sort_keys=False, width=1000)
        for e in entries)
    (E.rules_dir() / "payloads" / "measured.yaml").write_text(text)


def _tshark_version() -> str:
    import subprocess

    out = subprocess.run(["tshark", "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else "unknown"


if __name__ == "__main__":
    sys.exit(main())
