"""netdiff's nPrint output must be byte-identical to the nPrint tool's on every shared capture."""
from __future__ import annotations

import gzip
import io

import pytest

from netdiff.bits.layout import Layout
from netdiff.nprint_csv.writer import pcap_to_csv


def test_every_shared_capture_matches_nprint(shared_data, shared_pcaps):
    refs = sorted((shared_data / "nprint_ref").glob("*.csv.gz"))
    assert len(refs) == len(shared_pcaps) > 0
    layout = Layout(sections=("ipv4", "ipv6", "tcp", "udp", "icmp"))
    mismatched = []
    for ref in refs:
        cls, stem = ref.name[:-len(".csv.gz")].split("__", 1)
        buf = io.BytesIO()
        pcap_to_csv(shared_data / "pcaps" / cls / f"{stem}.pcap", buf, layout, relative=True,
                    absolute=True, count=1024)
        if buf.getvalue() != gzip.open(ref).read():
            mismatched.append(ref.name)
    assert mismatched == []


def test_cli_with_nprint_flags_matches(shared_data, tmp_path, cli):
    ref = shared_data / "nprint_ref" / "dns__dnscap_dns.csv.gz"
    out = tmp_path / "o.csv"
    code, _, err = cli("nprint", "-F", "-1", "-P", shared_data / "pcaps/dns/dnscap_dns.pcap",
                       "-4", "-6", "-t", "-u", "-i", "-p", "0", "-c", "1024", "-R", "-A", "-W", out)
    assert code == 0, err
    assert out.read_bytes() == gzip.open(ref).read()
    assert "no row for 10" in err


@pytest.mark.parametrize("flags", [["-4", "-t"], ["-e", "-4", "-u", "-p", "16"], ["-6", "-i", "-O", "4"]])
def test_cli_sections_and_header(shared_data, tmp_path, cli, flags):
    out = tmp_path / "o.csv"
    code, _, err = cli("nprint", "-P", shared_data / "pcaps/voip/sip.pcap", *flags, "-c", "20", "-W", out)
    assert code == 0, err
    header = out.read_text().splitlines()[0].split(",")
    expect = {"-e": "eth_dhost_0", "-4": "ipv4_ver_0", "-6": "ipv6_ver_0", "-t": "tcp_sprt_0",
              "-u": "udp_sport_0", "-i": "icmp_type_0"}
    for f, col in expect.items():
        assert (col in header) == (f in flags)
    if "-p" in flags:
        assert header[-1] == "payload_bit_127"
    assert header[0] == ("flow" if "-O" in flags else "src_ip")


def test_reverse_csv_to_pcap_rebuilds_packets(shared_data, tmp_path, cli):
    """-N: with every header and all payload bytes in the CSV, the packets come back exactly."""
    from netdiff.bits.codec import parse
    from netdiff.io.pcap import read_capture

    src = shared_data / "pcaps/tls_web/443-curl.pcap"
    csv = tmp_path / "full.csv"
    code, _, err = cli("nprint", "-P", src, "-e", "-4", "-6", "-t", "-u", "-i", "-p", "1500", "-A", "-W", csv)
    assert code == 0, err
    code, _, err = cli("nprint", "-N", csv, "-W", tmp_path / "back.pcap")
    assert code == 0, err
    orig, _ = read_capture(src)
    back, _ = read_capture(tmp_path / "back.pcap")
    ok = parse(orig).reason == 0
    idx = ok.nonzero()[0]
    assert len(back) == len(idx)
    for j, i in enumerate(idx):
        p = orig.packet(i)
        ip_total = int.from_bytes(p[16:18], "big") + 14
        assert back.packet(j) == p[:ip_total]          # Ethernet padding is not in nPrint
        assert back.ts_sec[j] == orig.ts_sec[i] and back.ts_nsec[j] == orig.ts_nsec[i]


def test_reverse_without_payload_pads_with_zeros(shared_data, tmp_path, cli):
    src = shared_data / "pcaps/dns/dnscap_dns.pcap"
    csv = tmp_path / "h.csv"
    assert cli("nprint", "-P", src, "-4", "-u", "-R", "-W", csv)[0] == 0
    assert cli("nprint", "-N", csv, "-W", tmp_path / "b.pcap")[0] == 0
    import subprocess
    out = subprocess.run(["tshark", "-r", str(tmp_path / "b.pcap"), "-T", "fields", "-e", "ip.src",
                          "-e", "udp.srcport", "-e", "frame.time_relative"], capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert out[0].startswith("172.17.0.10\t") and len(out) > 50
