import json

import numpy as np
import pytest

from netdiff.bits.layout import NETDIFFUSION as L, named_layout
from netdiff.errors import ImageError, NetdiffError
from netdiff.image.codec import bits_to_rgb
from netdiff.packet_repair import TimingModel, quantize, repair
from netdiff.packet_repair.timing import KINDS, SHORT_MAX, gap_kinds, short_flow_offsets
from netdiff.packet_repair.addresses import AddressPool, parse_pool
from netdiff.packet_repair.perturb import random_bits


# --- quantisation --------------------------------------------------------------------------------

def test_exact_palette_round_trip():
    bits = random_bits(L, 1)
    q, notes = quantize(bits_to_rgb(bits), L)
    assert (q == bits).all() and notes == []


def test_noise_takes_the_nearest_colour():
    bits = random_bits(L, 2)
    rgb = bits_to_rgb(bits).astype(np.int16)
    noise = np.random.default_rng(0).integers(-100, 101, rgb.shape)
    noisy = np.clip(rgb + noise, 0, 255).astype(np.uint8)
    q, notes = quantize(noisy, L)
    assert (q == bits).all()                    # +-100 never crosses the half-way point
    assert "not palette colours" in notes[0]


def test_other_sizes_are_resized_and_said_so():
    bits = np.repeat(np.repeat(random_bits(L, 3)[:256, :272], 4, axis=0), 4, axis=1)
    small = bits_to_rgb(bits[::4, ::4])         # quarter size
    q, notes = quantize(small, L)
    assert q.shape == (L.height, L.width)
    assert "resized" in notes[0]
    assert (q == bits).mean() > 0.9


def test_bad_shape_is_an_image_error():
    with pytest.raises(ImageError, match="RGB"):
        quantize(np.zeros((10, 10), np.uint8), L)


def test_float_images_are_accepted():
    bits = random_bits(L, 4)
    q, _ = quantize(bits_to_rgb(bits).astype(np.float32) / 255.0, L)
    assert (q == bits).all()


def test_repair_rejects_non_ternary_matrices():
    with pytest.raises(NetdiffError, match="other than -1/0/1"):
        repair(np.full((4, L.width), 2, np.int8), L)
    with pytest.raises(NetdiffError, match="shape"):
        repair(np.zeros((4, 7), np.int8), L)


# --- timing ----------------------------------------------------------------------------------------

def test_timing_learn_save_load_sample(tmp_path):
    rng = np.random.default_rng(0)
    gaps = {"a": [rng.lognormal(-6, 1, 4000)], "b": [np.r_[np.zeros(500), rng.lognormal(-2, .5, 500)]]}
    m = TimingModel.learn(gaps)
    m.save(tmp_path / "t.json")
    m2 = TimingModel.load(tmp_path / "t.json")
    assert m2.classes == m.classes
    s = m2.gaps(20000, "a", seed=1)
    assert np.median(np.log(s)) == pytest.approx(-6, abs=0.1)
    sb = m2.gaps(20000, "b", seed=1)
    assert (sb == 0).mean() == pytest.approx(0.5, abs=0.02)
    assert (m2.gaps(10, "a", seed=3) == m2.gaps(10, "a", seed=3)).all()


def test_one_stray_gap_is_drawn_as_rarely_as_it_occurs(tmp_path):
    """999 gaps near 1 ms and one of 10^8 s (a packet with a wrong clock): the 10^8 s gap is one
    in a thousand, so are drawn gaps above a second, not one in a hundred as when the last
    percentile interval ran up to it."""
    rng = np.random.default_rng(0)
    m = TimingModel.learn({"voip": [np.r_[rng.lognormal(np.log(1e-3), 0.3, 999), 1e8]]})
    m.save(tmp_path / "t.json")
    s = TimingModel.load(tmp_path / "t.json").gaps(200_000, "voip", seed=2)
    assert (s > 1.0).mean() < 0.002
    assert np.median(s) == pytest.approx(1e-3, rel=0.1)
    # a model written before the extra quantiles (format /1: 101 even ones, no "p") still reads
    old = {"format": "netdiff-timing/1", "classes": {"x": {"q": list(np.linspace(-3, -1, 101)),
                                                             "p_zero": 0.0, "count": 5}}}
    (tmp_path / "old.json").write_text(json.dumps(old))
    g = TimingModel.load(tmp_path / "old.json").gaps(50_000, "x", seed=0)
    assert np.median(np.log10(g)) == pytest.approx(-2, abs=0.02)


