"""A machine that runs out of something (memory, file handles, a writable disk) gives one line
naming the step and what to do, exit 1, never a traceback; an output folder is locked by one
writer at a time."""
from __future__ import annotations

import errno
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from netdiff.errors import describe_resource_error, final_name
from netdiff.io.lock import LOCK_NAME, OutputLocked, output_lock, read_holder

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))}


def limited(args: list, cwd: Path, limit: int, which=resource.RLIMIT_AS) -> subprocess.CompletedProcess:
    """``python -m netdiff ARGS`` with resource ``which`` capped at ``limit``."""
    return subprocess.run([sys.executable, "-m", "netdiff", *map(str, args)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=600,
                          preexec_fn=lambda: resource.setrlimit(which, (limit, limit)))


@pytest.fixture(scope="module")
def images(tmp_path_factory, sample_captures) -> Path:
    from netdiff.bits.layout import named_layout
    from netdiff.pipeline.conversions import pcap2img

    d = tmp_path_factory.mktemp("imgs") / "imgs"
    pcap2img(sample_captures, d, layout=named_layout("netdiffusion", payload_bytes=0, height=32))
    return d


@pytest.mark.slow
def test_out_of_memory_while_training_is_one_line(tmp_path, images):
    """Address space capped: one image per step trains, 4096 per step does not."""
    limit = 2500 << 20
    common = ["train-base", images, "--config", "tiny", "--steps", "1", "--threads", "1", "--quiet"]
    small = limited(common + ["--output", tmp_path / "small", "--batch-size", "1"], tmp_path, limit)
    if small.returncode != 0:
        pytest.skip(f"torch needs more than {limit >> 20} MiB of address space here: {small.stderr[-200:]}")
    big = limited(common + ["--output", tmp_path / "big", "--batch-size", "4096"], tmp_path, limit)
    assert big.returncode == 1, big.stderr
    assert "Traceback" not in big.stderr
    line, = big.stderr.strip().splitlines()
    assert line.startswith("netdiff: error: train-base: out of memory (")
    assert line.endswith("use a smaller --batch-size (with --grad-accum to keep the effective batch) or "
                         "--mixed-precision bf16 on a GPU, then run again with --resume latest to go on from "
                         "the last checkpoint")


def test_too_many_open_files_is_one_line(tmp_path):
    """A real EMFILE (the descriptor limit reached) and how the CLI words it."""
    code = ("import resource, errno\n"
            "from netdiff.errors import describe_resource_error\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (32, 32))\n"
            "held = []\n"
            "try:\n"
            f"    for i in range(100): held.append(open({str(tmp_path)!r} + f'/f{{i}}', 'w'))\n"
            "except OSError as e:\n"
            "    assert e.errno == errno.EMFILE, e\n"
            "    for f in held: f.close()\n"
            "    print(describe_resource_error(e, 'pcap2img'))\n")
    proc = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith(f"pcap2img: too many open files ({tmp_path}/f")
    assert proc.stdout.strip().endswith("; raise the limit (ulimit -n 4096) or run fewer jobs at once, "
                                        "then run it again")


def test_read_only_file_system_is_one_line(tmp_path, sample_captures, cli):
    ro = tmp_path / "ro"
    ro.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], check=True,
                       capture_output=True)
    except (subprocess.CalledProcessError, FileNotFoundError, PermissionError) as e:
        pytest.skip(f"cannot mount a tmpfs here ({e})")
    try:
        code, _, err = cli("pcap2img", sample_captures, ro / "images")
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)
    assert code == 1
    assert err == (f"netdiff: error: pcap2img: read-only file system ({ro / 'images'}); choose an output folder "
                   "on a writable file system, then run it again\n")


