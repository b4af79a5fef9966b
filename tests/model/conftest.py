"""Tiny ternary PNG datasets built here (scapy packets -> nPrint bits -> palette PNG + sidecar),
and one tiny base model trained once per session and shared by the slower tests."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from netdiff.bits.codec import encode
from netdiff.bits.layout import NETDIFFUSION
from netdiff.image.codec import write_png
from netdiff.io.pcap import PacketBatch

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
ROWS = 32


def tcp_flow(rng: random.Random, n: int) -> list[bytes]:
    """A TCP flow with the usual NOP, NOP, timestamp options (12 option bytes)."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    sport, seq, ack = rng.randrange(1024, 65535), rng.getrandbits(32), rng.getrandbits(32)
    out = []
    for i in range(n):
        fwd = i % 2 == 0
        ip = IP(src="10.0.0.1" if fwd else "10.0.0.2", dst="10.0.0.2" if fwd else "10.0.0.1",
                ttl=64, id=rng.getrandbits(16))
        tcp = TCP(sport=sport if fwd else 443, dport=443 if fwd else sport, flags="PA",
                  seq=seq if fwd else ack, ack=ack if fwd else seq, window=rng.randrange(1000, 65535),
                  options=[("NOP", None), ("NOP", None), ("Timestamp", (rng.getrandbits(32), 0))])
        out.append(bytes(Ether() / ip / tcp / bytes(rng.randrange(0, 200))))
        seq, ack = seq + 100, ack + 50
    return out


def dns_flow(rng: random.Random, n: int) -> list[bytes]:
    from scapy.layers.dns import DNS, DNSQR
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    out = []
    for _ in range(n):
        q = DNS(id=rng.getrandbits(16), rd=1, qd=DNSQR(qname=f"h{rng.randrange(1000)}.example.com"))
        out.append(bytes(Ether() / IP(src="10.0.0.3", dst="10.0.0.53", ttl=rng.choice([64, 128]))
                         / UDP(sport=rng.randrange(1024, 65535), dport=53) / q))
    return out


def write_dataset(root: Path, per_class: int = 4, rows: int = ROWS, seed: int = 0) -> Path:
    rng = random.Random(seed)
    for cls, make in (("web_tcp", tcp_flow), ("dns_udp", dns_flow)):
        for k in range(per_class):
            bits, _ = encode(PacketBatch.from_packets(make(rng, rows)), NETDIFFUSION)
            png = root / cls / f"{cls}_{k}.png"
            write_png(png, bits)
            png.with_suffix(".json").write_text(json.dumps({"class": cls, "rows": rows}))
    return root


@pytest.fixture(scope="session")
def make_tcp_flow():
    """``tcp_flow`` for test modules (a plain import of conftest may find another folder's)."""
    return tcp_flow


@pytest.fixture(scope="session")
def img_dir(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("imgs"))


@pytest.fixture(scope="session")
def tiny_model(img_dir, tmp_path_factory) -> Path:
    from netdiff.model.train_base import TrainBaseArgs, main

    out = tmp_path_factory.mktemp("model")
    result = main(TrainBaseArgs(str(img_dir), str(out), "tiny", steps=8, batch_size=4, checkpoint_every=0,
                                progress=False))
    assert result.steps == 8
    return out


@pytest.fixture(scope="session")
def gaussian_model(img_dir, tmp_path_factory) -> Path:
    """The Gaussian (MSE, DPM-Solver) counterpart of tiny, for the samplers only it uses."""
    from netdiff.model.train_base import TrainBaseArgs, main

    out = tmp_path_factory.mktemp("gaussian")
    main(TrainBaseArgs(str(img_dir), str(out), "tiny-gaussian", steps=4, batch_size=4, checkpoint_every=0,
                       progress=False))
    return out