def test_gap_counts_whose_extreme_levels_are_even_ones_save_and_load(tmp_path):
    """20, 25, 50 or 100 gaps: 1/n is one of the even levels up to the last bit; the file must
    still read (it did not: two levels rounded to one)."""
    for n in (20, 25, 50, 100, 7, 3):
        m = TimingModel.learn({"x": [np.linspace(0.001, 1, n)]})
        m.save(tmp_path / "t.json")
        assert TimingModel.load(tmp_path / "t.json").classes == m.classes


def test_gap_kinds_follow_the_flows():
    """Each gap is named for the packet after it: it opens a flow while an earlier one goes on
    (0), follows its own flow's packet (1), goes back to a flow seen before (2), or opens a flow
    after every earlier one has ended (3); a packet that was not parsed (-1) is unknown."""
    assert gap_kinds([5, 5, 7, 5, 9, -1, 9]).tolist() == [1, 0, 2, 3, -1, 2]
    assert gap_kinds([1, 1, 2, 2, 3, 3]).tolist() == [1, 3, 1, 3, 1]
    seen = {7}                                  # an earlier window of the same capture had flow 7
    assert gap_kinds([5, 7, 7], seen).tolist() == [2, 1]
    assert seen == {5, 7}
    assert gap_kinds([3]).tolist() == [] and gap_kinds([]).tolist() == []


def test_gaps_are_drawn_for_what_their_packet_does(tmp_path):
    """Idle gaps come before new flows (in the shared captures hours before an ssh connection,
    sub-millisecond inside one): a model learnt with kinds draws each from its own kind, and a
    model file without kinds (format /2) draws as before."""
    rng = np.random.default_rng(0)
    new = rng.lognormal(np.log(100.0), 0.2, 50)
    same = rng.lognormal(np.log(1e-3), 0.2, 950)
    kinds = np.r_[np.zeros(50, dtype=np.int64), np.ones(950, dtype=np.int64)]
    m = TimingModel.learn({"ssh": [np.r_[new, same]]}, {"ssh": [kinds]})
    m.save(tmp_path / "t.json")
    m2 = TimingModel.load(tmp_path / "t.json")
    assert set(m2.classes["ssh"]["kinds"]) == {"new", "same"}        # "other" never seen
    k = np.r_[np.zeros(2000, dtype=np.int64), np.ones(2000, dtype=np.int64), np.full(2000, 2), np.full(2000, -1)]
    g = m2.gaps(len(k), "ssh", seed=4, kinds=k)
    assert np.median(g[k == 0]) == pytest.approx(100.0, rel=0.1)
    assert np.median(g[k == 1]) == pytest.approx(1e-3, rel=0.1)
    assert (g[k == 1] < 0.01).all()
    # a kind without its own quantiles, and an unknown one, draw from the whole class: 5% idle
    for kk in (2, -1):
        assert (g[k == kk] > 1).mean() == pytest.approx(0.05, abs=0.02)
    # "break" learnt by no file before it existed: drawn from the new-flow gaps
    assert np.median(m2.gaps(2000, "ssh", seed=5, kinds=np.full(2000, 3))) == pytest.approx(100.0, rel=0.1)
    plain = m2.gaps(3000, "ssh", seed=4)
    assert (plain > 1).mean() == pytest.approx(0.05, abs=0.015)
    with pytest.raises(ValueError, match="gap kinds"):
        m2.gaps(3, "ssh", kinds=[0, 1])
    # format /2 (no kinds) reads, and kinds given to it change nothing
    doc = json.loads((tmp_path / "t.json").read_text())
    del doc["classes"]["ssh"]["kinds"]
    doc["format"] = "netdiff-timing/2"
    (tmp_path / "v2.json").write_text(json.dumps(doc))
    v2 = TimingModel.load(tmp_path / "v2.json")
    assert (v2.gaps(100, "ssh", seed=1) == v2.gaps(100, "ssh", seed=1, kinds=np.zeros(100, dtype=int))).all()


def test_gap_kinds_tell_answers_from_more_of_the_same():
    """Flows a and b: a's second packet answers its first, its third goes on the same way."""
    flows = [1, 1, 1, 2, 1, 2]
    sides = [0, 1, 1, 0, 0, 0]
    names = [KINDS[k] for k in gap_kinds(flows, sides=sides)]
    assert names == ["same_turn", "same", "new", "other_turn", "other"]
    assert [KINDS[k] for k in gap_kinds(flows)] == ["same", "same", "new", "other", "other"]
    # a flow's first packet in the window is not judged against an earlier window
    seen: set = set()
    gap_kinds([7, 7], seen, sides=[0, 1])
    assert [KINDS[k] for k in gap_kinds([7, 8, 7], seen, sides=[0, 0, 1])] == ["new", "other_turn"]
    with pytest.raises(ValueError, match="sides"):
        gap_kinds([1, 1], sides=[0])


