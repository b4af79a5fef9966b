"""Long work in the background: one subprocess per job, its state kept in the workspace.

A job is a folder ``jobs/<kind>-<time>-<random>/`` holding ``spec.json`` (what to run, written
here), ``state.json`` (status, progress, losses, result; written by the worker alone, so two
writers never race), ``log.txt`` (the worker's output) and ``cancel`` once cancelled. A page
reload, or a restart of the app, finds the job again by reading these files; a subprocess (not
a thread) is used so that cancel can stop torch mid-step and a crash cannot take the app down.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from netdiff.app.workspace import ENV, JOBS, Workspace
from netdiff.io.atomic import atomic_write_text

RUNNING, DONE, FAILED, CANCELLED = "running", "done", "failed", "cancelled"

# Popen objects of the jobs this app process started: polling them reaps finished workers
# (a zombie would otherwise look alive).
_STARTED: dict[str, subprocess.Popen] = {}


def write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=1))


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def start(ws: Workspace, kind: str, params: dict) -> str:
    """Start job ``kind`` (a name in ``tasks.TASKS``) with JSON ``params``; returns its id."""
    job_id = f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    folder = ws.path(JOBS, job_id)
    folder.mkdir(parents=True)
    write_json(folder / "spec.json", {"kind": kind, "params": params, "created": time.time()})
    write_json(folder / "state.json", {"status": RUNNING, "progress": None, "message": "starting"})
    env = dict(os.environ, **{ENV: str(ws.root)})
    with open(folder / "log.txt", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "netdiff.app.worker", str(folder)], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    (folder / "pid").write_text(str(proc.pid))
    _STARTED[job_id] = proc
    return job_id


def _alive(job_id: str, folder: Path) -> bool:
    if job_id in _STARTED:
        return _STARTED[job_id].poll() is None
    try:
        pid = int((folder / "pid").read_text())
        # the pid could have been reused since: only a process running this job's worker counts
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False
    return str(folder).encode() in cmdline


def status(ws: Workspace, job_id: str) -> dict:
    """The job's state, with ``id``, ``kind`` and ``params``; a worker that died without
    writing a result is reported as failed (or cancelled, when it was asked to stop)."""
    folder = ws.path(JOBS, job_id)
    spec = read_json(folder / "spec.json") or {}
    state = read_json(folder / "state.json") or {"status": FAILED, "message": "no state file"}
    state.update(id=job_id, kind=spec.get("kind"), params=spec.get("params", {}))
    if state["status"] == RUNNING and not _alive(job_id, folder):
        if (folder / "cancel").exists():
            state.update(status=CANCELLED, message="cancelled")
        else:
            state.update(status=FAILED, message=f"the worker stopped without a result (see {ws.rel(folder)}/log.txt)")
    return state


def cancel(ws: Workspace, job_id: str) -> None:
    """Stop a running job: its whole process group (the worker and anything it started)."""
    folder = ws.path(JOBS, job_id)
    (folder / "cancel").write_text(str(time.time()))
    if not _alive(job_id, folder):
        return
    pid = int((folder / "pid").read_text())
    try:
        os.killpg(pid, signal.SIGTERM)      # start_new_session: the worker leads its own group
    except ProcessLookupError:
        return
    proc = _STARTED.get(job_id)
    if proc is not None:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(pid, signal.SIGKILL)
            proc.wait()


def latest(ws: Workspace, kind: str) -> str | None:
    """The newest job of ``kind`` (ids sort by their start time), or None."""
    folder = ws.path(JOBS)
    ids = sorted(p.name for p in folder.glob(f"{kind}-*") if (p / "spec.json").exists()) if folder.is_dir() else []
    return ids[-1] if ids else None
