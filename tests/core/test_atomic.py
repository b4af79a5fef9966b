"""netdiff.io.atomic: whole files or nothing, no temporaries left, no clash between processes."""
from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys

import pytest

from netdiff.io.atomic import (atomic_open, atomic_path, atomic_write_bytes, atomic_write_text, replace_dir,
                               stage_dir, temp_path)
from netdiff.model.data import find_pngs
from netdiff.io.stale import remove_stale


class Boom(Exception):
    pass


def names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_writes_content_and_leaves_only_the_target(tmp_path):
    atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "b.json", '{"k": 1}\n')
    with atomic_path(tmp_path / "c.png", keep_suffix=True) as tmp:
        tmp.write_bytes(b"png")
    with atomic_open(tmp_path / "d.csv") as f:
        f.write(b"x,")
        f.write(b"y\n")
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.json").read_text() == '{"k": 1}\n'
    assert (tmp_path / "c.png").read_bytes() == b"png"
    assert (tmp_path / "d.csv").read_bytes() == b"x,y\n"
    assert names(tmp_path) == ["a.bin", "b.json", "c.png", "d.csv"]


def test_overwrites(tmp_path):
    target = tmp_path / "f.json"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert names(tmp_path) == ["f.json"]


@pytest.mark.parametrize("how", ["path", "open", "nothing written"])
def test_failed_write_keeps_the_old_target_and_no_temporary(tmp_path, how):
    target = tmp_path / "f.pcap"
    target.write_bytes(b"old")
    with pytest.raises(Boom):
        if how == "path":
            with atomic_path(target) as tmp:
                tmp.write_bytes(b"half")
                raise Boom
        elif how == "open":
            with atomic_open(target) as f:
                f.write(b"half")
                raise Boom
        else:
            with atomic_path(target):
                raise Boom
    assert target.read_bytes() == b"old"
    assert names(tmp_path) == ["f.pcap"]


def test_failed_write_creates_no_target(tmp_path):
    with pytest.raises(Boom):
        with atomic_path(tmp_path / "new.png") as tmp:
            tmp.write_bytes(b"half")
            raise Boom
    assert names(tmp_path) == []


def test_failed_rename_removes_the_temporary(tmp_path):
    (tmp_path / "taken").mkdir()                # a folder cannot be replaced by a file
    (tmp_path / "taken" / "x").write_bytes(b"")
    with pytest.raises(OSError):
        atomic_write_bytes(tmp_path / "taken", b"data")
    assert names(tmp_path) == ["taken"]


def test_temporary_names_are_hidden_per_process_and_cleared_when_stale(tmp_path):
    tmp = temp_path(tmp_path / "web_000001.png")
    assert tmp.parent == tmp_path and tmp.name == f".web_000001.png.tmp{os.getpid()}"
    kept = temp_path(tmp_path / "curve.png", keep_suffix=True)
    assert kept.name == f".curve.tmp{os.getpid()}.png"
    child = subprocess.run([sys.executable, "-c", "import sys; from netdiff.io.atomic import temp_path; "
                            "print(temp_path(sys.argv[1]).name)", str(tmp_path / "web_000001.png")],
                           capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}).stdout.strip()
    assert child != tmp.name and child.startswith(".web_000001.png.tmp")
    # a half-written PNG is never taken for an image, and is cleared once its writer is gone
    (tmp_path / "web_000002.png").write_bytes(b"done")
    (tmp_path / child).write_bytes(b"half")
    kept.write_bytes(b"half")
    assert [p.name for p in find_pngs(tmp_path)] == ["web_000002.png"]
    assert remove_stale(tmp_path) == 1          # the child's; ours is a live writer's
    assert names(tmp_path) == sorted([kept.name, "web_000002.png"])


def _hammer(target: str, byte: int, times: int) -> None:
    for _ in range(times):
        atomic_write_bytes(target, bytes([byte]) * 65536)


def test_processes_writing_one_target_never_mix(tmp_path):
    target = tmp_path / "shared.bin"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_hammer, args=(str(target), b, 40)) for b in range(1, 5)]
    for p in procs:
        p.start()
    while any(p.is_alive() for p in procs):
        if target.exists():
            data = target.read_bytes()
            assert len(data) == 65536 and len(set(data)) == 1     # always one whole write
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert len(set(target.read_bytes())) == 1
    assert names(tmp_path) == ["shared.bin"]


def test_stage_and_replace_dir(tmp_path):
    final = tmp_path / "unet"
    final.mkdir()
    (final / "old.safetensors").write_bytes(b"old")
    staged = stage_dir(tmp_path, "unet")
    assert staged.name == f".unet.partial{os.getpid()}" and not any(staged.iterdir())
    (staged / "new.safetensors").write_bytes(b"new")
    replace_dir(staged, final)
    assert names(final) == ["new.safetensors"]
    assert names(tmp_path) == ["unet"]
    (tmp_path / f".unet.partial{os.getpid()}").mkdir()        # a leftover of this pid is cleared
    (tmp_path / f".unet.partial{os.getpid()}" / "junk").write_bytes(b"")
    assert not any(stage_dir(tmp_path, "unet").iterdir())