def test_a_file_from_before_turned_kinds_draws_them_from_the_old_kinds(tmp_path):
    """A netdiff-timing/3 file has "same" and "other" for every packet of those kinds: answers
    are drawn from them, as before."""
    gaps = np.concatenate([np.full(50, 0.001), np.full(50, 5.0)])
    kinds = np.array([1] * 50 + [2] * 50)
    model = TimingModel.learn({"c": [gaps]}, {"c": [kinds]})
    model.save(tmp_path / "t.json")
    doc = json.loads((tmp_path / "t.json").read_text())
    doc["format"] = "netdiff-timing/3"
    (tmp_path / "v3.json").write_text(json.dumps(doc))
    v3 = TimingModel.load(tmp_path / "v3.json")
    assert np.allclose(v3.gaps(20, "c", seed=0, kinds=np.full(20, KINDS.index("same_turn"))), 0.001)
    assert np.allclose(v3.gaps(20, "c", seed=0, kinds=np.full(20, KINDS.index("other_turn"))), 5.0)


def test_pcap2img_learns_kinds_and_repair_stamps_flows_with_them(tmp_path):
    """End to end: a capture of short UDP exchanges 100 s apart. pcap2img learns the gap before a
    new flow apart from the gaps inside one, and a repaired image keeps each flow's packets close
    together with the idle time between flows."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.utils import wrpcap

    import netdiff
    from netdiff.io.pcap import read_capture

    pkts, t = [], 1_700_000_000.0
    size = SHORT_MAX + 1          # none is short: the row clock times them
    for f in range(12):
        t += 100.0
        for i in range(size):
            a, b = ("10.0.0.1", "10.0.0.2") if i % 2 == 0 else ("10.0.0.2", "10.0.0.1")
            sp, dp = (40000 + f, 53) if i % 2 == 0 else (53, 40000 + f)
            p = Ether() / IP(src=a, dst=b) / UDP(sport=sp, dport=dp) / (b"q" * 12)
            p.time = t
            pkts.append(p)
            t += 0.001
    (tmp_path / "cap" / "dns").mkdir(parents=True)
    wrpcap(str(tmp_path / "cap" / "dns" / "x.pcap"), pkts)
    netdiff.pcap2img(tmp_path / "cap", tmp_path / "img",
                     layout=named_layout("netdiffusion", height=-(-12 * size // 8) * 8))
    doc = json.loads((tmp_path / "img" / "timing.json").read_text())
    assert doc["format"] == "netdiff-timing/6"
    assert "short" not in doc["classes"]["dns"]
    kinds = doc["classes"]["dns"]["kinds"]
    # every packet inside an exchange answers the one before it
    assert kinds["break"]["count"] == 11 and kinds["same_turn"]["count"] == 12 * (size - 1)
    assert "new" not in kinds and "same" not in kinds
    png = next((tmp_path / "img" / "dns").glob("*.png"))
    bare = tmp_path / "bare.png"
    bare.write_bytes(png.read_bytes())                       # no sidecar: repaired, not restored
    timing = TimingModel.load(tmp_path / "img" / "timing.json")
    netdiff.img2pcap(bare, tmp_path / "out.pcap", timing=timing)
    batch, _ = read_capture(tmp_path / "out.pcap")
    ts = batch.ts_sec + batch.ts_nsec / 1e9
    gaps = np.diff(ts)
    big = gaps > 10
    assert big.sum() == 11 and (gaps[~big] < 0.01).all()
    # every long gap comes just before a packet whose ports were not seen before
    from netdiff.bits.codec import flow_keys, parse
    new_flow = gap_kinds(flow_keys(parse(batch))) == 3
    assert (big == new_flow).all()


def test_short_flow_offsets_by_hand():
    """Flows 7 (two packets, the second an answer three rows on), 8 (five packets, each turning
    against the one before), 9 (one packet) and 6 (three packets one way, rows 9, 10 and 14); a
    key of -1 is no flow. Offsets count from the flow's first packet, rows too. A flow of
    SHORT_MAX + 1 packets is not short."""
    flows = np.array([7, 8, 8, 7, 8, 9, 8, 8, -1, 6, 6, -1, -1, -1, 6])
    sides = np.array([0, 0, 1, 1, 0, 0, 1, 0, 0, 1, 1, 0, 0, 0, 1])
    ns = np.arange(15) * 1_000_000 + np.array([0, 0, 0, 500_000_000] + [0] * 10 + [2_000_000_000])
    got = short_flow_offsets(flows, sides, ns)
    assert got.tolist() == [[5, 1, 1, 0, 0.001],
                            [2, 1, 1, 1, 0.503],        # 3 rows after the first: log2 bucket 1
                            [5, 2, 1, 1, 0.003],
                            [5, 3, 1, 2, 0.005],        # 5 rows after the first: bucket 2
                            [5, 4, 1, 2, 0.006],
                            [3, 1, 0, 0, 0.001],
                            [3, 2, 0, 2, 2.005]]
    long_ = np.r_[flows, np.full(SHORT_MAX + 1, 5)]
    more = short_flow_offsets(long_, np.r_[sides, np.zeros(SHORT_MAX + 1, dtype=int)],
                              np.r_[ns, 3_000_000_000 + np.arange(SHORT_MAX + 1)])
    assert more.tolist() == got.tolist()


def _write_udp_to_6881(path, sends) -> None:
    """A capture of 20-byte UDP datagrams to 10.0.0.9:6881, one per (time, source, source port)
    of ``sends``, in time order."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.utils import wrpcap

    pkts = []
    for when, src, sport in sorted(sends):
        p = Ether() / IP(src=src, dst="10.0.0.9") / UDP(sport=sport, dport=6881) / (b"x" * 20)
        p.time = when
        pkts.append(p)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrpcap(str(path), pkts)


