"""``netdiff validate``: is every packet of a capture valid?

Three independent checks per file:
(a) tshark with checksum validation on for IP, TCP, UDP (ICMP is always checked): malformed
    packets, bad checksums, expert-info entries of severity "error" (``validation.tshark``);
(b) tcpreplay of the file into a veth pair that lives inside a network namespace netdiff
    creates and removes itself (``validation.tcpreplay``);
(c) netdiff's own rule checks: the same protocol_rules/*.yaml the repair applies
    (``validation.rule_checks``).
"""
from __future__ import annotations

import numpy as np

from netdiff.io.pcap import CaptureReader
from netdiff.rules import engine as E
from netdiff.validation import tcpreplay as R
from netdiff.validation.rule_checks import check_batch
from netdiff.validation.tshark import FAILURES_LISTED, tshark_check


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
        rep = R.replay(path, total) if replay else "skipped: --no-replay"
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
