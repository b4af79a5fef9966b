"""Masked diffusion: the model samples the spread of a class, not its mean, and keeps its layout."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from netdiff.eval.spread import sample_spread
from netdiff.model.data import find_pngs, load_bits
from netdiff.model.masked import MaskedBitScheduler, one_hot_visible, split_logits


@pytest.fixture(scope="module")
def trained(img_dir, tmp_path_factory):
    """tiny (masked) trained long enough to learn the two classes' layouts (~40 s on one core)."""
    from netdiff.model.train_base import TrainBaseArgs, main

    out = tmp_path_factory.mktemp("masked")
    main(TrainBaseArgs(str(img_dir), str(out), "tiny", steps=120, batch_size=8, checkpoint_every=0,
                       progress=False))
    return out


def _real(img_dir, cls):
    return [load_bits(p, 1088) for p in find_pngs(img_dir) if p.parent.name == cls]


@pytest.mark.slow
@pytest.mark.parametrize("cls", ["web_tcp", "dns_udp"])
def test_samples_have_the_spread_and_the_layout_of_real_images(trained, img_dir, cls):
    """Ports, IDs, sequence numbers and windows of the training flows are random: real images of a
    class differ in many bits. Samples must differ at least half as much (the Gaussian model of
    the same size gave 0.02% of bits), while their absent/present layout matches the class."""
    from netdiff.model.generate import generate

    real = _real(img_dir, cls)
    gen = generate(trained, cls, 6, 0, None, progress=False).bits
    real_spread = sample_spread(real)["present"]
    gen_spread = sample_spread(list(gen))["present"]
    assert gen_spread >= 0.5 * real_spread, (gen_spread, real_spread)
    # layout: which pixels are absent (-1) agrees with the class's typical row pattern (an untrained
    # model, uniform over the three states, agrees on about 0.45; after 120 steps 0.84-0.86)
    typical = (np.stack(real) == -1).mean(0) > 0.5
    agree = float(((gen == -1) == typical[None]).mean())
    assert agree >= 0.8, agree


def test_same_seed_same_samples_different_seed_different(trained):
    from netdiff.model.generate import generate

    a = generate(trained, "dns_udp", 2, 3, None, steps=4, progress=False).bits
    b = generate(trained, "dns_udp", 2, 3, None, steps=4, batch_size=1, progress=False).bits
    c = generate(trained, "dns_udp", 2, 5, None, steps=4, progress=False).bits
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_scheduler_reveals_every_pixel_by_the_last_step():
    sched = MaskedBitScheduler()
    sched.set_timesteps(5)
    shape = (2, 4, 2, 3)
    values, mask = torch.zeros(shape), torch.ones(shape, dtype=torch.bool)
    gens = [torch.Generator().manual_seed(k) for k in range(2)]
    hidden = []
    logits = torch.zeros(2, 12, 2, 3)
    logits[:, 8:] = 5.0                              # state 2 (bit 1) nearly certain
    for t in sched.timesteps:
        out = sched.step(logits, t, values, mask, generator=gens)
        values, mask = out.prev_sample, out.mask
        hidden.append(int(mask.sum()))
    assert hidden == sorted(hidden, reverse=True) and hidden[-1] == 0
    assert float((values == 1).float().mean()) > 0.9


def test_one_hot_hides_masked_pixels_and_logits_fold_back():
    values = torch.tensor([[-1.0, 0.0, 1.0, 1.0]]).view(1, 4, 1, 1)
    mask = torch.tensor([False, False, False, True]).view(1, 4, 1, 1)
    oh = one_hot_visible(values, mask).view(1, 3, 4)
    assert oh[0, :, 0].tolist() == [1, 0, 0] and oh[0, :, 1].tolist() == [0, 1, 0]
    assert oh[0, :, 2].tolist() == [0, 0, 1] and oh[0, :, 3].tolist() == [0, 0, 0]
    assert torch.equal(split_logits(one_hot_visible(values, mask)), oh.view(1, 3, 4, 1, 1))