def _bursty_capture(path, pairs=12, retry=3.0):
    """UDP 'retries': two packets of one flow ``retry`` s apart, with 3 or 30 packets of a busy
    flow between them (so the rows between say nothing about the time)."""
    sends, t = [], 1_700_000_000.0

    def add(src, sport, when):
        sends.append((when, src, sport))

    for k in range(pairs):
        between = 3 if k % 2 else 30
        add("10.0.1.1", 50000 + k, t)
        for j in range(between):
            add("10.0.2.2", 40000, t + retry * (j + 1) / (between + 1))
        add("10.0.1.1", 50000 + k, t + retry)
        t += retry + 0.5
    _write_udp_to_6881(path, sends)


def test_short_flows_keep_their_own_clock(tmp_path):
    """pcap2img learns the gaps inside short flows; a repaired image places a short flow's second
    packet its own gap after the first, whatever the rows between, and writes packets in time
    order. The same file without its short-flow tables times them by the rows between."""
    import netdiff
    from netdiff.bits.codec import flow_keys, parse
    from netdiff.bits.fields import header_bytes, read_field
    from netdiff.io.pcap import read_capture

    _bursty_capture(tmp_path / "cap" / "bt" / "x.pcap")
    netdiff.pcap2img(tmp_path / "cap", tmp_path / "img", layout=named_layout("netdiffusion", height=512))
    doc = json.loads((tmp_path / "img" / "timing.json").read_text())
    short = doc["classes"]["bt"]["short"]
    assert short["n2 k1 same"]["count"] == 12
    png = next((tmp_path / "img" / "bt").glob("*.png"))
    bare = tmp_path / "bare.png"
    bare.write_bytes(png.read_bytes())                       # no sidecar: repaired, not restored

    def durations(timing):
        out = tmp_path / "out.pcap"
        netdiff.img2pcap(bare, out, timing=timing, seed=3)
        batch, _ = read_capture(out)
        ts = batch.ts_sec + batch.ts_nsec / 1e9
        assert (np.diff(ts) >= 0).all()
        p = parse(batch)
        keys = flow_keys(p)
        # each host's IP IDs still count up one by one in the order the packets are written
        ip = header_bytes(p.window, p.l3)
        src, ipid = read_field(ip, "ipv4_src"), read_field(ip, "ipv4_id")
        for h in np.unique(src):
            assert (np.diff(ipid[src == h]) % 65536 == 1).all()
        ids, counts = np.unique(keys, return_counts=True)
        return np.array([np.ptp(ts[keys == k]) for k in ids[counts == 2]])

    own = durations(TimingModel.load(tmp_path / "img" / "timing.json"))
    assert len(own) == 12 and np.allclose(own, 3.0, atol=1e-3)
    for c in doc["classes"].values():
        c.pop("short")
    doc["format"] = "netdiff-timing/4"
    (tmp_path / "old.json").write_text(json.dumps(doc))
    rows = durations(TimingModel.load(tmp_path / "old.json"))
    assert len(rows) == 12 and np.abs(rows - 3.0).max() > 0.5


