"""The app's security gates and its job machinery, without streamlit."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from netdiff.app import jobs
from netdiff.app.workspace import Workspace, inside, safe_name
from netdiff.errors import NetdiffError

APP = Path(__file__).resolve().parents[2] / "netdiff" / "app"


@pytest.mark.parametrize("path", ["captures/x.pcap", "a/../b", ".", "new/folder/not/yet", "./images"])
def test_inside_accepts_paths_in_the_workspace(tmp_path, path):
    got = inside(tmp_path, path)
    assert got == (tmp_path / path).resolve() and got.is_relative_to(tmp_path.resolve())


@pytest.mark.parametrize("path", ["..", "../x", "a/../../x", "/etc/passwd", "//etc", "captures/../../ws2"])
def test_inside_refuses_paths_that_leave(tmp_path, path):
    with pytest.raises(NetdiffError, match="outside the workspace"):
        inside(tmp_path / "ws", path)


def test_inside_refuses_a_symlink_pointing_out_and_nul_bytes(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    (tmp_path / "secret").write_text("x")
    (root / "link").symlink_to(tmp_path / "secret")
    (root / "dirlink").symlink_to(tmp_path)
    for path in ("link", "dirlink/secret", "dirlink"):
        with pytest.raises(NetdiffError, match="outside the workspace"):
            inside(root, path)
    with pytest.raises(NetdiffError, match="NUL"):
        inside(root, "a\x00b")
    # a workspace reached through a symlink is still itself
    (tmp_path / "alias").symlink_to(root)
    assert inside(tmp_path / "alias", "x") == root.resolve() / "x"


@pytest.mark.parametrize("name, ok", [("web_tcp_0.pcap", True), ("a-b.c", True), ("..", False), (".hidden", False),
                                      ("a/b", False), ("", False), ("-rf", False), ("x" * 101, False),
                                      ("ünï", False), ("a b", False)])
def test_safe_name(name, ok):
    if ok:
        assert safe_name(name) == name
    else:
        with pytest.raises(NetdiffError, match="not allowed"):
            safe_name(name)


def test_uploads_are_size_limited_and_named_safely(tmp_path):
    ws = Workspace(tmp_path)
    with pytest.raises(NetdiffError, match="over the upload limit of 1 MB"):
        ws.save_upload("captures/u/c", "big.pcap", b"x" * (1024 * 1024 + 1), limit_mb=1)
    with pytest.raises(NetdiffError, match="empty"):
        ws.save_upload("captures/u/c", "e.pcap", b"", limit_mb=1)
    with pytest.raises(NetdiffError, match="not allowed"):
        ws.save_upload("captures/u/c", "../../x.pcap", b"x", limit_mb=1)
    with pytest.raises(NetdiffError, match="outside the workspace"):
        ws.save_upload("../elsewhere", "x.pcap", b"x", limit_mb=1)
    path = ws.save_upload("captures/u/c", "ok.pcap", b"abc", limit_mb=1)
    assert path.read_bytes() == b"abc" and ws.rel(path) == "captures/u/c/ok.pcap"
    assert sorted(os.listdir(path.parent)) == ["ok.pcap"]     # no temporary left beside it


def test_no_pickle_in_the_app():
    """Results are JSON/PNG/pcap/CSV/safetensors; Streamlit's caches pickle, so they are not used."""
    bad = re.compile(r"\bpickle\b|cache_data|cache_resource|read_pickle|torch\.load")
    for path in APP.rglob("*.py"):
        code = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
        code = re.sub(r'"""[\s\S]*?"""', "", code)        # docstrings may say "no pickle"
        assert not bad.search(code), f"{path}: {bad.search(code).group(0)}"


def test_a_job_runs_in_the_background_and_reports_errors_as_one_line(tmp_path):
    ws = Workspace(tmp_path)
    (tmp_path / "captures").mkdir()
    job = jobs.start(ws, "convert", {"captures": "captures", "images": "images/x"})
    state = _wait(ws, job)
    assert state["status"] == jobs.FAILED
    assert state["message"].endswith("captures: no capture files (*.pcap, *.pcapng) in this directory")
    job = jobs.start(ws, "convert", {"captures": "../..", "images": "images/x"})
    assert "outside the workspace" in _wait(ws, job)["message"]
    job = jobs.start(ws, "nonsense", {})
    assert _wait(ws, job)["message"] == "unknown job kind 'nonsense'"
    assert jobs.latest(ws, "convert").startswith("convert-")


def test_a_worker_that_dies_is_reported_failed_and_a_cancelled_one_cancelled(tmp_path):
    ws = Workspace(tmp_path)
    job = jobs.start(ws, "convert", {"captures": "captures", "images": "images/x"})
    jobs.cancel(ws, job)
    state = _wait(ws, job)
    assert state["status"] in (jobs.CANCELLED, jobs.FAILED)    # it may have failed before the signal
    folder = ws.path("jobs", job)
    (folder / "cancel").unlink()
    jobs.write_json(folder / "state.json", {"status": jobs.RUNNING})
    jobs._STARTED.pop(job)      # as after a restart of the app: only the pid file is left
    state = jobs.status(ws, job)
    assert state["status"] == jobs.FAILED and "stopped without a result" in state["message"]


def _wait(ws, job, timeout=60):
    import time

    t = time.monotonic()
    while (state := jobs.status(ws, job))["status"] == jobs.RUNNING:
        assert time.monotonic() - t < timeout
        time.sleep(0.2)
    return state


def test_app_without_streamlit_is_one_line(cli, monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "streamlit" else real(name, *a))
    code, out, err = cli("app", "--workspace", tmp_path / "ws")
    assert (code, out) == (1, "")
    assert err == "netdiff: error: the web app needs streamlit: pip install 'netdiff[app]'\n"


def test_app_binds_loopback_unless_told(tmp_path):
    from netdiff.cli.app import app_cmd, streamlit_argv

    host = next(p for p in app_cmd.params if p.name == "host")
    assert host.default == "127.0.0.1"
    argv = streamlit_argv(APP / "main.py", "127.0.0.1", 8765, 5)
    assert argv[argv.index("--server.address") + 1] == "127.0.0.1"
    assert argv[argv.index("--server.maxUploadSize") + 1] == "5"
    assert argv[argv.index("--browser.gatherUsageStats") + 1] == "false"


def test_every_app_module_imports_without_streamlit():
    """A walk over netdiff's modules (tests/test_api.py) must not need the optional extra."""
    import subprocess
    import sys

    code = ("import sys, importlib, pkgutil, netdiff.app as app\n"
            "sys.modules['streamlit'] = None\n"         # as if not installed: importing it fails
            "names = [m.name for m in pkgutil.walk_packages(app.__path__, 'netdiff.app.')]\n"
            "[importlib.import_module(n) for n in names]\n"
            "print(sorted(names))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "'netdiff.app.main'" in proc.stdout and "'netdiff.app.views.telemetry'" in proc.stdout
