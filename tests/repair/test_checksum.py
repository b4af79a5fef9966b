import numpy as np
import pytest

from netdiff.rules import checksum as C


def test_rfc1071_example():
    # RFC 1071 section 3: 00 01 f2 03 f4 f5 f6 f7 sums to 0xddf2 after folding.
    m = np.array([[0x00, 0x01, 0xF2, 0x03, 0xF4, 0xF5, 0xF6, 0xF7]], dtype=np.uint8)
    total = C.region_sum(m, np.array([0]), np.array([8]))
    assert int(C.fold(total)[0]) == 0xDDF2
    assert int(C.checksum(total)[0]) == (~0xDDF2) & 0xFFFF


@pytest.mark.parametrize("seed", range(3))
def test_matches_scapy_on_random_regions(seed):
    from scapy.utils import checksum as scapy_checksum

    rng = np.random.default_rng(seed)
    n, width = 50, 101
    m = rng.integers(0, 256, (n, width), dtype=np.uint8)
    start = 2 * rng.integers(0, 20, n)
    length = rng.integers(0, width - 40, n)          # odd and even lengths
    got = C.checksum(C.region_sum(m, start, length))
    for i in range(n):
        want = scapy_checksum(m[i, start[i]:start[i] + length[i]].tobytes())
        assert int(got[i]) == want


def test_verify_and_pseudo_header_against_scapy():
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.inet import UDP

    for pkt in (IP(src="10.1.2.3", dst="192.168.9.8") / TCP(sport=1234, dport=80, seq=7) / b"hello!!",
                IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=53, dport=5353) / b"abc"):
        raw = np.frombuffer(bytes(pkt), dtype=np.uint8)[None, :]
        v6 = raw[0, 0] >> 4 == 6
        hl = 40 if v6 else 20
        src, dst = (raw[:, 8:24], raw[:, 24:40]) if v6 else (raw[:, 12:16], raw[:, 16:20])
        seg = raw.shape[1] - hl
        proto = 17 if v6 else 6
        total = C.region_sum(raw, np.array([hl]), np.array([seg])) + \
            C.pseudo_header_sum(src, dst, np.array([proto]), np.array([seg]))
        assert C.verify(total)[0]


def test_odd_start_is_refused():
    with pytest.raises(ValueError):
        C.region_sum(np.zeros((1, 8), np.uint8), np.array([1]), np.array([4]))
