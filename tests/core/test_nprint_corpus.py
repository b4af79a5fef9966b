"""`netdiff nprint` on the odd-capture corpus (tests/core/nprintcorpus.py) and the encapsulation
corpus (tests/core/linkcorpus.py), against the nPrint 1.2.1 tool.

Without the tool, its output is known here by the SHA-256 of the CSV it wrote for every file and
flag set where it agreed byte for byte with netdiff (tests/core/nprint_corpus_hashes.json, written
by ``benchmarks/nprint_corpus.py --record``): netdiff must keep writing exactly those bytes. Every
divergence docs/nprint.md lists is checked on netdiff's side with the values it must write. With
the tool (``NPRINT=/path/to/nprint``), the benchmark's comparison runs over both corpora and every
flag set and must find nothing but identical files and documented divergences.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from linkcorpus import write_corpus as write_link_corpus
from nprintcorpus import corpus, write_corpus

HERE = Path(__file__).parent
REPO = HERE.parents[1]
HASHES = json.loads((HERE / "nprint_corpus_hashes.json").read_text())
sys.path.insert(0, str(REPO / "benchmarks"))
import nprint_corpus as bench  # noqa: E402

ISSUE_FLAGS = bench.FLAG_SETS["issue"]
NPRINT = os.environ.get("NPRINT")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("nprintcorpus")
    return {**write_corpus(d / "odd"), **{p.name: p for p in write_link_corpus(d / "link").values()}}


def run(files, tmp_path, name, flags):
    out = tmp_path / f"{name}.csv"
    code, err = bench.run_netdiff(files[name], flags, out)
    return code, err, out


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def rows(path: Path) -> tuple[list[str], list[list[str]]]:
    lines = path.read_text().splitlines()
    return lines[0].split(","), [ln.split(",") for ln in lines[1:]]


def test_corpus_covers_every_link_type_of_the_issue():
    issue = {127, 107, 9, 8, 104, 182, 195, 178, 137, 129, 50, 123, 285, 284, 149, 132, 105}
    linktypes = set()
    for name, data in corpus().items():
        if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
            linktypes.add(int.from_bytes(data[20:24], "little"))
    assert issue <= linktypes


@pytest.mark.slow
@pytest.mark.parametrize("flag_set", sorted(bench.FLAG_SETS))
def test_every_file_gives_nprints_bytes_or_a_clean_refusal(files, tmp_path, flag_set):
    """No internal error on any file; on every file and flag set where nPrint 1.2.1 agreed with
    netdiff when recorded, netdiff still writes nPrint's bytes."""
    flags = bench.FLAG_SETS[flag_set]
    recorded = HASHES["identical"][flag_set]
    same_input = changed = 0
    for name, path in files.items():
        code, err, out = run(files, tmp_path, name, flags)
        assert code in (0, 1) and "Traceback" not in err and "internal error" not in err, (name, err)
        if code == 1:
            assert name in ("zero_bytes.pcap", "not_a_capture.pcap") and len(err.strip().splitlines()) == 1, err
            continue
        if name in recorded:
            capture, nprint = recorded[name]
            if capture == sha(path.read_bytes()):
                same_input += 1
                if sha(out.read_bytes()) != nprint:
                    changed += 1
                    print("differs from nPrint's recorded output:", name)
    assert changed == 0
    # the corpus is built as it was when the hashes were recorded (scapy pinned in constraints.txt)
    assert same_input >= 0.9 * len(recorded) > 0


def test_wired_rows_have_no_transmitter_address(files, tmp_path):
    """-O 5 is nPrint's 802.11 transmitter address: NULL on every other row (was the Ethernet
    source MAC)."""
    code, err, out = run(files, tmp_path, "ethernet.pcap", ["-4", "-O", "5"])
    assert code == 0, err
    head, body = rows(out)
    assert head[0] == "tx_mac" and len(body) == 4 and {r[0] for r in body} == {"NULL"}


