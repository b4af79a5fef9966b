"""benchmarks/fidelity.py --restamped: real windows whose timestamps the timing model draws anew,
bytes and order kept, so the flow measures show what the timing model alone costs."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from netdiff.bits.layout import named_layout
from netdiff.io.pcap import read_capture
from netdiff.pipeline.conversions import pcap2img
from netdiff.packet_repair.timing import TimingModel

REPO = Path(__file__).resolve().parents[2]


def _fidelity():
    spec = importlib.util.spec_from_file_location("fidelity_bench", REPO / "benchmarks" / "fidelity.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _times(batch) -> np.ndarray:
    return batch.ts_sec * 10 ** 9 + batch.ts_nsec


def test_restamped_windows_keep_bytes_and_draw_gaps_by_kind(sample_captures, tmp_path):
    fid = _fidelity()
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
        assert [a.packet(i) for i in range(len(a))] == [b.packet(i) for i in range(len(b))]
        ta, tb = _times(a), _times(b)
        assert tb[0] == ta[0] and (np.diff(tb) >= 0).all()
        moved += int((ta != tb).any())
        assert (out / rel).read_bytes() == (again / rel).read_bytes()
    assert moved > len(files) // 2
    # the gaps come from the class's model: within its learnt range
    model = TimingModel.load(images / "timing.json")
    for cls, entry in model.classes.items():
        gaps = np.concatenate([np.diff(_times(read_capture(f)[0])) / 1e9 for f in sorted((out / cls).glob("*.pcap"))])
        top = 10 ** max(entry["q"]) * (1 + 1e-6)
        assert (gaps <= top + 1e-9).all(), cls
