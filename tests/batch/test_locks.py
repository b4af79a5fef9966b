"""Two runs at once, a full disk, a killed holder, a file deleted from a finished stage: nothing is
lost. Pipelines here use relative paths (run from their own folder), so a run in one folder must
give the same bytes as a run in another."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from netdiff.pipeline.stages import run_pipeline
from netdiff.io.lock import LOCK_NAME, read_holder
from netdiff.pipeline.sample_captures import write_samples

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))}

STAGES = [
    {"name": "samples", "run": "samples {output} --seed {seed}", "output": "captures"},
    {"name": "images", "run": "pcap2img {captures} {output} --height 64", "inputs": ["captures"], "output": "images"},
    {"name": "rebuilt", "run": "img2pcap {images} {output}", "inputs": ["images"], "output": "rebuilt"},
]


def write_pipeline(folder: Path, stages=STAGES, out: str = "out", **vars) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / "p.yaml"
    p.write_text(yaml.safe_dump({"name": "t", "out": out, "vars": {"seed": 3, **vars}, "stages": stages}))
    return p


def batch(folder: Path, **kw) -> subprocess.Popen:
    """``netdiff batch p.yaml`` in ``folder``, in a child process."""
    return subprocess.Popen([sys.executable, "-m", "netdiff", "batch", "p.yaml"], cwd=folder, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def snapshot(out: Path, skip=("manifest.json", "batch.log")) -> dict[str, bytes]:
    """Every file a run left (its own log and manifest aside), byte for byte."""
    return {str(f.relative_to(out)): f.read_bytes() for f in sorted(out.rglob("*"))
            if f.is_file() and f.name not in skip}


def wait_for_holder(lock: Path, pid: int, proc: subprocess.Popen, timeout: float = 60) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        holder = read_holder(lock)
        if holder and holder.get("pid") == pid:
            return holder
        time.sleep(0.05)
    raise AssertionError(f"pid {pid} never took {lock} (exit {proc.poll()})")


@pytest.fixture(scope="module")
def lone(tmp_path_factory) -> dict[str, bytes]:
    """The pipeline run alone, start to end."""
    d = tmp_path_factory.mktemp("lone")
    write_pipeline(d)
    proc = batch(d)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    snap = snapshot(d / "out")
    assert any(k.startswith("rebuilt/") for k in snap) and not any(LOCK_NAME in k for k in snap)
    return snap


def test_second_run_on_the_same_folder_is_refused_and_the_first_finishes_as_if_alone(tmp_path, lone, cli,
                                                                                     monkeypatch):
    write_pipeline(tmp_path)
    first = batch(tmp_path)
    holder = wait_for_holder(tmp_path / "out" / LOCK_NAME, first.pid, first)
    monkeypatch.chdir(tmp_path)
    t0 = time.perf_counter()
    code, out, err = cli("batch", "p.yaml")
    waited = time.perf_counter() - t0
    assert first.poll() is None, "the first run should still have been running"
    assert code == 1 and waited < 5
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["started"]))
    assert lines[0] == (f"netdiff: error: out is being written by netdiff batch p.yaml (pid {first.pid} on host "
                        f"{holder['host']}, started {started}); wait for it to finish or stop it, then run again")
    assert out == ""
    _, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err
    assert snapshot(tmp_path / "out") == lone
    log = (tmp_path / "out" / "batch.log").read_text()
    assert log.count("pipeline t: 3 stages") == 1       # the refused run wrote nothing
    assert not (tmp_path / "out" / LOCK_NAME).exists()


def test_a_lock_left_by_kill_9_is_taken_over(tmp_path, lone):
    write_pipeline(tmp_path)
    killed = batch(tmp_path)
    wait_for_holder(tmp_path / "out" / LOCK_NAME, killed.pid, killed)
    time.sleep(0.5)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert read_holder(tmp_path / "out" / LOCK_NAME)["pid"] == killed.pid     # left behind
    again = batch(tmp_path)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert (f"out: taking over from netdiff batch p.yaml (pid {killed.pid} on host" in out
            and "that process is gone (killed or crashed)" in out), out
    assert snapshot(tmp_path / "out") == lone
    assert not list((tmp_path / "out").glob("*.partial"))


def test_a_lock_from_before_a_reboot_is_taken_over(tmp_path, cli):
    """A record from another boot of this host names a pid that means nothing now."""
    import socket

    folder = tmp_path / "caps"
    folder.mkdir()
    (folder / LOCK_NAME).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                "boot_id": "an-earlier-boot", "started": 1.0,
                                                "command": "netdiff samples"}) + "\n")
    code, out, err = cli("samples", folder)
    assert code == 0, err
    assert f"netdiff: {folder}: taking over from netdiff samples (pid {os.getpid()}" in err
    assert "the host has restarted since" in err
    assert not (folder / LOCK_NAME).exists()


def test_a_file_deleted_from_a_finished_stage_is_redone(tmp_path, lone, monkeypatch):
    write_pipeline(tmp_path)
    monkeypatch.chdir(tmp_path)
    run_pipeline("p.yaml", echo=lambda s: None)
    images = tmp_path / "out" / "images"
    victim = sorted(images.rglob("*.png"))[3]
    edited = sorted(images.rglob("*.json"))[0]
    victim.unlink()
    edited.write_text(edited.read_text().replace("{", "{ ", 1))
    logs = []
    run_pipeline("p.yaml", echo=logs.append)
    name, ename = victim.relative_to(images), edited.relative_to(images)
    assert (f"[images] redoing: its output out/images changed since it was made: 1 file missing ({name}); "
            f"1 file changed ({ename})") in logs, logs
    assert "[samples] up to date, skipped" in logs
    assert "[rebuilt] up to date, skipped" in logs        # the same images again: nothing downstream
    assert snapshot(tmp_path / "out") == lone
    # a stray file is a change too, and a missing output folder
    (images / "web_tcp" / "stray.png").write_bytes(b"x")
    shutil.rmtree(tmp_path / "out" / "rebuilt")
    logs.clear()
    run_pipeline("p.yaml", echo=logs.append)
    assert "[images] redoing: its output out/images changed since it was made: 1 file added (web_tcp/stray.png)" \
        in logs
    assert "[rebuilt] redoing: its output out/rebuilt is missing" in logs
    assert snapshot(tmp_path / "out") == lone


def test_an_unfinished_input_folder_is_refused(tmp_path, cli, monkeypatch):
    """A folder from outside the pipeline that its writer left half done is not used."""
    caps = tmp_path / "caps"
    write_samples(caps, seed=3)
    (caps / LOCK_NAME).write_text(json.dumps({"pid": 2 ** 22 + 1, "host": "elsewhere", "started": 1.0,
                                              "command": "netdiff samples"}) + "\n")
    write_pipeline(tmp_path, [STAGES[1] | {"inputs": ["{caps}"], "run": "pcap2img {caps} {output} --height 64"}],
                   caps="caps")
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("batch", "p.yaml")
    assert code == 1
    assert "stage images: input caps is unfinished (its writer netdiff samples (pid 4194305 on host elsewhere" in err
    assert not (tmp_path / "out" / "images").exists()


# --- a full disk ---------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs at tmp_path/disk and a function that resizes it (skipped where mounting is not
    allowed: not root, or no CAP_SYS_ADMIN in a container)."""
    disk = tmp_path / "disk"
    disk.mkdir()

    def mount(size: str, remount: bool = False) -> None:
        opts = f"remount,size={size}" if remount else f"size={size}"
        subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(disk)], check=True,
                       capture_output=True)

    try:
        mount("300k")
    except (subprocess.CalledProcessError, FileNotFoundError, PermissionError) as e:
        pytest.skip(f"cannot mount a tmpfs here ({e})")
    try:
        yield disk, lambda size: mount(size, remount=True)
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def error_lines(err: str) -> list[str]:
    assert "Traceback" not in err and "internal error" not in err, err
    return [line for line in err.splitlines() if line.startswith("netdiff: error:")]


