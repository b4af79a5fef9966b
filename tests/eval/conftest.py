"""Small real datasets cut from the shared captures (skipped when the data is absent)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "pcaps"
# Small captures of four classes (~1000 packets in all): quick to evaluate, still varied.
FILES = {
    "dns": ["dnscap_dns.pcap", "dnscap_dnso1tcp.pcap"],
    "voip": ["sip.pcap", "rtp.pcap"],
    "quic": ["quic046.pcap", "quic_q39.pcap"],
    "tls_web": ["chrome.pcap", "firefox.pcap"],
}


def shared_pcaps() -> Path:
    if not all((DATA / c / f).is_file() for c, fs in FILES.items() for f in fs):
        pytest.skip(f"shared captures not found under {DATA}")
    return DATA


def write_split(root: Path, parts: int, which: int) -> Path:
    """Every ``parts``-th packet of each capture, starting at ``which``, into root/<class>/."""
    from netdiff.io.pcap import read_capture, write_pcap

    src = shared_pcaps()
    for cls, files in FILES.items():
        for f in files:
            batch, _ = read_capture(src / cls / f)
            idx = np.arange(which, len(batch), parts)
            write_pcap(root / cls / f, batch.take(idx), nanosecond=False)
    return root


@pytest.fixture(scope="session")
def pcaps_root() -> Path:
    return shared_pcaps()


@pytest.fixture(scope="session")
def splits(tmp_path_factory) -> dict[str, Path]:
    """Three interleaved thirds of the small set: training, held-out real, another held-out."""
    base = tmp_path_factory.mktemp("eval_splits")
    return {name: write_split(base / name, 3, k)
            for k, name in enumerate(("training", "real", "other"))}


@pytest.fixture(scope="session")
def training_copy(splits, tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("eval_copy") / "synthetic"
    shutil.copytree(splits["training"], dst)
    return dst