def test_layout_chain_keeps_each_row_one_stack_and_saves_exactly(img_dir, tmp_path):
    """Rows drawn from the chain are layouts the class has (whole TCP or whole UDP rows, never a
    mix), the chain follows the class, and it round-trips through safetensors."""
    from netdiff.model.layouts import LayoutChain

    images = [load_bits(p, 1088) for p in find_pngs(img_dir)]
    labels = [p.parent.name for p in find_pngs(img_dir)]
    chain = LayoutChain.fit(images, labels)
    seen = {cls: {(im != -1)[r].tobytes() for im, lab in zip(images, labels) if lab == cls
                  for r in range(im.shape[0])} for cls in set(labels)}
    g = torch.Generator().manual_seed(0)
    for cls in ("web_tcp", "dns_udp"):
        drawn = chain.sample(cls, 32, g)
        assert drawn.shape == (32, 1088)
        assert all(row.tobytes() in seen[cls] for row in drawn)
    chain.save(tmp_path)
    again = LayoutChain.load(tmp_path)
    assert again.classes == chain.classes and np.array_equal(again.vocab, chain.vocab)
    assert np.array_equal(again.trans, chain.trans.astype(np.float32))
    a = again.sample("dns_udp", 32, torch.Generator().manual_seed(5))
    b = chain.sample("dns_udp", 32, torch.Generator().manual_seed(5))
    assert np.array_equal(a, b)


def test_generated_rows_follow_their_drawn_layout(trained):
    """With layouts (the default) every generated row is exactly one of the class's layouts."""
    from netdiff.model.generate import generate
    from netdiff.model.store import load_model

    from netdiff.model.flow_chain import FlowChain

    chain = load_model(trained).layouts
    assert isinstance(chain, FlowChain)      # train-base saves the flows-first chain
    vocab = {row.tobytes() for row in chain.vocab}
    bits = generate(trained, "web_tcp", 2, 0, None, steps=4, progress=False).bits
    rows = [(b != -1)[r].tobytes() for b in bits for r in range(b.shape[0])]
    assert all(r in vocab for r in rows)
    free = generate(trained, "web_tcp", 2, 0, None, steps=4, layouts=False, progress=False).bits
    assert not np.array_equal(free, bits)


def _port_pairs(image) -> set:
    from netdiff.bits.layout import NETDIFFUSION

    s, d = NETDIFFUSION.fields["tcp_sprt"], NETDIFFUSION.fields["tcp_dprt"]
    pairs = set()
    for row in image:
        if (row[s] != -1).all():
            a, b = row[s].tobytes(), row[d].tobytes()
            pairs.add(tuple(sorted((a, b))))
    return pairs


def test_flow_links_tie_the_ports_of_a_flows_packets(trained, img_dir):
    """Every training web_tcp image is one flow (one port pair over 32 packets): generated images
    keep their rows in few flows, where pixel-by-pixel ports gave nearly every row its own."""
    from netdiff.model.generate import generate

    real = _real(img_dir, "web_tcp")
    assert all(len(_port_pairs(im)) == 1 for im in real)
    from netdiff.bits.layout import NETDIFFUSION

    tied = generate(trained, "web_tcp", 3, 0, None, steps=6, progress=False).bits
    tcp_rows = [int((im[:, NETDIFFUSION.fields["tcp_sprt"]] != -1).all(1).sum()) for im in tied]
    assert min(tcp_rows) >= 24, tcp_rows
    n_tied = [len(_port_pairs(im)) for im in tied]
    assert max(n_tied) <= 4, n_tied      # 16-bit ports drawn per row would give ~one pair per row


def test_damaged_layout_file_is_a_one_line_error(tmp_path):
    from netdiff.errors import NetdiffError
    from netdiff.model.layouts import LAYOUTS_FILE, LayoutChain

    (tmp_path / LAYOUTS_FILE).write_bytes(b"\x10\x00\x00\x00garbage")
    with pytest.raises(NetdiffError, match="damaged layout file"):
        LayoutChain.load(tmp_path)