def test_transmitter_address_after_radiotaps_own_length(files, tmp_path):
    """nPrint reads addr2 56 bytes into the frame whatever radiotap's length; netdiff after it."""
    code, err, out = run(files, tmp_path, "link127_radiotap.pcap", ["-r", "-O", "5"])
    assert code == 0, err
    _, body = rows(out)
    idx = [r[0] for r in body]
    assert idx[:3] == ["02:00:00:00:00:02"] * 3            # data frames: addr2, short radiotap header
    assert idx[4:7] == ["02:00:00:00:00:02"] * 3           # the same behind a longer radiotap header
    assert idx[3] == idx[7] == "02:00:00:00:00:09"         # beacons
    assert idx[8:] == ["None", "None"]                     # ACK, CTS: no transmitter


def test_timestamps_across_2038(files, tmp_path):
    code, err, out = run(files, tmp_path, "across_2038.pcap", ISSUE_FLAGS)
    assert code == 0, err
    _, body = rows(out)
    sec = [int(r[2]) for r in body]
    assert sec == [2 ** 31 - 60 + 30 * i for i in range(5)] and sec[-1] >= 2 ** 31
    assert [int(r[1]) for r in body] == [0] + [30_000_000] * 4


def test_epoch_zero_restarts_rts_like_nprint(files, tmp_path):
    """nPrint takes a previous tv_sec of 0 for "no previous row": rts is 0 for a row after one at tv_sec 0."""
    code, err, out = run(files, tmp_path, "epoch_zero.pcap", ISSUE_FLAGS)
    assert code == 0, err
    _, body = rows(out)
    assert [r[1] for r in body] == ["0", "0", "0", "0", "250000"]


def test_bytes_beyond_a_snaplen_are_fill(files, tmp_path):
    """Frames cut 24 bytes in: the IP protocol byte is captured, so each gets a row, with only the
    10 captured IP bytes as bits (nPrint prints whatever its buffer holds past the capture)."""
    code, err, out = run(files, tmp_path, "snaplen24.pcap", ISSUE_FLAGS)
    assert code == 0, err
    head, body = rows(out)
    v4 = [k for k, h in enumerate(head) if h.startswith("ipv4_")]
    tcp = [k for k, h in enumerate(head) if h.startswith(("tcp_", "udp_", "icmp_"))]
    assert len(body) == 5
    assert "-1" not in [body[0][k] for k in v4[:80]] and {body[0][k] for k in v4[80:]} == {"-1"}
    assert all({r[k] for k in tcp} == {"-1"} for r in body)
    assert body[0][0] == "0.0.0.0"                         # source address not captured: read as zeros


def test_frames_too_short_for_an_ip_protocol_byte_get_no_row(files, tmp_path):
    code, err, out = run(files, tmp_path, "snaplen20.pcap", ISSUE_FLAGS)
    assert code == 0 and rows(out)[1] == [] and "truncated IP header" in err


def test_payload_of_ipv6_tcp_is_the_bytes_after_the_tcp_header(files, tmp_path):
    """nPrint 1.2.1 points its IPv6 TCP payload 20 x (TCP header length) bytes past the TCP
    header (pointer arithmetic on a struct pointer); netdiff writes the payload."""
    code, err, out = run(files, tmp_path, "link101_raw.pcap", ["-6", "-t", "-p", "10"])
    assert code == 0, err
    head, body = rows(out)
    pay = [k for k, h in enumerate(head) if h.startswith("payload_bit")]
    v6tcp = body[4]
    assert v6tcp[0] == "2001:db8::5"
    bits = np.unpackbits(np.frombuffer(b"sixpayload", np.uint8)).astype(str).tolist()
    assert [v6tcp[k] for k in pay] == bits


def test_ip_length_below_its_headers_gives_fill_payload(files, tmp_path):
    """nPrint computes payload length = IP length - headers in 32 bits and, below zero, reads
    until it crashes; netdiff writes the row with no payload."""
    code, err, out = run(files, tmp_path, "ip_length_mismatch.pcap", ["-4", "-t", "-u", "-p", "10"])
    assert code == 0, err
    head, body = rows(out)
    pay = [k for k, h in enumerate(head) if h.startswith("payload_bit")]
    assert len(body) == 3
    assert {body[1][k] for k in pay} == {"-1"}            # IP length 20 < 20 + 32 header bytes
    assert "-1" not in [body[0][k] for k in pay]          # IP length past the frame: payload that is there