def test_permission_denied_and_wrapped_errors_are_named():
    e = PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/data/out/.report.json.tmp12")
    assert describe_resource_error(e, "evaluate") == (
        "evaluate: permission denied (/data/out/report.json); make it accessible to you or choose another "
        "path, then run it again")
    try:        # a library's own exception around a full disk (safetensors words it so)
        raise RuntimeError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                           'message: "No space left on device" })')
    except RuntimeError as wrapped:
        assert describe_resource_error(wrapped, "train-base").startswith(
            "train-base: no space left on device (RuntimeError); free some space")
    assert describe_resource_error(ValueError("bad value"), "generate") is None
    assert final_name("/o/.model.safetensors.tmp77") == "/o/model.safetensors"
    assert final_name("/o/.loss.tmp77.png") == "/o/loss.png"
    assert final_name("/o/plain.png") == "/o/plain.png"


# --- the lock itself -------------------------------------------------------------------------------

def test_a_failed_block_marks_its_output_and_an_untouched_new_folder_goes(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError):
        with output_lock(out, "netdiff test"):
            raise ValueError("before writing anything")
    assert not out.exists()                       # as it was
    with pytest.raises(ValueError):
        with output_lock(out, "netdiff test"):
            (out / "half.png").write_bytes(b"x")
            raise ValueError("midway")
    holder = read_holder(out / LOCK_NAME)
    assert holder["pid"] == os.getpid() and holder["failed"] == "ValueError: midway"
    lines = []
    with output_lock(out, "netdiff test", echo=lines.append):
        pass
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["started"]))
    assert lines == [f"{out}: taking over from netdiff test (pid {os.getpid()} on host {holder['host']}, "
                     f"started {started}): it stopped with an error (ValueError: midway); what it left "
                     "unfinished is written again"]
    assert sorted(p.name for p in out.iterdir()) == ["half.png"]
    # a failure that changed nothing (a mistyped option, a missing input) leaves a finished
    # output as it was: not marked unfinished
    with pytest.raises(ValueError):
        with output_lock(out, "netdiff test"):
            raise ValueError("before writing anything")
    assert sorted(p.name for p in out.iterdir()) == ["half.png"]


def test_a_command_that_fails_before_writing_leaves_its_output_alone(tmp_path, cli):
    out = tmp_path / "images"
    out.mkdir()
    (out / "kept.png").write_bytes(b"x")
    code, _, err = cli("pcap2img", tmp_path / "no-such-captures", out)
    assert code == 1 and "no such file or directory" in err
    assert sorted(p.name for p in out.iterdir()) == ["kept.png"]
    code, _, err = cli("pcap2img", tmp_path / "no-such-captures", tmp_path / "new")
    assert code == 1 and not (tmp_path / "new").exists()


def test_a_folder_left_unfinished_is_not_read(tmp_path, sample_captures, cli):
    images = tmp_path / "images"
    assert cli("pcap2img", sample_captures, images, "--height", 32)[0] == 0
    (images / LOCK_NAME).write_text(json.dumps({"pid": 2 ** 22 + 1, "host": "elsewhere", "started": 1.0,
                                                "command": "netdiff pcap2img"}) + "\n"
                                    + json.dumps({"failed": "OSError: [Errno 28] No space left on device"}))
    code, _, err = cli("train-base", images, "--output", tmp_path / "model", "--steps", 1)
    assert code == 1
    assert err == (f"netdiff: error: {images} is unfinished (its writer netdiff pcap2img (pid 4194305 on host "
                   "elsewhere, started " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(1.0))
                   + ") did not finish: it stopped with an error (OSError: [Errno 28] No space left on device)); "
                   f"run what writes it again, or delete {images / LOCK_NAME} to use it as it is\n")
    assert not (tmp_path / "model").exists()
    (images / LOCK_NAME).unlink()
    model = tmp_path / "model"
    with output_lock(model, "netdiff train-base"):      # a model still being trained
        code, _, err = cli("generate", "--model", model, "--class", "web_tcp", "--output", tmp_path / "gen")
    assert code == 1
    assert f"{model} is unfinished (netdiff train-base (pid {os.getpid()} on host" in err
    assert "is writing it now" in err