def test_taller_images_keep_a_flow_across_their_windows(trained):
    """Each web_tcp training image is one flow; a 64-packet image is two windows of the model, and
    the flow links are drawn over both, so the second window goes on with the first's ports
    instead of drawing new ones."""
    from netdiff.bits.layout import NETDIFFUSION
    from netdiff.model.generate import generate

    tall = generate(trained, "web_tcp", 2, 0, None, steps=6, height=64, progress=False).bits
    assert tall.shape == (2, 64, NETDIFFUSION.width)
    for im in tall:
        top, bottom = _port_pairs(im[:32]), _port_pairs(im[32:])
        assert top & bottom, (top, bottom)
        assert len(_port_pairs(im)) <= 4
    # one window: the same bytes as without --height; same seed, same bytes
    assert np.array_equal(generate(trained, "web_tcp", 1, 0, None, steps=4, height=32, progress=False).bits,
                          generate(trained, "web_tcp", 1, 0, None, steps=4, progress=False).bits)
    again = generate(trained, "web_tcp", 2, 0, None, steps=6, height=64, batch_size=2, progress=False).bits
    assert np.array_equal(tall, again)


def test_windows_below_a_captures_end_skip_the_network(trained, monkeypatch):
    """A tall image whose walk ends (a capture's end: rows without a packet to the bottom, as the
    walks of a class of short captures do) leaves the windows below it out of sampling. The bits
    are those of sampling every window, and fewer windows go through the network."""
    from netdiff.model import generate as G
    from netdiff.model.flow_chain import FlowChain
    from netdiff.model.masked_pipeline import NetdiffMaskedPipeline

    walk = FlowChain.sample_structure

    def ended(self, cls, rows, generator, layout=None):
        # the fixture's images are full: a layout without a packet is added after the walk
        self.vocab = self.vocab[:len(self.vocab) - getattr(self, "added", 0)]
        ids, flows = walk(self, cls, rows, generator, layout)
        self.vocab, self.added = np.vstack([self.vocab, np.zeros_like(self.vocab[:1])]), 1
        ids = ids.copy()
        ids[100:] = len(self.vocab) - 1
        return ids, [f for f in ([(r, v) for r, v in f if r < 100] for f in flows) if len(f) > 1]

    sampled = []
    call = NetdiffMaskedPipeline.__call__

    def counted(self, prompts, **kw):
        sampled.append(len(prompts))
        return call(self, prompts, **kw)

    monkeypatch.setattr(FlowChain, "sample_structure", ended)
    monkeypatch.setattr(NetdiffMaskedPipeline, "__call__", counted)
    skipping = G.generate(trained, "web_tcp", 2, 0, None, steps=4, height=256, progress=False).bits
    assert sum(sampled) == 2 * 4            # rows 0-99: windows 0-3 of 8
    monkeypatch.setattr(G, "_windows_with_packets", lambda extra, pixels: (list(range(len(extra["present"]))), extra))
    sampled.clear()
    every = G.generate(trained, "web_tcp", 2, 0, None, steps=4, height=256, progress=False).bits
    assert sum(sampled) == 2 * 8
    assert np.array_equal(skipping, every)
    assert (every[:, 128:] == -1).all() and (every[:, :100] != -1).any(axis=(1, 2)).all()


def test_planned_packets_are_the_rows_generate_fills(trained, monkeypatch):
    """planned_packets walks the structure stage alone: each image's rows with a packet, as
    generate then samples them (same seeds, same walks; here walks that end at a row of their
    own, as a class of short captures' walks do)."""
    from netdiff.model.flow_chain import FlowChain
    from netdiff.model.generate import generate, planned_packets

    walk = FlowChain.sample_structure

    def ended(self, cls, rows, generator, layout=None):
        self.vocab = self.vocab[:len(self.vocab) - getattr(self, "added", 0)]
        ids, flows = walk(self, cls, rows, generator, layout)
        cut = 10 + int(torch.randint(0, 50, (1,), generator=generator))
        self.vocab, self.added = np.vstack([self.vocab, np.zeros_like(self.vocab[:1])]), 1
        ids = ids.copy()
        ids[cut:] = len(self.vocab) - 1
        return ids, [f for f in ([(r, v) for r, v in f if r < cut] for f in flows) if len(f) > 1]

    monkeypatch.setattr(FlowChain, "sample_structure", ended)
    bits = generate(trained, "dns_udp", 3, 7, None, steps=2, height=64, progress=False).bits
    planned = planned_packets(trained, "dns_udp", [7, 8, 9], height=64)
    assert planned == [int((im != -1).any(1).sum()) for im in bits] and len(set(planned)) > 1, planned
    assert planned_packets(trained, "no_such_class", [7], height=64) == [64]


