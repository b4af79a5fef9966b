"""Inputs for repair tests: images made from netdiff's own sample captures and, where present,
from the shared real captures (read_capture + encode, as pcap2img does)."""
from __future__ import annotations

import numpy as np
import pytest

from netdiff.bits.layout import NETDIFFUSION
from netdiff.image.codec import pad_rows
from repair_helpers import image_bits


@pytest.fixture(scope="session")
def sample_images(sample_captures) -> dict[str, np.ndarray]:
    """class -> image bits of the first sample capture of that class (netdiffusion layout)."""
    return {p.parent.name: image_bits(p) for p in sorted(sample_captures.glob("*/*_0.pcap"))}


@pytest.fixture(scope="session")
def mixed_image(sample_images) -> np.ndarray:
    """One image holding rows of all three sample classes (TCP, UDP, ICMP), 1024 rows."""
    parts = []
    for cls in ("web_tcp", "dns_udp", "icmp_echo"):
        b = sample_images[cls]
        b = b[np.any(b != -1, axis=1)]
        parts.append(b[:300])
    return pad_rows(np.concatenate(parts), NETDIFFUSION.height)
