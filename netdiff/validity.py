"""``netdiff validate``: is every packet of a capture valid?

Three independent checks per file:
(a) tshark with checksum validation on for IP, TCP, UDP (ICMP is always checked): malformed
    packets, bad checksums, expert-info entries of severity "error";
(b) tcpreplay of the file into a veth pair that lives inside a network namespace netdiff
    creates and removes itself (never a real interface); skipped, with the reason, without root
    or namespaces;
(c) netdiff's own rule checks: the same protocol_rules/*.yaml the repair applies.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
from functools import lru_cache

import numpy as np

from netdiff.bits import codec
from netdiff.bits.fields import (ADDRESSES, FIELDS, FIXED_BYTES, LENGTH_FIELDS, VERSION_SECTIONS,
                                 header_bytes, header_length, per_section, read_field,
                                 read_field_bytes, total_length)
from netdiff.errors import NetdiffError
from netdiff.io.pcap import CaptureReader
from netdiff.rules import checksum as C
from netdiff.rules import engine as E

SEVERITY_ERROR = 0x800000           # Wireshark's PI_ERROR
CHECKSUM_BAD = {"0", "4"}           # PROTO_CHECKSUM_E_BAD, PROTO_CHECKSUM_E_ILLEGAL
TSHARK_PREFS = ("ip.check_checksum:TRUE", "tcp.check_checksum:TRUE", "udp.check_checksum:TRUE")
_SHOULD_BE = re.compile(r"\[should be 0x[0-9a-fA-F]+\]")
_AGG = "\x1f"                       # unit separator: never inside an expert message


# --- (a) tshark -------------------------------------------------------------------------------

# Dissectors kept with ``app_layers=False`` (``--transport-only``): link, IP and transport
# layers. By default every dissector tshark applies judges the packet, as a user opening the
# capture in Wireshark sees it; the transport-only mode still counts what the application
# dissectors call malformed (app_layer_malformed), without failing on it.
TRANSPORT_PROTOCOLS = ("frame", "eth", "ethertype", "vlan", "ip", "ipv6", "tcp", "udp", "icmp",
                       "data", "_ws.expert", "_ws.malformed", "_ws.lua", "pkt_comment")
TSHARK_FIELDS = ("frame.number", "_ws.malformed", "_ws.expert.severity", "_ws.expert.message",
          "ip.checksum.status", "tcp.checksum.status", "udp.checksum.status",
          "icmp.checksum.status", "frame.protocols", "tcp.srcport", "tcp.dstport", "udp.srcport",
          "udp.dstport", "tcp.segment_data")
CHECKSUM_LAYERS = ("ip", "tcp", "udp", "icmp")      # TSHARK_FIELDS' checksum status columns, in order
FAILURES_LISTED = 20


@lru_cache(maxsize=2)
def _other_protocols(exe: str) -> tuple[str, ...]:
    """Every protocol this tshark knows except TRANSPORT_PROTOCOLS (tshark 4.0 has no
    "disable all": each must be named on its own --disable-protocol)."""
    proc = subprocess.run([exe, "-G", "protocols"], capture_output=True, text=True)
    names = [ln.split("\t")[2] for ln in proc.stdout.split("\n") if ln.count("\t") >= 2]
    return tuple(n for n in names if n and n not in TRANSPORT_PROTOCOLS)


def tshark_check(path: str, app_layers: bool = True, checksums: bool = True) -> dict:
    """tshark's verdict per file: every layer it dissects (``app_layers=False``: link, IP and
    transport only, with the application layers' malformed count reported apart).
    ``checksums=False`` leaves IP/TCP/UDP checksums unverified (tshark's default), for judging
    payloads of packets built without them."""
    out = _tshark(path, not app_layers, checksums)
    if not app_layers:
        full = _tshark(path, False, checksums)
        out["app_layer_malformed"] = full["malformed"]
    return out


def _tshark(path: str, restrict: bool, checksums: bool = True) -> dict:
    exe = shutil.which("tshark")
    if exe is None:
        raise NetdiffError("tshark not found: install the Debian package 'tshark' "
                           "(apt-get install tshark)")
    cmd = [exe, "-n", "-r", str(path)]
    if restrict:
        for name in _other_protocols(exe):
            cmd += ["--disable-protocol", name]
    for p in TSHARK_PREFS if checksums else ():
        cmd += ["-o", p]
    cmd += ["-T", "fields", "-E", "occurrence=a", "-E", f"aggregator={_AGG}", "-E", "quote=n"]
    for f in TSHARK_FIELDS:
        cmd += ["-e", f]
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    if proc.returncode != 0:
        msg = proc.stderr.strip().splitlines()
        raise NetdiffError(f"{path}: tshark failed: {msg[-1] if msg else proc.returncode}")
    return read_verdicts(proc.stdout)


def read_verdicts(text: str) -> dict:
    """Counts, the first failures (frame, dissector, transport and ports, what), failures per
    dissector, and the frames whose TCP data a dissector still waited to reassemble when the
    capture ended (``incomplete_pdus``: reported, not judged; tshark shows no error for them)
    from tshark's ``-T fields`` output of TSHARK_FIELDS."""
    packets = malformed = cks = errors = 0
    bad_frames: list[int] = []
    pending: list[int] = []         # TCP data a dissector is still waiting to reassemble
    failures: list[dict] = []
    by_dissector: dict[str, int] = {}
    messages: dict[str, int] = {}
    for line in text.split("\n"):   # not splitlines(): it splits on \x1c-\x1e too
        cols = line.split("\t")
        if len(cols) < len(TSHARK_FIELDS) or not cols[0]:
            continue
        packets += 1
        frame = int(cols[0])
        is_mal = bool(cols[1])
        sev = [int(s) for s in cols[2].split(_AGG) if s]
        msgs = cols[3].split(_AGG) if cols[3] else []
        err_msgs = [m for s, m in zip(sev, msgs) if s >= SEVERITY_ERROR]
        bad_layers = [name for name, st in zip(CHECKSUM_LAYERS, cols[4:8])
                      if any(s in CHECKSUM_BAD for s in st.split(_AGG))]
        is_err = bool(err_msgs)
        malformed += is_mal
        cks += bool(bad_layers)
        errors += is_err
        for m in err_msgs:
            m = _SHOULD_BE.sub("[should be ...]", m)
            messages[m] = messages.get(m, 0) + 1
        if cols[13]:
            pending.append(frame)
        if not (is_mal or bad_layers or is_err):
            continue
        bad_frames.append(frame)
        # The innermost dissector is the one that threw (malformed) or added the error; a bad
        # checksum belongs to its own layer.
        dissector = bad_layers[0] if bad_layers and not is_mal else cols[8].split(":")[-1]
        transport = "tcp" if cols[9] else "udp" if cols[11] else ""
        sport, dport = (cols[9], cols[10]) if transport == "tcp" else (cols[11], cols[12])
        where = f"{transport} {sport} -> {dport}" if transport else "no transport"
        lo, hi = sorted((int(sport), int(dport))) if transport else (0, 0)
        key = f"{dissector} ({transport} ports {lo}, {hi})" if transport else dissector
        by_dissector[key] = by_dissector.get(key, 0) + 1
        if len(failures) < FAILURES_LISTED:
            what = "malformed" if is_mal else (_SHOULD_BE.sub("[should be ...]", err_msgs[0])
                                               if is_err else f"{dissector} checksum bad")
            failures.append({"frame": frame, "dissector": dissector, "where": where, "what": what})
    top = dict(sorted(messages.items(), key=lambda kv: -kv[1])[:8])
    return {"packets": packets, "malformed": malformed, "checksum_errors": cks,
            "expert_errors": errors, "expert_error_messages": top, "bad_frames": bad_frames,
            "incomplete_pdus": len(pending), "incomplete_frames": pending,
            "failures": failures,
            "failures_by_dissector": dict(sorted(by_dissector.items(), key=lambda kv: -kv[1]))}


# --- (b) tcpreplay in a namespace -------------------------------------------------------------

def replay_unavailable() -> str | None:
    """Why replay cannot run here, or None."""
    if os.name != "posix" or not hasattr(os, "geteuid"):
        return "skipped: needs Linux network namespaces"
    if os.geteuid() != 0:
        return "skipped: needs root to create a network namespace and veth pair"
    for tool in ("tcpreplay", "ip"):
        if shutil.which(tool) is None:
            pkg = "tcpreplay" if tool == "tcpreplay" else "iproute2"
            return f"skipped: {tool} not found (Debian package {pkg})"
    return None


def _ip(*args, check=True):
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip() or f"ip {' '.join(args)} failed")
    return proc


