"""Temporaries of a killed writer are cleared on resume; a live writer's are kept."""
from __future__ import annotations

import os
import subprocess
import sys

from netdiff.io.stale import remove_stale


def test_remove_stale_keeps_live_writers(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (tmp_path / f".web_000001.png.tmp{dead}").write_bytes(b"half")
    (tmp_path / f".curve.tmp{dead}.png").write_bytes(b"half")
    (tmp_path / f".step-0000100.partial{dead}").mkdir()
    (tmp_path / f".step-0000100.partial{dead}" / "trainable.safetensors").write_bytes(b"half")
    live = tmp_path / f".web_000002.png.tmp{os.getpid()}"
    live.write_bytes(b"being written")
    keep = [tmp_path / "web_000003.png", tmp_path / ".hidden_but_not_ours"]
    for f in keep:
        f.write_bytes(b"x")
    assert remove_stale(tmp_path) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name] + [f.name for f in keep])