def _paced_capture(path, flows=12):
    """UDP flows of 8 datagrams one way, 1/7 s apart (1 s in all), a busy flow's 2 or 20 packets
    between each two of them."""
    sends, t = [], 1_700_000_000.0
    for k in range(flows):
        between = 2 if k % 2 else 20
        sends += [(t + j / 7, "10.0.1.1", 50000 + k) for j in range(8)]
        sends += [(t + (j + 0.5) / (7 * between + 7), "10.0.2.2", 40000) for j in range(7 * between)]
        t += 1.5
    _write_udp_to_6881(path, sends)


def test_flows_of_up_to_16_packets_keep_their_own_clock(tmp_path):
    """Flows of eight packets are short since stop 36 (SHORT_MAX 16): the structure stage spreads a
    generated flow over more rows than real ones span, and timed by the rows between them such
    flows lasted too long. Repaired, each of the class's 8-packet flows lasts its 1 s again,
    whatever the rows between; a file learnt before (tables up to 4 packets) times them by the
    rows as it did."""
    import netdiff
    from netdiff.bits.codec import flow_keys, parse
    from netdiff.io.pcap import read_capture

    _paced_capture(tmp_path / "cap" / "bt" / "x.pcap")
    netdiff.pcap2img(tmp_path / "cap", tmp_path / "img", layout=named_layout("netdiffusion", height=1024))
    doc = json.loads((tmp_path / "img" / "timing.json").read_text())
    assert doc["classes"]["bt"]["short"]["n8 k7 same"]["count"] == 12
    png = next((tmp_path / "img" / "bt").glob("*.png"))
    bare = tmp_path / "bare.png"
    bare.write_bytes(png.read_bytes())                       # no sidecar: repaired, not restored

    def durations(timing):
        netdiff.img2pcap(bare, tmp_path / "out.pcap", timing=timing, seed=5)
        batch, _ = read_capture(tmp_path / "out.pcap")
        ts = batch.ts_sec + batch.ts_nsec / 1e9
        keys = flow_keys(parse(batch))
        ids, counts = np.unique(keys, return_counts=True)
        return np.array([np.ptp(ts[keys == k]) for k in ids[counts == 8]])

    own = durations(TimingModel.load(tmp_path / "img" / "timing.json"))
    assert len(own) == 12 and np.allclose(own, 1.0, atol=1e-3)
    for c in doc["classes"].values():       # as learnt before stop 36: flows of up to 4 packets
        c["short"] = {k: v for k, v in c["short"].items() if int(k.split()[0][1:]) <= 4}
    (tmp_path / "old.json").write_text(json.dumps(doc))
    rows = durations(TimingModel.load(tmp_path / "old.json"))
    assert len(rows) == 12 and np.abs(rows - 1.0).max() > 0.3


def _repaired_flow_times(tmp_path, timing, seed) -> list:
    """The first image pcap2img wrote for class bt under tmp_path/img, repaired (its sidecar left
    behind, so not restored) with ``timing`` and ``seed``: each flow's packet times in seconds."""
    import netdiff
    from netdiff.bits.codec import flow_keys, parse
    from netdiff.io.pcap import read_capture

    bare = tmp_path / "bare.png"
    bare.write_bytes(next((tmp_path / "img" / "bt").glob("*.png")).read_bytes())
    netdiff.img2pcap(bare, tmp_path / "out.pcap", timing=timing, seed=seed)
    batch, _ = read_capture(tmp_path / "out.pcap")
    ts = batch.ts_sec + batch.ts_nsec / 1e9
    keys = flow_keys(parse(batch))
    return [ts[keys == k] for k in np.unique(keys)]


def _two_speed_capture(path, flows=16):
    """UDP flows of 6 datagrams one way, evenly spaced: every other one over 0.1 s, the rest over
    2 s; a busy flow's 8 packets between each two (the rows say nothing of the speed)."""
    sends, t = [], 1_700_000_000.0
    for k in range(flows):
        span, between = (0.1 if k % 2 else 2.0), 8
        sends += [(t + span * j / 5, "10.0.1.1", 50000 + k) for j in range(6)]
        sends += [(t + span * (j + 0.5) / (5 * between + 5), "10.0.2.2", 40000)
                  for j in range(5 * between)]
        t += 2.5
    _write_udp_to_6881(path, sends)


