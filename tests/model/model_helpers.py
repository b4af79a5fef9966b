"""Helpers the model tests import by name (conftest modules are not importable by name: with
several test folders in one run, ``conftest`` is whichever was loaded first)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from netdiff.bits.codec import encode
from netdiff.bits.layout import NETDIFFUSION

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def real_bits(rows: int = 256) -> list[tuple[str, np.ndarray]]:
    """nPrint images of a few real captures (first ``rows`` packets), or skip."""
    from netdiff.io.pcap import read_capture

    picks = ["dns/dnscap_dns.pcap", "ssh/zeek_ssh.pcap", "tls_web/443-curl.pcap", "quic"]
    out = []
    for p in picks:
        path = SHARED / "pcaps" / p
        if path.is_dir():
            found = sorted(path.glob("*.pcap"))
            if not found:
                continue
            path = found[0]
        if not path.is_file():
            continue
        batch, _ = read_capture(path)
        bits, _ = encode(batch.take(np.arange(min(rows, len(batch)))), NETDIFFUSION)
        out.append((p, bits))
    if not out:
        pytest.skip(f"shared captures not found under {SHARED}")
    return out