@pytest.fixture(scope="module")
def captures(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("caps")
    write_samples(d / "caps", seed=3)
    return d


def test_pcap2img_on_a_full_disk_then_again_with_room(tmp_path, small_disk, captures, cli, monkeypatch):
    disk, resize = small_disk
    monkeypatch.chdir(tmp_path)
    shutil.copytree(captures / "caps", tmp_path / "caps")
    straight = tmp_path / "straight"
    assert cli("pcap2img", "caps", straight, "--height", 64)[0] == 0
    code, _, err = cli("pcap2img", "caps", "disk/images", "--height", 64)
    assert code == 1
    assert error_lines(err) == ["netdiff: error: pcap2img: no space left on device; free some space or write to "
                                "another disk, then run it again (disk/images is marked unfinished and is "
                                "written again)"]
    assert read_holder(disk / "images" / LOCK_NAME)["failed"].startswith("OSError: [Errno 28]")
    assert list((disk / "images").rglob("*.png"))               # it stopped midway
    resize("4m")
    code, _, err = cli("pcap2img", "caps", "disk/images", "--height", 64)
    assert code == 0, err
    assert f"netdiff: disk/images: taking over from netdiff pcap2img (pid {os.getpid()}" in err
    assert "it stopped with an error (OSError: [Errno 28] No space left on device)" in err
    assert snapshot(disk / "images") == snapshot(straight)


def test_batch_pcap2img_on_a_full_disk_leaves_nothing_then_finishes(tmp_path, small_disk, captures, cli,
                                                                    monkeypatch):
    disk, resize = small_disk
    stage = STAGES[1] | {"inputs": ["{caps}"], "run": "pcap2img {caps} {output} --height 64"}
    write_pipeline(tmp_path, [stage], out="disk/out", caps="caps")
    shutil.copytree(captures / "caps", tmp_path / "caps")
    straight = tmp_path / "straight"
    write_pipeline(straight, [stage], caps="caps")
    shutil.copytree(captures / "caps", straight / "caps")
    monkeypatch.chdir(straight)
    assert cli("batch", "p.yaml")[0] == 0
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("batch", "p.yaml")
    assert code == 1
    assert error_lines(err)[0].startswith("netdiff: error: pcap2img: no space left on device")
    assert error_lines(err)[1].startswith("netdiff: error: stage images failed (exit 1)")
    assert sorted(p.name for p in (disk / "out").iterdir()) == [LOCK_NAME, "batch.log", "manifest.json"]
    resize("4m")
    code, out, err = cli("batch", "p.yaml")
    assert code == 0, err
    assert "it stopped with an error (NetdiffError: stage images failed (exit 1)" in out
    assert snapshot(disk / "out" / "images") == snapshot(straight / "out" / "images")


TRAIN = {"name": "train-base", "inputs": ["{imgs}"], "output": "model", "resume": "--resume latest",
         "run": "train-base {imgs} --config tiny --output {output} --steps 6 --seed 0 --checkpoint-every 2 "
                "--threads 1 --quiet"}


def test_train_base_on_a_full_disk_then_again_with_room(tmp_path, small_disk, captures, cli, monkeypatch):
    disk, resize = small_disk
    monkeypatch.chdir(tmp_path)
    assert cli("pcap2img", captures / "caps", "imgs", "--height", 32)[0] == 0
    straight = tmp_path / "straight"
    write_pipeline(straight, [TRAIN], imgs="imgs")
    shutil.copytree(tmp_path / "imgs", straight / "imgs")
    monkeypatch.chdir(straight)
    code, _, err = cli("batch", "p.yaml")
    assert code == 0, err
    # room for the first checkpoint (~51 MB), not for the second
    resize("75m")
    write_pipeline(tmp_path, [TRAIN], out="disk/out", imgs="imgs")
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("batch", "p.yaml")
    assert code == 1
    lines = error_lines(err)
    assert lines[0].startswith("netdiff: error: train-base: no space left on device (disk/out/model.partial"), err
    assert lines[0].endswith("then run it again (disk/out/model.partial is marked unfinished and is written again)")
    assert (disk / "out" / "model.partial" / "checkpoints" / "step-0000002" / "state.json").is_file()
    resize("300m")
    code, out, err = cli("batch", "p.yaml")
    assert code == 0, err
    assert "[train-base] resuming: netdiff train-base imgs" in out
    # the training log and loss plot hold timings; everything else is the straight run's, byte for byte
    timings = ("manifest.json", "batch.log", "train_log.json", "loss.png")
    assert snapshot(disk / "out" / "model", timings) == snapshot(straight / "out" / "model", timings)


def test_output_changes_names_what_differs_and_reads_older_manifests(tmp_path):
    from netdiff.pipeline.stages import output_changes, scan_tree

    out = tmp_path / "o"
    out.mkdir()
    for i in range(5):
        (out / f"{i}.png").write_bytes(bytes([i]) * 10)
    digest, files = scan_tree(out)
    assert files["3.png"] == [10, hashlib.sha256(bytes([3]) * 10).hexdigest()]
    assert output_changes(out, {"output": digest, "files": files}) is None
    assert output_changes(out, {"output": digest}) is None            # a manifest from before file lists
    for i in range(4):
        (out / f"{i}.png").unlink()
    assert output_changes(out, {"output": digest, "files": files}) == (
        f"its output {out} changed since it was made: 4 files missing (0.png, 1.png, 2.png and 1 more)")
    assert output_changes(out, {"output": digest}) == f"its output {out} changed since it was made"
    (out / LOCK_NAME).write_text(json.dumps({"pid": 2 ** 22 + 1, "host": "elsewhere", "started": 1.0,
                                             "command": "netdiff pcap2img", "failed": "OSError: full"}) + "\n")
    assert output_changes(out, {"output": digest, "files": files}).startswith(
        f"its output {out} is unfinished (its writer netdiff pcap2img (pid 4194305 on host elsewhere")