def test_a_short_flow_ends_with_its_last_packet(tmp_path):
    """The last packet's offset sets when a short flow ends. Half the class's 6-packet flows last
    0.1 s and half 2 s: drawn place by place alone, a flow ended with the latest of its five
    draws and nearly every one lasted about 2 s; now about half are quick again."""
    import netdiff

    _two_speed_capture(tmp_path / "cap" / "bt" / "x.pcap")
    netdiff.pcap2img(tmp_path / "cap", tmp_path / "img", layout=named_layout("netdiffusion", height=1024))
    assert json.loads((tmp_path / "img" / "timing.json").read_text())["classes"]["bt"]["short"][
        "n6 k5 same"]["count"] == 16
    timing = TimingModel.load(tmp_path / "img" / "timing.json")
    quick = []
    for seed in range(3):
        flows = _repaired_flow_times(tmp_path, timing, seed)
        spans = np.array([np.ptp(t) for t in flows if len(t) == 6])
        assert len(spans) == 16 and spans.max() <= 2.0 + 1e-3
        quick.append(int((spans <= 0.15).sum()))
    assert 12 <= sum(quick) <= 36, quick


def test_an_answer_goes_by_the_rows_before_it_across_flow_sizes():
    """Two-packet flows answered the next row within 1 ms (20) or 16-31 rows on after about 1 s
    (3: too few for a table of their own, MIN_SHORT); three-packet flows answered 16-31 rows on after about
    1 s (20). A two-packet flow answered 20 rows on is drawn from the answers of every size that
    came as many rows on: about 1 s (from its own size over all rows it would be 1 ms). A
    one-way second packet keeps its own size's table."""
    rng = np.random.default_rng(0)
    near = np.c_[np.full((20, 4), [2, 1, 1, 0]), rng.uniform(0.0008, 0.0012, 20)]
    rare = np.c_[np.full((3, 4), [2, 1, 1, 4]), rng.uniform(0.8, 1.2, 3)]
    three = np.c_[np.full((20, 4), [3, 1, 1, 4]), rng.uniform(0.8, 1.2, 20)]
    one_way = np.c_[np.full((20, 4), [2, 1, 0, 0]), rng.uniform(0.0008, 0.0012, 20)]
    m = TimingModel.learn({"x": [np.geomspace(1e-4, 1e-3, 50)]},
                          short_by_class={"x": [np.concatenate([near, rare, three, one_way])]})
    assert "n2 k1 turn d4" not in m.classes["x"]["short"]
    assert m.classes["x"]["short"]["n0 k0 turn d4"]["count"] == 23
    flows = np.r_[1, 100 + np.arange(19), 1]
    for second, lo, hi in ((1, 0.7, 1.3), (0, 0.0007, 0.0013)):
        sides = np.r_[0, np.zeros(19, dtype=int), second]
        took = [np.diff(m.arrival_ns(flows, sides, "x", seed=s)[[0, -1]])[0] / 1e9 for s in range(20)]
        assert all(lo <= t <= hi for t in took), (second, took)


def test_an_answer_further_on_than_its_size_ever_came_keeps_its_size():
    """Two-packet flows answered 1-7 rows on after about 0.1 s (20 per row bucket), three-packet
    flows 32-63 rows on after about 3 s (20). A two-packet answer 40 rows on came further than
    any of its size in the captures: the walk put it there, and it takes its size's latest table
    (4-7 rows: 0.1 s), not the rows' (3 s). A three-packet answer 40 rows on keeps its 3 s."""
    rng = np.random.default_rng(0)
    two = [np.c_[np.full((20, 4), [2, 1, 1, b]), rng.uniform(0.08, 0.12, 20)] for b in (0, 1, 2)]
    three = np.c_[np.full((20, 4), [3, 1, 1, 5]), rng.uniform(2.8, 3.2, 20)]
    m = TimingModel.learn({"x": [np.geomspace(1e-4, 1e-3, 50)]},
                          short_by_class={"x": [np.concatenate(two + [three])]})
    short = m.classes["x"]["short"]
    assert short["n2 k1 turn"]["rows"] == 2 and short["n3 k1 turn"]["rows"] == 5
    assert "n0 k0 turn d5" in short
    for size, lo, hi in ((2, 0.07, 0.13), (3, 2.7, 3.3)):
        flows = np.r_[1, 100 + np.arange(39), 1, [1] * (size - 2)]
        sides = np.r_[0, np.zeros(39, dtype=int), 1, [1] * (size - 2)]
        took = [(m.arrival_ns(flows, sides, "x", seed=s)[40] - m.arrival_ns(flows, sides, "x", seed=s)[0]) / 1e9
                for s in range(20)]
        assert all(lo <= t <= hi for t in took), (size, took)
    # a file learnt before stop 44 (no "rows") answers by the rows, as it did
    for table in short.values():
        table.pop("rows", None)
    flows, sides = np.r_[1, 100 + np.arange(39), 1], np.r_[0, np.zeros(39, dtype=int), 1]
    took = [np.diff(m.arrival_ns(flows, sides, "x", seed=s)[[0, -1]])[0] / 1e9 for s in range(20)]
    assert all(2.7 <= t <= 3.3 for t in took), took