def test_one_holder_per_output_file_or_folder(tmp_path):
    with output_lock(tmp_path / "f.csv", "netdiff telemetry generate", folder=False):
        assert (tmp_path / ".f.csv.lock").is_file()
        with pytest.raises(OutputLocked, match=r"f\.csv is being written by netdiff telemetry generate "
                                               rf"\(pid {os.getpid()} on host"):
            with output_lock(tmp_path / "f.csv", "netdiff telemetry generate", folder=False):
                pass
    assert not (tmp_path / ".f.csv.lock").exists()
    with pytest.raises(Exception, match="exists and is not a folder"):
        (tmp_path / "file").write_text("x")
        with output_lock(tmp_path / "file", "netdiff pcap2img"):
            pass


def test_later_processes_of_a_distributed_run_share_the_first_ones_lock(tmp_path, monkeypatch):
    with output_lock(tmp_path / "gen", "netdiff generate"):
        monkeypatch.setenv("RANK", "1")
        with output_lock(tmp_path / "gen", "netdiff generate"):
            pass
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(OutputLocked):
            with output_lock(tmp_path / "gen", "netdiff generate"):
                pass


def test_every_command_that_writes_a_folder_holds_its_lock(tmp_path, cli):
    """A command whose output is held by a live process refuses before doing anything."""
    import click

    from netdiff.cli import COMMANDS, cli as group

    held = tmp_path / "held"
    calls = {
        "pcap2img": ["pcap2img", tmp_path, held],
        "img2pcap": ["img2pcap", tmp_path, held],
        "samples": ["samples", held],
        "demo": ["demo", "--out", held],
        "train-base": ["train-base", tmp_path, "--output", held],
        "finetune": ["finetune", tmp_path, "--base-model", "x", "--output", held],
        "train-controlnet": ["train-controlnet", tmp_path, "--base-model", "x", "--output", held],
        "generate": ["generate", "--model", "x", "--class", "c", "--output", held],
        "evaluate": ["evaluate", "--real", tmp_path, "--synthetic", tmp_path, "--out", held],
        "telemetry train": ["telemetry", "train", "--data", tmp_path / "d.csv", "--output", held],
        "telemetry evaluate": ["telemetry", "evaluate", "--real", tmp_path / "d.csv", "--synthetic",
                               tmp_path / "d.csv", "--out", held],
    }
    (tmp_path / "d.csv").write_text("a\n1\n")
    ctx = click.Context(group)
    telemetry = group.get_command(ctx, "telemetry")
    # app serves pages: each of its jobs takes the lock of the output it writes (netdiff/app/tasks.py)
    names = {n for n in COMMANDS if n not in ("telemetry", "nprint", "validate", "batch", "app")}
    names |= {f"telemetry {n}" for n in telemetry.list_commands(ctx) if n != "generate"}
    assert names == set(calls), "a command that writes a folder has no lock test"
    with output_lock(held, "netdiff holder"):
        for name, args in calls.items():
            code, out, err = cli(*args)
            assert code == 1 and err.startswith(f"netdiff: error: {held} is being written by netdiff holder"), \
                (name, err)
    model = tmp_path / "model"
    model.mkdir()
    with output_lock(tmp_path / "s.csv", "netdiff holder", folder=False):
        code, _, err = cli("telemetry", "generate", "--model", model, "--count", 1, "--output", tmp_path / "s.csv")
        assert code == 1 and "s.csv is being written by netdiff holder" in err
    assert not json.dumps(sorted(os.listdir(tmp_path))).count(".netdiff.lock")


def test_a_file_system_without_locks_is_one_line(tmp_path, monkeypatch, cli):
    """flock answers ENOSYS on some network and FUSE file systems (filelock asks it for us)."""
    import fcntl

    def no_flock(fd, op):
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    monkeypatch.setattr(fcntl, "flock", no_flock)
    code, _, err = cli("samples", tmp_path / "caps")
    assert code == 1
    assert err == (f"netdiff: error: {tmp_path / 'caps'}: its file system has no file locks (flock), so two runs "
                   "could write it at once; write the output to a local disk\n")
    assert not (tmp_path / "caps").exists()
