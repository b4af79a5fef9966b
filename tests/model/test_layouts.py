"""Flow links drawn by the state of each recent flow (netdiff.model.layouts): a flow that has had
its answer is not answered again, and files saved before flow states still sample as they did."""
from __future__ import annotations

import random
from collections import Counter

import numpy as np
import torch

from netdiff.bits.codec import encode
from netdiff.bits.layout import NETDIFFUSION
from netdiff.io.pcap import PacketBatch
from netdiff.model.layouts import N_BASE, N_STATES, LayoutChain, flow_events, flow_state, port_columns


def _exchanges(rng: random.Random, n: int) -> list[bytes]:
    """UDP query / answer pairs, two outstanding at a time: Q1 Q2 A1 A2 Q3 Q4 A3 A4 ..."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    out = []
    for _ in range(n // 4):
        ports = [rng.randrange(1024, 65535) for _ in range(2)]
        for p in ports:
            out.append(bytes(Ether() / IP(src="10.0.0.3", dst="10.0.0.53") / UDP(sport=p, dport=53) / b"q"))
        for p in ports:
            out.append(bytes(Ether() / IP(src="10.0.0.53", dst="10.0.0.3") / UDP(sport=53, dport=p) / b"a"))
    return out


def _images(count: int = 6, rows: int = 32) -> list[np.ndarray]:
    rng = random.Random(3)
    return [encode(PacketBatch.from_packets(_exchanges(rng, rows)), NETDIFFUSION)[0] for _ in range(count)]


def _flow_sizes(chain: LayoutChain, seeds: range, rows: int = 64) -> Counter:
    sizes: Counter = Counter()
    for s in seeds:
        g = torch.Generator().manual_seed(s)
        ids = chain.sample_ids("dns", rows, g)
        flows = chain.sample_flows("dns", ids, g, NETDIFFUSION)
        sizes.update(len(f) for f in flows)
        sizes[1] += rows - sum(len(f) for f in flows)       # rows in no flow of two or more
    return sizes


def test_flow_events_see_each_flows_state():
    link, rev, states, chosen, _ = flow_events(_images(1)[0], port_columns(NETDIFFUSION))
    assert link[:8].tolist() == [0, 0, 2, 2, 0, 0, 2, 2]
    assert rev[:8].tolist() == [False, False, True, True, False, False, True, True]
    # the first answer goes on with a one-packet flow whose last packet was the query
    assert chosen[2] == flow_state(1, False)
    # the fifth row (a new query) could have gone on with two answered flows
    assert states[4].tolist() == [flow_state(2, True)] * 2


def test_answered_flows_are_not_answered_again():
    """Links drawn by recency alone give flows of one, three, four packets; by state, nearly every
    flow is a query and its answer, as in the training images."""
    chain = LayoutChain.fit(_images(), ["dns"] * 6)
    by_state = _flow_sizes(chain, range(8))
    by_link = _flow_sizes(LayoutChain(chain.vocab, chain.classes, chain.start, chain.trans, chain.links),
                          range(8))
    pairs = lambda c: c[2] * 2 / sum(k * v for k, v in c.items())     # noqa: E731  rows in 2-packet flows
    assert pairs(by_state) >= 0.9, by_state
    assert pairs(by_link) < 0.7, by_link


def test_flow_states_survive_save_and_load(tmp_path):
    chain = LayoutChain.fit(_images(), ["dns"] * 6)
    chain.save(tmp_path)
    again = LayoutChain.load(tmp_path)
    for name in ("weights", "flips"):
        assert np.array_equal(getattr(chain, name), getattr(again, name))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    ids = chain.sample_ids("dns", 64, g1)
    assert np.array_equal(ids, again.sample_ids("dns", 64, g2))
    assert chain.sample_flows("dns", ids, g1, NETDIFFUSION) == again.sample_flows("dns", ids, g2, NETDIFFUSION)


def test_a_file_saved_before_flow_states_draws_links_as_before(tmp_path):
    from safetensors.numpy import load_file, save_file

    chain = LayoutChain.fit(_images(), ["dns"] * 6)
    chain.save(tmp_path)
    path = tmp_path / "layouts.safetensors"
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata()
    old = {k: v for k, v in load_file(str(path)).items() if k not in ("weights", "flips")}
    save_file(old, str(path), metadata=meta)
    loaded = LayoutChain.load(tmp_path)
    assert loaded.weights is None
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    ids = loaded.sample_ids("dns", 64, g1)
    chain.sample_ids("dns", 64, g2)
    assert loaded.sample_flows("dns", ids, g1, NETDIFFUSION) == chain._sample_links("dns", ids, g2, NETDIFFUSION)


def test_distinct_flows_keep_distinct_ports():
    """Two flows the chain drew apart, whose ports the sampler drew equal, are moved apart on
    the higher port in every row (swapped in the reversed ones); a flow that is already unique
    keeps its bits."""
    image = _images(1)[0].copy()
    ports = port_columns(NETDIFFUSION)["udp"]

    def pair(row):
        from netdiff.model.layouts import bits_value
        return bits_value(image[row, ports[0]]), bits_value(image[row, ports[1]])

    # rows 0/2 and 1/3 are two exchanges: give the second the first's ports
    image[1] = image[0]
    image[3] = image[2]
    flows = [[(4 * k + j, False), (4 * k + j + 2, True)] for k in range(8) for j in (0, 1)]
    before = image.copy()
    from netdiff.model.layouts import separate_flows
    moved = separate_flows(image, flows, NETDIFFUSION)
    assert moved == 1
    (s0, d0), (s1, d1) = pair(0), pair(1)
    assert {s0, d0} != {s1, d1}
    assert (s1, d1) == pair(3)[::-1]          # the answer follows its query's new port
    assert np.array_equal(image[0], before[0]) and np.array_equal(image[2], before[2])
    # run again: nothing left to move
    assert separate_flows(image, flows, NETDIFFUSION) == 0


def _polls(rng: random.Random, n: int, clients: int = 4) -> list[bytes]:
    """Modbus-like: ``clients`` TCP connections polled in turn, request then response."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    ports = [rng.randrange(1024, 65535) for _ in range(clients)]
    out = []
    for k in range(n // 2):
        p = ports[k % clients]
        out.append(bytes(Ether() / IP(src="10.0.0.3", dst="10.0.0.9") / TCP(sport=p, dport=502, flags="PA") / b"r"))
        out.append(bytes(Ether() / IP(src="10.0.0.9", dst="10.0.0.3") / TCP(sport=502, dport=p, flags="PA") / b"a"))
    return out


def test_an_image_starts_among_the_flows_going_on():
    """Four polled connections that run through a capture's windows: the chain keeps the flows
    going on where each later window starts, and a generated image starts among them, so its
    rows fall into a few long flows, not into new ones opened one after another."""
    bits = encode(PacketBatch.from_packets(_polls(random.Random(5), 128)), NETDIFFUSION)[0]
    windows = [bits[32 * k: 32 * (k + 1)] for k in range(4)]
    chain = LayoutChain.fit(windows, ["modbus"] * 4, streams=[0, 0, 0, 0])
    assert chain.going.shape[:2] == (1, 64)
    snaps = chain.going[0][(chain.going[0] >= 0).any(axis=(1, 2))]
    assert len(snaps) == 3 and ((snaps >= 0).sum(axis=(1, 2)) == 4).all()
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        ids = chain.sample_ids("modbus", 32, g)
        flows = chain.sample_flows("modbus", ids, g, NETDIFFUSION)
        assert 3 <= len(flows) <= 5 and sum(len(f) for f in flows) >= 30, flows


def _saved(tmp_path) -> tuple:
    """A chain fitted on the DNS images and saved in ``tmp_path``: (its file, the file's metadata,
    its tensors), to edit and save again."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    LayoutChain.fit(_images(), ["dns"] * 6).save(tmp_path)
    path = tmp_path / "layouts.safetensors"
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata()
    return path, meta, load_file(str(path))


def test_a_layout_file_with_tensors_of_the_wrong_shape_is_a_one_line_error(tmp_path):
    import pytest
    from safetensors.numpy import save_file

    from netdiff.errors import NetdiffError

    path, meta, tensors = _saved(tmp_path)
    tensors["weights"] = tensors["weights"][:, :, :, :3].copy()
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(NetdiffError, match="damaged layout file.*weights has shape"):
        LayoutChain.load(tmp_path)


def _bursts(rng: random.Random, n: int, clients: int = 5, burst: int = 6) -> list[bytes]:
    """TCP connections that each send a burst of segments, then another one's turn (random)."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    ports = [rng.randrange(1024, 65535) for _ in range(clients)]
    out = []
    while len(out) < n:
        p = rng.choice(ports)
        for _ in range(rng.randint(1, 2 * burst)):
            out.append(bytes(Ether() / IP(src="10.0.0.3", dst="10.0.0.9") / TCP(sport=p, dport=443, flags="PA") / b"d"))
    return out[:n]


def test_calibrated_walks_go_on_with_the_last_flow_as_the_capture_does():
    """The chain's own walks open new flows and go on with the most recent flow as often as the
    training rows after a capture's first window did (the fitted choice model alone drifts
    once it walks on its own draws)."""
    bits = encode(PacketBatch.from_packets(_bursts(random.Random(3), 512)), NETDIFFUSION)[0]
    windows = [bits[32 * k: 32 * (k + 1)] for k in range(16)]
    from netdiff.model.layouts import port_columns

    chain = LayoutChain.fit(windows, ["web"] * 16, streams=[0] * 16)
    link, *_ = flow_events(np.concatenate(windows[1:]), port_columns(NETDIFFUSION))
    want_last = float(np.mean(link[link >= 0] == 1))
    assert want_last > 0.6
    got = []
    for seed in range(8):
        g = torch.Generator().manual_seed(100 + seed)
        ids = chain.sample_ids("web", 256, g)
        flow_of = np.arange(256) + 1000          # rows of no flow of two or more: flows of one
        for j, f in enumerate(chain.sample_flows("web", ids, g, NETDIFFUSION)):
            flow_of[[i for i, _ in f]] = j
        got.append(np.mean(flow_of[1:] == flow_of[:-1]))     # one transport: the last flow
    assert abs(np.mean(got) - want_last) < 0.05, (np.mean(got), want_last)


def _two_at_a_time(rng: random.Random, n: int) -> list[bytes]:
    """TCP connections, two open at a time, packets dealt between them at random; each sends
    3 to 10 packets and ends, and a new one opens in its place (none ever comes back)."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    def fresh():
        return [rng.randrange(1024, 65535), rng.randint(3, 10)]

    open_, out = [fresh(), fresh()], []
    while len(out) < n:
        c = open_[rng.randrange(2)]
        out.append(bytes(Ether() / IP(src="10.0.0.3", dst="10.0.0.9") / TCP(sport=c[0], dport=443, flags="PA") / b"d"))
        c[1] -= 1
        if c[1] == 0:
            open_[open_.index(c)] = fresh()
    return out[:n]


def _rows_per_packet(flows) -> float:
    """Mean over flows of two or more packets: rows from its first to its last, per packet."""
    return float(np.mean([(f[-1][0] - f[0][0] + 1) / len(f) for f in flows if len(f) > 1]))


def _flows_of(bits: np.ndarray) -> list[list[tuple[int, bool]]]:
    """The flows of real rows as the chain sees them: lists of (row, False)."""
    link, *_ = flow_events(bits, port_columns(NETDIFFUSION))
    recent: list[list] = []
    for i, k in enumerate(link):
        if k == 0:
            recent.insert(0, [(i, False)])
        elif k > 0:
            f = recent.pop(k - 1)
            f.append((i, False))
            recent.insert(0, f)
    return recent


def test_flows_that_ended_do_not_come_back():
    """A flow is judged by how many rows ago its last packet was: connections that send a few
    packets and end are not picked up again hundreds of rows later, so a generated flow spans
    about as many rows as a training one. Without lateness (the states of files saved before
    it) the same data gives flows spread over the image."""
    windows = _two_at_a_time_windows()
    chain = LayoutChain.fit(windows, ["web"] * 32, streams=[0] * 32)
    assert chain.weights.shape[-1] == N_STATES
    real = _rows_per_packet(_flows_of(np.concatenate(windows)))
    untimed = LayoutChain.fit(windows, ["web"] * 32, streams=[0] * 32)
    base = np.arange(N_BASE)        # the states of a file saved before lateness: on time only
    untimed.weights, untimed.flips = untimed.weights[..., base], untimed.flips[:, :, base]
    untimed.going = np.where(untimed.going >= N_BASE, untimed.going % N_BASE, untimed.going).astype(np.int8)
    got = {}
    for name, c in (("timed", chain), ("untimed", untimed)):
        spans = []
        for seed in range(4):
            g = torch.Generator().manual_seed(seed)
            ids = c.sample_ids("web", 512, g)
            spans.append(_rows_per_packet(c.sample_flows("web", ids, g, NETDIFFUSION)))
        got[name] = float(np.mean(spans))
    assert got["timed"] < 1.5 * real, (got, real)
    assert got["untimed"] > 5 * got["timed"], (got, real)


def test_a_file_saved_before_lateness_loads_and_walks(tmp_path):
    from safetensors.numpy import save_file

    path, meta, tensors = _saved(tmp_path)
    tensors["weights"] = tensors["weights"][..., :N_BASE].copy()
    tensors["flips"] = tensors["flips"][:, :, :N_BASE].copy()
    tensors["going"] = np.where(tensors["going"] >= N_BASE, tensors["going"] % N_BASE, tensors["going"]).astype(np.int8)
    save_file(tensors, str(path), metadata=meta)
    old = LayoutChain.load(tmp_path)
    assert old.weights.shape[-1] == N_BASE
    g = torch.Generator().manual_seed(3)
    ids = old.sample_ids("dns", 64, g)
    flows = old.sample_flows("dns", ids, g, NETDIFFUSION)
    assert flows and all(len(f) >= 2 for f in flows)


def _tries_and_bulk(rng: random.Random, n: int, every: int = 5, retry: int = 60) -> list[bytes]:
    """One bulk TCP connection on most rows; every ``every``-th row a SYN to a new peer, sent again
    ``retry`` (+-3) rows later, once (BitTorrent's connection attempts and their 3 s retries)."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    bulk = bytes(Ether() / IP(src="10.0.0.3", dst="10.0.0.9") / TCP(sport=40000, dport=443, flags="PA") / b"d")
    due: dict[int, bytes] = {}
    out = []
    for i in range(n):
        if i in due:
            out.append(due.pop(i))
        elif i % every == 0:
            syn = bytes(Ether() / IP(src="10.0.0.3", dst="10.0.0.7") /
                        TCP(sport=rng.randrange(1024, 39999), dport=6881, flags="S"))
            out.append(syn)
            due[i + retry + rng.randint(-3, 3)] = syn
        else:
            out.append(bulk)
    return out


def test_retries_come_back_and_the_bulk_stays_one_flow():
    """Flows that come back long after their last packet (retries 60 rows on) are as many in the
    chain's 1024-row walks as in the captures, and the connection between them stays one flow.
    Counted against a flow's own pace and calibrated on 256-row walks (stop 27 to 30), two walks
    in four broke the bulk connection in two (its longest piece 378 and 345 rows of 676), and
    one of them brought 109 retries where the captures' window holds 158."""
    bits = encode(PacketBatch.from_packets(_tries_and_bulk(random.Random(5), 4096)), NETDIFFUSION)[0]
    windows = [bits[32 * k: 32 * (k + 1)] for k in range(len(bits) // 32)]
    chain = LayoutChain.fit(windows, ["bt"] * len(windows), streams=[0] * len(windows))

    def retries(flows):
        return sum(1 for f in flows if len(f) == 2 and f[1][0] - f[0][0] >= 30)

    real = _flows_of(bits[1024:2048])
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        ids = chain.sample_ids("bt", 1024, g)
        flows = chain.sample_flows("bt", ids, g, NETDIFFUSION)
        assert retries(flows) >= 0.8 * retries(real), (seed, retries(flows), retries(real))
        assert max(len(f) for f in flows) >= 0.9 * max(len(f) for f in real), seed


def test_a_file_counting_lateness_by_pace_loads_and_walks_by_pace(tmp_path):
    """Files saved from stop 27 to 30 hold states whose lateness counts against the flow's own
    pace, with no ``late_by`` in their metadata: they load as such and walk by pace, as they did."""
    import json

    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    fitted = LayoutChain.fit(_two_at_a_time_windows(), ["web"] * 32, streams=[0] * 32)
    fitted.save(tmp_path)
    assert LayoutChain.load(tmp_path).late_by == "rows"
    path = tmp_path / "layouts.safetensors"
    with safe_open(str(path), framework="numpy") as f:
        meta = json.loads(f.metadata()["netdiff"])
    tensors = load_file(str(path))
    del meta["late_by"]
    save_file(tensors, str(path), metadata={"netdiff": json.dumps(meta, sort_keys=True)})
    old = LayoutChain.load(tmp_path)
    assert old.late_by == "pace"

    def walk(chain):
        g = torch.Generator().manual_seed(2)
        ids = chain.sample_ids("web", 512, g)
        return chain.sample_flows("web", ids, g, NETDIFFUSION)

    fitted.late_by = "pace"
    assert walk(old) == walk(fitted)
    fitted.late_by = "rows"
    assert walk(old) != walk(fitted)


def _two_at_a_time_windows() -> list[np.ndarray]:
    bits = encode(PacketBatch.from_packets(_two_at_a_time(random.Random(11), 1024)), NETDIFFUSION)[0]
    return [bits[32 * k: 32 * (k + 1)] for k in range(32)]