def replay(path: str, expected: int) -> dict | str:
    """Replay into veth ndA (inside a fresh namespace) and count what its peer ndB received."""
    why = replay_unavailable()
    if why:
        return why
    ns = f"netdiff-{os.getpid()}-{secrets.token_hex(3)}"
    try:
        _ip("netns", "add", ns)
    except RuntimeError as e:
        return f"skipped: cannot create a network namespace ({e})"
    try:
        # Both ends are created inside the namespace: nothing touches the host's interfaces.
        _ip("-n", ns, "link", "add", "ndA", "type", "veth", "peer", "name", "ndB")
        for dev in ("ndA", "ndB", "lo"):
            _ip("-n", ns, "link", "set", dev, "up")
        rx0 = _rx(ns)
        proc = subprocess.run(["ip", "netns", "exec", ns, "tcpreplay", "--topspeed", "-i", "ndA",
                               str(path)], capture_output=True, text=True)
        out = proc.stdout + proc.stderr
        ok = _stat(out, "Successful packets")
        failed = _stat(out, "Failed packets")
        if proc.returncode != 0 and ok is None:
            last = [ln for ln in out.strip().splitlines() if ln.strip()]
            return {"sent": 0, "failed": expected, "received": 0,
                    "error": last[-1] if last else f"tcpreplay exit {proc.returncode}"}
        received = _rx(ns) - rx0
        return {"sent": ok or 0, "failed": failed or 0, "received": received}
    except RuntimeError as e:
        return f"skipped: cannot set up the veth pair ({e})"
    finally:
        _ip("netns", "del", ns, check=False)