@pytest.mark.parametrize("rows", [-1, 2.5, "2", True])
def test_a_timing_file_with_strange_rows_is_refused(tmp_path, rows):
    m = TimingModel.learn({"x": [np.geomspace(1e-4, 1, 50)]},
                          short_by_class={"x": [np.array([[2, 1, 1, 1, 0.5]] * 10)]})
    m.save(tmp_path / "t.json")
    doc = json.loads((tmp_path / "t.json").read_text())
    assert doc["classes"]["x"]["short"]["n2 k1 turn"]["rows"] == 1
    doc["classes"]["x"]["short"]["n2 k1 turn"]["rows"] = rows
    (tmp_path / "t.json").write_text(json.dumps(doc))
    with pytest.raises(NetdiffError, match="malformed"):
        TimingModel.load(tmp_path / "t.json")


def test_a_timing_file_with_a_strange_short_key_is_refused(tmp_path):
    m = TimingModel.learn({"x": [np.geomspace(1e-4, 1, 50)]},
                          short_by_class={"x": [np.array([[2, 1, 0, 1, 0.5]] * 10)]})
    m.save(tmp_path / "t.json")
    doc = json.loads((tmp_path / "t.json").read_text())
    doc["classes"]["x"]["short"]["two packets"] = doc["classes"]["x"]["short"]["n2 k1"]
    (tmp_path / "t.json").write_text(json.dumps(doc))
    with pytest.raises(NetdiffError, match="malformed"):
        TimingModel.load(tmp_path / "t.json")


def _retry_capture(path, flows=12):
    """Three tries per flow, one way: at 0, at 0.5, 1 or 1.5 s, and at 3 s (a retry timer fixes
    the last whenever the middle went), a busy flow's 3 or 30 packets between each two."""
    sends, t = [], 1_700_000_000.0
    for k in range(flows):
        middle = (0.5, 1.0, 1.5)[k % 3]
        between = 3 if k % 2 else 30
        sends += [(w, "10.0.1.1", 50000 + k) for w in (t, t + middle, t + 3.0)]
        sends += [(t + 3.0 * (j + 1) / (2 * between + 2), "10.0.2.2", 40000) for j in range(2 * between + 1)]
        t += 3.5
    _write_udp_to_6881(path, sends)


def test_short_flows_keep_their_timers(tmp_path):
    """A short flow's later packets are placed at offsets from its first, learnt by their place
    in the flow: three tries at 0, 0.5-1.5 and 3 s come back 3 s long every time, with the middle
    one between (drawn gap by gap, as timing files /5 did, the two gaps were independent and the
    flows lasted 1-5 s)."""
    import netdiff

    _retry_capture(tmp_path / "cap" / "bt" / "x.pcap")
    netdiff.pcap2img(tmp_path / "cap", tmp_path / "img", layout=named_layout("netdiffusion", height=1024))
    short = json.loads((tmp_path / "img" / "timing.json").read_text())["classes"]["bt"]["short"]
    assert short["n3 k1 same"]["count"] == short["n3 k2 same"]["count"] == 12
    timing = TimingModel.load(tmp_path / "img" / "timing.json")
    for seed in range(3):
        tries = [t - t[0] for t in _repaired_flow_times(tmp_path, timing, seed) if len(t) == 3]
        assert len(tries) == 12
        assert np.allclose([t[2] for t in tries], 3.0, atol=1e-3)
        assert all(0.5 - 1e-3 <= t[1] <= 1.5 + 1e-3 for t in tries)


