"""benchmarks/fidelity.py --restamped: real windows whose timestamps the timing model draws anew,
bytes kept and every flow's packets in their order (short flows keep their own clock, so packets of
different flows may change places), so the flow measures show what the timing model alone costs."""
from __future__ import annotations

import numpy as np

from netdiff.bits.codec import flow_keys, parse
from netdiff.bits.layout import named_layout
from netdiff.io.pcap import read_capture
from netdiff.pipeline.conversions import pcap2img
from netdiff.packet_repair.timing import SHORT_MAX, TimingModel

from tests.conftest import benchmark_module


def _times(batch) -> np.ndarray:
    return batch.ts_sec * 10 ** 9 + batch.ts_nsec


def test_restamped_windows_keep_bytes_and_draw_gaps_by_kind(sample_captures, tmp_path):
    fid = benchmark_module("fidelity")
    images = tmp_path / "images"
    pcap2img(sample_captures, images, layout=named_layout("netdiffusion", height=32))
    windows = fid.cut_windows(sample_captures, tmp_path / "windows", 64)
    out = fid.restamp(windows, tmp_path / "restamped", images / "timing.json", seed=3)
    again = fid.restamp(windows, tmp_path / "again", images / "timing.json", seed=3)
    files = sorted(windows.rglob("*.pcap"))
    assert len(files) > 5
    moved = 0
    for f in files:
        rel = f.relative_to(windows)
        a, _ = read_capture(f)
        b, _ = read_capture(out / rel)
        pa, pb = [a.packet(i) for i in range(len(a))], [b.packet(i) for i in range(len(b))]
        assert sorted(pa) == sorted(pb)
        ka, kb = flow_keys(parse(a)), flow_keys(parse(b))
        for k in np.unique(ka):
            assert [pa[i] for i in np.flatnonzero(ka == k)] == [pb[i] for i in np.flatnonzero(kb == k)]
        ta, tb = _times(a), _times(b)
        assert tb[0] == ta[0] and (np.diff(tb) >= 0).all()
        moved += int((ta != tb).any())
        assert (out / rel).read_bytes() == (again / rel).read_bytes()
    assert moved > len(files) // 2
    # the times come from the class's model: no capture lasts longer than its rows' largest gaps
    # and a short flow's largest own gaps after them
    model = TimingModel.load(images / "timing.json")
    for cls, entry in model.classes.items():
        top_row = 10 ** max(entry["q"]) * (1 + 1e-6)
        top_short = 10 ** max([max(e["q"]) for e in entry.get("short", {}).values()] or [0]) * (1 + 1e-6)
        for f in sorted((out / cls).glob("*.pcap")):
            t = _times(read_capture(f)[0]) / 1e9
            assert np.ptp(t) <= (len(t) - 1) * top_row + (SHORT_MAX - 1) * top_short + 1e-6, f.name
