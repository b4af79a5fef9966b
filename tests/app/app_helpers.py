"""Helpers for the page tests: waiting for a job, finding a button, element texts."""
from __future__ import annotations

import time

from netdiff.app import jobs
from netdiff.app.workspace import Workspace


def wait_for(ws: Workspace, kind: str, timeout: float = 150) -> dict:
    """The newest ``kind`` job's state once it is no longer running."""
    job_id = jobs.latest(ws, kind)
    assert job_id, f"no {kind} job was started"
    deadline = time.monotonic() + timeout
    while (state := jobs.status(ws, job_id))["status"] == jobs.RUNNING:
        assert time.monotonic() < deadline, f"{kind} job still running after {timeout} s"
        time.sleep(0.3)
    return state


def button(at, label: str):
    matches = [b for b in at.button if b.label == label]
    assert matches, f"no button {label!r} (have {[b.label for b in at.button]})"
    return matches[0]


def texts(elements) -> list[str]:
    return [e.value for e in elements]
