"""TCP timestamp options (RFC 7323) after repair: a clock per flow direction and the peer's
echo, read back with tshark from the written capture."""
from __future__ import annotations

import shutil
import subprocess
from collections import defaultdict

import numpy as np
import pytest

from netdiff.bits.layout import NETDIFFUSION as L
from netdiff.io.pcap import write_pcap
from netdiff.packet_repair import repair
from netdiff.packet_repair.perturb import random_bits
from netdiff.packet_repair.trace import CLOCK_HZ
from netdiff.rules import engine as E

from test_rules_registry import load_error, rules_copy

needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")


def _timestamps(path) -> list[tuple]:
    """(time, stream, source port, ACK, TSval, TSecr) of every segment with the option, in time order."""
    out = subprocess.run(
        ["tshark", "-r", str(path), "-Y", "tcp.options.timestamp.tsval", "-T", "fields",
         "-e", "frame.time_epoch", "-e", "tcp.stream", "-e", "tcp.srcport", "-e", "tcp.flags.ack",
         "-e", "tcp.options.timestamp.tsval", "-e", "tcp.options.timestamp.tsecr"],
        capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        t, stream, sport, ack, tsval, tsecr = line.split("\t")
        # a segment of random bits may hold the option twice: both get the same values
        assert len(set(tsval.split(","))) == len(set(tsecr.split(","))) == 1, line
        rows.append((float(t), int(stream), int(sport), ack in ("1", "True"),
                     int(tsval.split(",")[0]), int(tsecr.split(",")[0])))
    return rows


@needs_tshark
@pytest.mark.parametrize("image", ["web_tcp", "random"])
def test_timestamps_are_a_clock_per_direction_and_echo_the_peer(sample_images, tmp_path, image):
    """On the web sample's image (real option layouts, values of another capture) and on random
    bits: every direction's TSval counts milliseconds from its first segment, and TSecr is the
    other direction's latest TSval (zero before the other side has sent one, or without ACK)."""
    bits = sample_images["web_tcp"] if image == "web_tcp" else random_bits(L, 11)
    res = repair(bits, L, seed=4)
    write_pcap(tmp_path / "out.pcap", res.batch)
    rows = _timestamps(tmp_path / "out.pcap")
    assert len(rows) >= (200 if image == "web_tcp" else 5)
    first, last = {}, {}
    echoed = 0
    for t, stream, sport, ack, tsval, tsecr in rows:
        me = (stream, sport)
        t0, v0 = first.setdefault(me, (t, tsval))
        # tshark reads times as float seconds: allow one tick either way
        assert abs(((tsval - v0) % 2 ** 32) - (t - t0) * CLOCK_HZ) <= 1.01
        peer = [v for (s, p), v in last.items() if s == stream and p != sport]
        want = peer[0] if (peer and ack) else 0
        assert tsecr == want
        echoed += want != 0
        last[me] = tsval
    if image == "web_tcp":
        assert echoed >= 100


def test_without_the_computation_the_generated_values_stay(sample_images, tmp_path, monkeypatch):
    """The YAML selects it: without ``compute: timestamps`` the option keeps what the image had."""
    bits = sample_images["web_tcp"]
    on = repair(bits, L, seed=4).batch
    monkeypatch.setenv(E.RULES_ENV, str(rules_copy(tmp_path, {"tcp.yaml": [
        ("length: 10, compute: timestamps, echo_with: ackf}", "length: 10}")]})))
    off = repair(bits, L, seed=4).batch
    assert len(on) == len(off)
    differ = defaultdict(int)
    for i in range(len(on)):
        differ[on.packet(i) != off.packet(i)] += 1
    assert differ[True] >= 200          # the segments with the option (checksums move too)


@pytest.mark.parametrize("new,expect", [
    ("compute: timestampz, echo_with: ackf}", "option timestamps: unknown compute 'timestampz'"),
    ("compute: sequence, echo_with: ackf}", "option timestamps: unknown compute 'sequence' (option computations"),
    ("compute: timestamps, echo_with: ack}", "option timestamps: echo_with 'ack' is not a field"),
])
def test_bad_option_computation_is_a_one_line_error(tmp_path, new, expect):
    msg = load_error(tmp_path, {"tcp.yaml": [("compute: timestamps, echo_with: ackf}", new)]})
    assert "tcp.yaml" in msg and expect in msg and "\n" not in msg, msg


def test_a_field_cannot_name_an_option_computation(tmp_path):
    msg = load_error(tmp_path, {"tcp.yaml": [("{name: seq, bits: 32, compute: sequence}",
                                              "{name: seq, bits: 32, compute: timestamps}")]})
    assert "tcp.yaml" in msg and "field seq: unknown compute 'timestamps' (field computations" in msg
    assert "\n" not in msg


def test_an_option_computation_on_an_option_of_another_length_is_refused(tmp_path):
    """``compute: timestamps`` writes ten bytes: on the four-byte MSS it would write past it."""
    msg = load_error(tmp_path, {"tcp.yaml": [("{kind: 2, name: mss, length: 4, only_with: syn,",
                                              "{kind: 2, name: mss, length: 4, compute: timestamps, only_with: syn,")]})
    assert "tcp.yaml" in msg and "option mss: compute timestamps writes an option of 10 bytes, not 4" in msg
    assert "\n" not in msg
