"""tshark's verdict on a capture: malformed packets, bad checksums, expert errors of severity
"error", and which dissector (and port) failed, as a user opening the capture in Wireshark sees it."""
from __future__ import annotations

import re
import shutil
import subprocess
from functools import lru_cache

from netdiff.errors import NetdiffError

SEVERITY_ERROR = 0x800000           # Wireshark's PI_ERROR
CHECKSUM_BAD = {"0", "4"}           # PROTO_CHECKSUM_E_BAD, PROTO_CHECKSUM_E_ILLEGAL
TSHARK_PREFS = ("ip.check_checksum:TRUE", "tcp.check_checksum:TRUE", "udp.check_checksum:TRUE")
_SHOULD_BE = re.compile(r"\[should be 0x[0-9a-fA-F]+\]")
_AGG = "\x1f"                       # unit separator: never inside an expert message

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
