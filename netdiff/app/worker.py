"""``python -m netdiff.app.worker JOB_DIR``: run one job and write its state as JSON.

Progress comes from the tqdm bars netdiff's loops already draw (train-base's steps and loss,
DoppelGANger's epochs, TimeGAN's steps): tqdm is replaced, before netdiff's modules load, by a
subclass that never prints and copies each bar's position (and a ``loss`` postfix) into
``state.json``. The loops themselves are untouched, so the app runs exactly what the CLI runs.
"""
from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path

from netdiff.app.jobs import CANCELLED, DONE, FAILED, RUNNING, read_json, write_json
from netdiff.app.workspace import Workspace
from netdiff.errors import NetdiffError, describe_resource_error


class Reporter:
    """The worker's view of ``state.json``: progress throttled to two writes a second."""

    def __init__(self, folder: Path):
        self.path = folder / "state.json"
        self.state = {"status": RUNNING, "pid": os.getpid(), "started": time.time(), "progress": None,
                      "losses": [], "message": "running"}
        self.last = 0.0
        self.flush()

    def flush(self) -> None:
        write_json(self.path, self.state)
        self.last = time.monotonic()

    def step(self, message: str) -> None:
        """A named stage of the task (shown above the progress bar)."""
        self.state["message"] = message
        self.flush()

    def bar(self, n: int, total: int | None, desc: str | None, final: bool = False) -> None:
        # the newest bar is what the page shows; every bar's last position is kept by name
        self.state["progress"] = {"n": int(n), "total": int(total) if total else None, "desc": desc or ""}
        self.state.setdefault("bars", {})[desc or ""] = self.state["progress"]
        if final or time.monotonic() - self.last > 0.5:
            self.flush()

    def loss(self, value) -> None:
        try:
            self.state["losses"].append(float(value))
        except (TypeError, ValueError):
            pass

    def finish(self, status: str, message: str, result: dict | None = None) -> None:
        self.state.update(status=status, message=message, result=result or {}, finished=time.time())
        self.flush()


def hook_tqdm(reporter: Reporter) -> None:
    """Make every tqdm bar created from now on report to ``reporter`` instead of the terminal."""
    import tqdm
    import tqdm.auto
    import tqdm.std

    devnull = open(os.devnull, "w")

    class Bar(tqdm.std.tqdm):
        def __init__(self, *args, **kwargs):
            # train-base disables its bar when stderr is no terminal: the app wants it anyway
            kwargs.update(disable=False, file=devnull)
            super().__init__(*args, **kwargs)

        def update(self, n=1):
            out = super().update(n)
            reporter.bar(self.n, self.total, self.desc)
            return out

        def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
            if "loss" in kwargs:
                reporter.loss(kwargs["loss"])
            return super().set_postfix(ordered_dict, refresh, **kwargs)

        def close(self):
            if not self.disable:
                reporter.bar(self.n, self.total, self.desc, final=True)
            return super().close()

    tqdm.tqdm = tqdm.auto.tqdm = tqdm.std.tqdm = Bar


def main(argv=None) -> int:
    folder = Path((argv or sys.argv[1:])[0])
    spec = read_json(folder / "spec.json")
    reporter = Reporter(folder)
    if spec is None:
        reporter.finish(FAILED, f"{folder}/spec.json is missing or not JSON")
        return 1
    hook_tqdm(reporter)
    from netdiff.app.tasks import TASKS   # after the hook: netdiff's modules bind tqdm on import

    task = TASKS.get(spec.get("kind"))
    if task is None:
        reporter.finish(FAILED, f"unknown job kind {spec.get('kind')!r}")
        return 1
    try:
        result = task(Workspace.current(), spec.get("params") or {}, reporter)
    except NetdiffError as e:
        reporter.finish(FAILED, str(e))
        return 1
    except Exception as e:
        traceback.print_exc()        # into log.txt; the page shows one line
        line = describe_resource_error(e, spec["kind"])
        reporter.finish(FAILED, line or f"internal error: {e.__class__.__name__}: {e}")
        return 1
    if (folder / "cancel").exists():
        reporter.finish(CANCELLED, "cancelled")
        return 1
    reporter.finish(DONE, "done", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