def test_radiotap_rows_have_fill_payload(files, tmp_path):
    code, err, out = run(files, tmp_path, "link127_radiotap.pcap", ["-4", "-p", "4"])
    assert code == 0, err
    _, body = rows(out)
    assert len(body) == 10 and all(set(r[1:]) == {"-1"} for r in body)


def test_pcapng_interfaces_of_different_link_types_are_all_read(files, tmp_path):
    """libpcap (so nPrint) stops at the second interface's link type; netdiff reads every packet."""
    code, err, out = run(files, tmp_path, "pcapng_two_link_types.pcapng", ISSUE_FLAGS)
    assert code == 0, err
    assert [r[0] for r in rows(out)[1]] == ["10.0.0.1", "10.0.0.3", "2001:db8::1"]


def test_files_that_are_no_capture_are_refused_in_one_line(files, tmp_path):
    """nPrint writes its header line and crashes on these."""
    for name in ("zero_bytes.pcap", "not_a_capture.pcap"):
        code, err, out = run(files, tmp_path, name, ISSUE_FLAGS)
        assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_libpcap_reading_rules(files, tmp_path):
    """Nanosecond files are cut to microseconds, big-endian files read, a truncated last record
    ends the rows, a header-only capture gives the header line, out-of-range microseconds kept."""
    def body(name):
        code, err, out = run(files, tmp_path, name, ISSUE_FLAGS)
        assert code == 0, err
        return rows(out)[1]
    assert [r[3] for r in body("nanosecond.pcap")] == [str(123456 + 0) for _ in range(5)]
    assert [r[3] for r in body("big_endian_nano.pcap")] == ["999999"] * 5
    from nprintcorpus import IP_MIX, ether, timed
    from pcapgen import pcap
    (tmp_path / "le.pcap").write_bytes(pcap(timed([ether(x) for x in IP_MIX])))
    files["le.pcap"] = tmp_path / "le.pcap"
    assert body("big_endian.pcap") == body("le.pcap") and len(body("le.pcap")) == 5
    assert len(body("truncated_file.pcap")) == 2
    assert body("empty.pcap") == []
    assert [r[3] for r in body("usec_overflow.pcap")] == [str(1_500_000 + i) for i in range(5)]


@pytest.mark.skipif(not NPRINT, reason="set NPRINT=/path/to/nprint (nPrint 1.2.1) to compare with the tool")
def test_against_the_nprint_tool(tmp_path):
    """Every file of both corpora, every flag set: identical or a documented divergence."""
    out = tmp_path / "bench.json"
    code = bench.main(["--nprint", NPRINT, "--json", str(out), "-q"])
    res = json.loads(out.read_text())
    bad = [(r["flags"], r["file"], r["verdict"], r["note"]) for r in res["files"]
           if r["verdict"].split(" (")[0] in ("differs", "internal")]
    assert bad == [] and code == 0


@pytest.mark.skipif(not NPRINT, reason="set NPRINT=/path/to/nprint (nPrint 1.2.1) to compare with the tool")
def test_nprints_ipv6_tcp_payload_offset(tmp_path):
    """The divergence docs/nprint.md describes: nPrint's payload starts 20 x doff x 4 bytes into the TCP header."""
    import subprocess

    from scapy.layers.inet import TCP
    from scapy.layers.inet6 import IPv6
    from scapy.packet import Raw

    from pcapgen import pcap

    data = bytes(range(256)) * 3
    pkt = bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / TCP(sport=1, dport=2) / Raw(data))
    src = tmp_path / "v6.pcap"
    src.write_bytes(pcap([pkt], linktype=101))
    csv = tmp_path / "v6.csv"
    subprocess.run([NPRINT, "-P", str(src), "-6", "-p", "4", "-W", str(csv)], check=True)
    head, body = rows(csv)
    pay = [int(body[0][k]) for k, h in enumerate(head) if h.startswith("payload_bit")]
    at = 40 + 20 * 20                                     # doff 5: 20-byte header, read at tcph + 20 * 20
    assert pay == np.unpackbits(np.frombuffer(pkt[at:at + 4], np.uint8)).tolist()