def test_a_timing_file_of_short_gaps_loads_without_them(tmp_path):
    """Files /5 kept short flows' gaps to the previous packet under the same key: read as offsets
    they would place packets wrongly, so they are left out (the row clock times those packets)."""
    m = TimingModel.learn({"x": [np.geomspace(1e-4, 1, 50)]},
                          short_by_class={"x": [np.array([[2, 1, 0, 1, 0.5]] * 10)]})
    m.save(tmp_path / "t.json")
    doc = json.loads((tmp_path / "t.json").read_text())
    assert "n2 k1" in TimingModel.load(tmp_path / "t.json").classes["x"]["short"]
    doc["format"] = "netdiff-timing/5"
    (tmp_path / "t.json").write_text(json.dumps(doc))
    assert "short" not in TimingModel.load(tmp_path / "t.json").classes["x"]


def test_a_timing_file_without_short_flows_stamps_down_the_rows():
    """Without short-flow tables, arrival times are the row clock: the gaps ``gaps`` draws, summed
    down the rows (what repair wrote before short flows had a clock of their own)."""
    m = TimingModel.learn({"x": [np.geomspace(1e-4, 1, 50)]})
    flows = np.array([1, 2, 1, 3, 2, 1])
    sides = np.array([0, 0, 1, 0, 1, 0])
    got = m.arrival_ns(flows, sides, "x", seed=4)
    want = np.concatenate([[0], np.cumsum(np.rint(m.gaps(5, "x", 4, kinds=gap_kinds(flows, sides=sides)) * 1e9))])
    assert got.tolist() == want.astype(np.int64).tolist()


def test_timing_from_sidecars(tmp_path):
    paths = []
    for i, step in enumerate((0.01, 0.02)):
        t = np.arange(100) * step
        doc = {"class": "web", "packets": {"ts_sec": (1700000000 + t.astype(int)).tolist(),
                                           "ts_nsec": np.rint((t % 1) * 1e9).astype(int).tolist()}}
        p = tmp_path / f"s{i}.json"
        p.write_text(json.dumps(doc))
        paths.append(p)
    m = TimingModel.learn_from_sidecars(paths)
    assert m.classes["web"]["count"] == 198
    s = m.gaps(1000, "web")
    assert 0.0099 <= s.min() and s.max() <= 0.0201


def test_timing_bad_files(tmp_path):
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(NetdiffError, match="not a netdiff timing model"):
        TimingModel.load(tmp_path / "x.json")
    with pytest.raises(NetdiffError, match="sidecar"):
        TimingModel.learn_from_sidecars([tmp_path / "x.json"])
    with pytest.raises(NetdiffError, match="no such"):
        TimingModel.load(tmp_path / "missing.json")
    good = {"q": [1, 2], "p": [0, 1], "p_zero": 0}
    for bad in ({"q": [1, 2, 3], "p": [0, 0.7, 0.5], "p_zero": 0}, {"q": "abc", "p_zero": 0},
                {"q": [1, 2], "p": [0, "x"], "p_zero": 0}, {"q": [1, 2], "p": [0, 1]}, [1, 2],
                {**good, "kinds": {"bogus": good}}, {**good, "kinds": {"new": {"q": [1], "p_zero": 0}}},
                {**good, "kinds": [good]}, {**good, "short": [good]},
                {**good, "short": {"n2 k1": {"q": [1], "p_zero": 0}}}):
        (tmp_path / "b.json").write_text(json.dumps({"format": "netdiff-timing/3", "classes": {"x": bad}}))
        with pytest.raises(NetdiffError, match="malformed"):
            TimingModel.load(tmp_path / "b.json")


# --- addresses -------------------------------------------------------------------------------------

def test_pool_parsing_and_errors():
    v4, v6 = parse_pool("10.9.0.0/16, 192.168.1.7")
    assert [str(n) for n in v4] == ["10.9.0.0/16", "192.168.1.7/32"]
    assert str(v6[0]) == "fd00::/8"                 # IPv6 rows still get private addresses
    for bad in ("224.0.0.0/8", "127.0.0.0/8", "bogus", "255.255.255.255"):
        with pytest.raises(NetdiffError):
            parse_pool(bad)


def test_pool_draws_distinct_usable_addresses():
    p = AddressPool("10.0.0.0/22", seed=3)
    a = p.draw(4, 800)
    keys = {r.tobytes() for r in a}
    assert len(keys) == 800
    assert (a[:, 0] == 10).all() and (a[:, 1] == 0).all() and (a[:, 2] < 4).all()
    assert not ((a[:, 3] == 0) | (a[:, 3] == 255)).any()
    with pytest.raises(NetdiffError, match="too few usable"):
        AddressPool("10.0.0.0/30").draw(4, 5)