def test_height_must_be_whole_windows(trained):
    from netdiff.errors import NetdiffError
    from netdiff.model.generate import generate

    with pytest.raises(NetdiffError, match="multiple of the model's 32"):
        generate(trained, "web_tcp", 1, 0, None, steps=2, height=48, progress=False)


def test_layout_chain_counts_flows_over_a_captures_windows(tmp_path, make_tcp_flow):
    """One 64-packet flow cut by pcap2img into two windows (cap_0000.png, cap_0001.png) is one
    stream: the flow is new once, not once per window; a gap in the numbering starts a new stream."""
    import json
    import random

    from netdiff.bits.codec import encode
    from netdiff.bits.layout import NETDIFFUSION
    from netdiff.image.codec import write_png
    from netdiff.io.pcap import PacketBatch
    from netdiff.model.config import load_config
    from netdiff.model.data import ImageDataset
    from netdiff.model.layouts import LayoutChain

    bits, _ = encode(PacketBatch.from_packets(make_tcp_flow(random.Random(1), 64)), NETDIFFUSION)
    for k, name in ((0, "cap_0000"), (1, "cap_0001"), (0, "cap_0003")):
        write_png(tmp_path / "web" / f"{name}.png", bits[32 * k: 32 * k + 32])
        (tmp_path / "web" / f"{name}.json").write_text(json.dumps({"class": "web"}))
    ds = ImageDataset(tmp_path, load_config("tiny").image)
    keys = ds.stream_keys()
    assert keys[0] == keys[1] != keys[2]
    images, labels = [e.bits for e in ds.examples], [e.cls for e in ds.examples]
    joined = LayoutChain.fit(images[:2], labels[:2], streams=keys[:2])
    alone = LayoutChain.fit(images[:2], labels[:2])
    new = lambda chain: int(chain.links[0, :, 0].sum())          # noqa: E731
    assert (new(joined), new(alone)) == (1, 2)
    assert joined.links.sum() == alone.links.sum() == 64
    # transitions run across the edge too: 63 between 64 rows, against 2 x 31
    assert (joined.trans.sum(), alone.trans.sum()) == (63, 62)


def test_a_model_saved_with_a_layout_chain_generates_as_it_did(trained, img_dir, tmp_path):
    """Model folders saved before stop 32 hold a ``LayoutChain``: they load it and generate with it,
    its layouts and flow ties drawn exactly as its own ``sample_ids`` and ``sample_flows`` draw
    them."""
    import shutil

    from netdiff.bits.layout import NETDIFFUSION
    from netdiff.model.generate import generate
    from netdiff.model.layouts import LayoutChain
    from netdiff.model.store import load_model

    old = tmp_path / "old"
    shutil.copytree(trained, old)
    images = [load_bits(p, 1088) for p in find_pngs(img_dir)]
    chain = LayoutChain.fit(images, [p.parent.name for p in find_pngs(img_dir)])
    chain.save(old)
    assert isinstance(load_model(old).layouts, LayoutChain)
    bits = generate(old, "web_tcp", 2, 0, None, steps=4, progress=False).bits
    vocab = {row.tobytes() for row in chain.vocab}
    assert all((b != -1)[r].tobytes() in vocab for b in bits for r in range(b.shape[0]))
    g = torch.Generator().manual_seed(0 + 2_000_003)      # image 0's structure stream (generate)
    ids = chain.sample_ids("web_tcp", 32, g)
    assert np.array_equal(bits[0] != -1, chain.vocab[ids])
    assert len(_port_pairs(bits[0])) <= 4