def _stat(text: str, label: str) -> int | None:
    m = re.search(rf"{label}:\s+(\d+)", text)
    return int(m.group(1)) if m else None


def _rx(ns: str) -> int:
    p = subprocess.run(["ip", "netns", "exec", ns, "cat", "/sys/class/net/ndB/statistics/rx_packets"],
                       capture_output=True, text=True)
    try:
        return int(p.stdout.strip())
    except ValueError:
        return 0


# --- (c) netdiff's own rules --------------------------------------------------------------------

def check_batch(batch, rules: dict | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({rule: bool mask of packets breaking it}, mask of packets the rules could read)."""
    rules = rules or E.load_rules()
    p = codec.parse(batch)
    n = len(batch)
    checked = p.reason == 0
    fails: dict[str, np.ndarray] = {}

    def add(name, mask):
        if mask.any():
            fails[name] = fails.get(name, np.zeros(n, bool)) | mask

    # Whole IP packets as a zero-padded matrix (for checksums), chunked to bound memory.
    l3 = p.l3
    ip_avail = batch.caplen - l3
    g = p.window
    rows = np.arange(n)
    ip = header_bytes(g, l3)
    ip_total = per_section(p.version, VERSION_SECTIONS, lambda sec: total_length(ip, sec))
    wire_avail = batch.wirelen - l3
    add("IP length beyond the frame", checked & (ip_total > wire_avail))
    complete = checked & (ip_total <= ip_avail)

    # Field values against the rule files (fixed headers, read from the gathered window).
    for proto, pr in sorted(rules.items(), key=lambda kv: kv[1].layer):   # masks from bind
        mask, start = (checked & (p.version == pr.bind["version"]), l3) if pr.layer == 3 else \
            (checked & (p.proto == pr.number), p.l4)
        r = rows[mask]
        if not len(r):
            continue
        hdr = header_bytes(g, start[r], rows=r)
        fixed_bits = pr.header.get("fixed_bytes", 8) * 8
        vals = {}
        for fr in pr.fields:
            if fr.offset + fr.bits > fixed_bits or fr.bits > 56:
                continue
            v = read_field(hdr, pr.column(fr.name))
            vals[fr.name] = v
            if fr.check and (fr.values is not None or fr.range is not None):
                bad = np.zeros(n, bool)
                bad[r] = ~fr.legal(v)
                add(f"{pr.column(fr.name)} not a legal value", bad)
        if pr.flags:
            names, _ = pr.flag_table()
            fl = np.stack([vals[k] for k in names], axis=1)
            bad = np.zeros(n, bool)
            bad[r] = ~E.flags_legal(pr, fl)
            add(f"{proto} flags not a legal combination", bad)
        if pr.dependencies:         # the same entries repair applies (engine.apply_dependencies)
            hlen = vals[pr.header["length_field"]] * pr.header["length_unit"] \
                if "length_field" in pr.header else pr.header["fixed_bytes"]
            payload = ip_total[r] - (p.ip_hlen[r] if pr.layer == 4 else 0) - hlen
            for name, m in E.dependency_failures(pr, vals, payload).items():
                bad = np.zeros(n, bool)
                bad[r] = m
                add(name, bad)
        if pr.types:
            pairs = pr.icmp_pairs()
            tc = vals["type"] * 256 + vals["code"]
            bad = np.zeros(n, bool)
            bad[r] = ~np.isin(tc, pairs[:, 0] * 256 + pairs[:, 1])
            add("icmp type/code not a legal pair", bad)
        if pr.options is not None:
            hl = header_length(hdr, pr.section)
            optlen = np.clip(hl - FIXED_BYTES[pr.section], 0, pr.options.max_bytes)
            ob = read_field_bytes(hdr, LENGTH_FIELDS[pr.section][2])[:, :pr.options.max_bytes]
            full = {k: vals[k] == 1 for k in pr.options.flag_names()}
            _, changed = E.walk_options(pr.options, ob, optlen, full, keep_unknown=True)
            bad = np.zeros(n, bool)
            bad[r] = changed
            add(f"{proto} options break the option grammar", bad)
            if pr.layer == 4:
                bad = np.zeros(n, bool)
                bad[r] = hl > ip_total[r] - p.ip_hlen[r]
                add(f"{proto} header longer than the IP payload", bad)
        dl = pr.computed("datagram_length")
        if dl is not None:
            bad = np.zeros(n, bool)
            bad[r] = vals[dl.name] != ip_total[r] - p.ip_hlen[r]
            add(f"{proto} length disagrees with the IP length", bad)

    # Checksums over complete packets.
    ok_ck = _checksums(batch, p, ip_total, complete, rules)
    for name, bad in ok_ck.items():
        add(name, bad)
    return fails, checked


def _checksums(batch, p, ip_total, complete, rules) -> dict[str, np.ndarray]:
    n = len(batch)
    ip4 = rules["ipv4"]
    carried = [rules[x] for x in E.layer_protocols(rules, 4).values() if rules[x].checksum is not None]
    out = {k: np.zeros(n, bool) for k in [f"{ip4.protocol} header checksum wrong"] +
           [f"{pr.protocol} checksum wrong" for pr in carried]}
    idx = np.flatnonzero(complete)
    budget = 1 << 24
    i = 0
    while i < len(idx):
        width = int(ip_total[idx[i]])
        j = i
        while j < len(idx) and (j - i + 1) * max(width, int(ip_total[idx[j]])) <= budget:
            width = max(width, int(ip_total[idx[j]]))
            j += 1
        j = max(j, i + 1)
        sel = idx[i:j]
        # room for IPv6 addresses in any chunk
        width = max(int(ip_total[sel].max()), FIELDS[ADDRESSES["ipv6"][1]].end_byte)
        width += width % 2
        col = np.arange(width)
        src = batch.offset[sel, None] + p.l3[sel, None] + col[None, :]
        inside = col[None, :] < ip_total[sel, None]
        mat = np.where(inside, batch.data[np.minimum(src, len(batch.data) - 1)], 0).astype(np.uint8)
        v4 = p.version[sel] == ip4.bind["version"]
        k = len(sel)
        zero = np.zeros(k, np.int64)
        hl = p.ip_hlen[sel]
        seg = ip_total[sel] - hl
        s4 = np.flatnonzero(v4)
        bad4 = ~C.verify(C.covered_sums(mat[s4], ip4, zero[s4], hl[s4], ip_total[sel][s4]))
        out[f"{ip4.protocol} header checksum wrong"][sel[s4]] = bad4
        ip = header_bytes(mat, zero)

        def address(end: int) -> np.ndarray:
            a4, a6 = (read_field_bytes(ip, ADDRESSES[sec][end]) for sec in ("ipv4", "ipv6"))
            return np.where(v4[:, None], np.pad(a4, ((0, 0), (0, a6.shape[1] - a4.shape[1]))), a6)

        srcs, dsts = address(0), address(1)
        l3_name = np.full(k, "", dtype=object)
        for ver, name in E.layer_protocols(rules, 3).items():
            l3_name[p.version[sel] == ver] = name
        for pr in carried:
            m = np.flatnonzero(p.proto[sel] == pr.number)
            if not len(m):
                continue
            good = C.verify(C.covered_sums(mat[m], pr, hl[m], p.l4_hlen[sel][m], seg[m], srcs[m], dsts[m]))
            stored = read_field(header_bytes(mat, hl[m], rows=m), pr.column(pr.checksum["field"]))
            # a zero the file allows over this IP version means "no checksum" (UDP over IPv4)
            none = (stored == 0) & np.isin(l3_name[m], list(pr.checksum.get("optional_over", ())))
            out[f"{pr.protocol} checksum wrong"][sel[m]] = ~good & ~none
        i = j
    return out


# --- all three ---------------------------------------------------------------------------------

def validate_pcaps(paths, *, replay: bool = True, app_layers: bool = True, rules_dir=None) -> dict:
    """Per file and in total: packets, malformed, checksum errors, expert errors, the failing
    dissectors (name, transport and port), replay result (or "skipped: <why>"), rule-check
    failures, ok.

    tshark judges every layer it dissects (``app_layers=False``: the link, IP and transport
    layers only; what application dissectors call malformed is then reported, not judged)."""
    rules = E.load_rules(rules_dir)
    files = []
    for path in paths:
        path = str(path)
        reader = CaptureReader(path)
        rule_fail: dict[str, int] = {}
        rule_bad_packets = 0
        unchecked = 0
        total = 0
        for batch in reader:
            fails, checked = check_batch(batch, rules)
            any_bad = np.zeros(len(batch), bool)
            for k, m in fails.items():
                rule_fail[k] = rule_fail.get(k, 0) + int(m.sum())
                any_bad |= m
            rule_bad_packets += int(any_bad.sum())
            unchecked += int((~checked).sum())
            total += len(batch)
        ts = tshark_check(path, app_layers)
        rep = _replay(path, total) if replay else "skipped: --no-replay"
        replay_ok = not isinstance(rep, dict) or (rep["failed"] == 0 and rep["sent"] == total)
        ok = (ts["malformed"] == 0 and ts["checksum_errors"] == 0 and ts["expert_errors"] == 0
              and rule_bad_packets == 0 and replay_ok and not reader.info.stopped)
        files.append({
            "path": path, "packets": total, "malformed": ts["malformed"],
            "checksum_errors": ts["checksum_errors"], "expert_errors": ts["expert_errors"],
            "expert_error_messages": ts["expert_error_messages"],
            "app_layer_malformed": ts.get("app_layer_malformed", ts["malformed"]),
            "tshark_bad_frames": ts["bad_frames"][:FAILURES_LISTED],
            "tshark_failures": ts["failures"], "failures_by_dissector": ts["failures_by_dissector"],
            "app_layers": app_layers,
            "rule_failures": dict(sorted(rule_fail.items(), key=lambda kv: -kv[1])),
            "rule_failed_packets": rule_bad_packets, "rule_unchecked_packets": unchecked,
            "replay": rep, "capture_problem": reader.info.stopped, "ok": ok,
        })
    tot = {k: sum(f[k] for f in files) for k in ("packets", "malformed", "checksum_errors",
                                                 "expert_errors", "app_layer_malformed",
                                                 "rule_failed_packets",
                                                 "rule_unchecked_packets")}
    reps = [f["replay"] for f in files]
    if reps and all(isinstance(r, dict) for r in reps):
        tot["replay"] = {k: sum(r[k] for r in reps) for k in ("sent", "failed", "received")}
    else:
        skipped = sorted({r for r in reps if isinstance(r, str)})
        tot["replay"] = skipped[0] if len(skipped) == 1 and all(isinstance(r, str) for r in reps) \
            else {"sent": sum(r["sent"] for r in reps if isinstance(r, dict)),
                  "failed": sum(r["failed"] for r in reps if isinstance(r, dict)),
                  "skipped_files": sum(isinstance(r, str) for r in reps)}
    merged: dict[str, int] = {}
    for f in files:
        for k, v in f["failures_by_dissector"].items():
            merged[k] = merged.get(k, 0) + v
    tot["failures_by_dissector"] = dict(sorted(merged.items(), key=lambda kv: -kv[1]))
    tot["files"] = len(files)
    tot["ok"] = all(f["ok"] for f in files)
    return {"files": files, "total": tot, "ok": tot["ok"]}


def _replay(path, total):
    return replay(path, total)
