"""Generation split over processes (accelerate launch) and continued after an interruption gives
the same images, byte for byte, as one uninterrupted process."""
from __future__ import annotations

import os
import subprocess
import sys

from netdiff.model.generate import generate

FAST = dict(steps=3, progress=False)


def pngs(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def test_shards_and_skip_existing_change_no_byte(tiny_model, tmp_path):
    whole = generate(tiny_model, "web_tcp", 5, 11, tmp_path / "one", **FAST)
    assert len(whole.images) == 5
    parts = [generate(tiny_model, "web_tcp", 5, 11, tmp_path / "split", shard=(r, 2), **FAST) for r in (0, 1)]
    assert [len(p.images) for p in parts] == [3, 2]
    assert pngs(tmp_path / "split") == pngs(tmp_path / "one")

    # an interrupted run: two images missing; going on makes just those two
    for name in ("web_tcp_000012.png", "web_tcp_000015.png"):
        (tmp_path / "split" / name).unlink()
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "split").glob("*.png")}
    again = generate(tiny_model, "web_tcp", 5, 11, tmp_path / "split", skip_existing=True, **FAST)
    assert sorted(p.name for p in again.images) == ["web_tcp_000012.png", "web_tcp_000015.png"]
    assert all((tmp_path / "split" / n).stat().st_mtime_ns == t for n, t in before.items())
    assert pngs(tmp_path / "split") == pngs(tmp_path / "one")
    done = generate(tiny_model, "web_tcp", 5, 11, tmp_path / "split", skip_existing=True, **FAST)
    assert done.images == []


def test_generate_under_accelerate_launch(tiny_model, tmp_path):
    """Two processes (CPU stand-ins for two GPUs) share one generate command's images."""
    generate(tiny_model, "dns_udp", 4, 0, tmp_path / "one", **FAST)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "netdiff.cli", "generate", "--model", str(tiny_model), "--class", "dns_udp", "--count", "4",
           "--seed", "0", "--steps", "3", "--output", str(tmp_path / "two"), "--quiet"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "process 1 of 2" in r.stdout and "process 2 of 2" in r.stdout
    assert pngs(tmp_path / "two") == pngs(tmp_path / "one")
