"""One writer per output: ``output_lock(folder)`` around everything that writes a folder (a
``netdiff batch`` run, and each command writing its output folder or file).

The lock is ``filelock``'s (an ``flock`` on ``<folder>/.netdiff.lock``; for an output that is one
file, ``.<name>.lock`` beside it). The kernel drops an ``flock`` when its holder dies, however it
dies (kill -9 included) or when the host restarts, so a lock is never waited on: a second writer
is refused at once, with a line naming the holder (pid, host, start time) that the holder wrote
into the lock file, and a lock nobody holds is simply taken.

The lock file is also the "not finished" mark. A writer that finishes removes it (while still
holding it, so a waiter that opened the old file finds it unlinked and tries again); one that stops
with an error after it changed the output leaves it, with the error appended (one that changed
nothing, say on a mistyped option, leaves the output as it was), and one that is killed leaves it
as it was. Whoever takes the lock next and finds that file says so, in one line, before writing
the output again; ``unfinished(folder)`` tells ``netdiff batch`` and the commands reading a
folder that it holds a writer's unfinished work.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from netdiff.errors import NetdiffError

LOCK_NAME = ".netdiff.lock"


class OutputLocked(NetdiffError):
    """Another live process is writing the same output."""

    def __init__(self, target, holder: dict):
        self.target = str(target)
        self.holder = holder
        super().__init__(f"{target} is being written by {describe_holder(holder)}; "
                         "wait for it to finish or stop it, then run again")


def lock_file(target, folder: bool = True) -> Path:
    """Where the lock of output ``target`` lives: inside a folder, beside a file."""
    target = Path(target)
    return target / LOCK_NAME if folder else target.with_name(f".{target.name}.lock")


def boot_id() -> str:
    """This boot of this host (Linux); a pid recorded in another boot names nothing now."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def read_holder(path: Path) -> dict | None:
    """What a lock file says about whoever took it. The first line is the holder's record; a
    second, if any, the error it stopped with. None: no file, or an empty one (just created by
    a taker that has not written its record yet, or by one killed before it began to write)."""
    try:
        text = path.read_text(errors="replace")
    except (FileNotFoundError, IsADirectoryError):
        return None
    if not text.strip():
        return None
    lines = text.splitlines()
    holder: dict = {}
    for line in lines:
        try:
            holder.update(json.loads(line))
        except (ValueError, TypeError):
            continue            # cut short by a kill or a full disk: what was written is kept
    return holder


def describe_holder(holder: dict) -> str:
    """``netdiff batch (pid 12 on host h, started 2026-12-04 11:42:01)`` from a lock record."""
    if not holder.get("pid"):
        return "another process (it has not yet written who it is)"
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "at an unknown time"
    return (f"{holder.get('command') or 'a netdiff process'} (pid {holder['pid']} on host "
            f"{holder.get('host', '?')}, started {when})")


def running_here(holder: dict) -> bool | None:
    """Whether a recorded holder's process runs on this host now (None: another host, or no
    way to tell)."""
    if holder.get("host") != socket.gethostname():
        return None
    if holder.get("boot_id") and holder["boot_id"] != boot_id():
        return False
    try:
        os.kill(int(holder.get("pid", 0)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
        pass
    return True


def why_gone(holder: dict) -> str:
    """Why a recorded holder no longer holds its lock, as far as this host can tell."""
    if holder.get("failed"):
        return f"it stopped with an error ({holder['failed']})"
    if holder.get("host") == socket.gethostname() and holder.get("boot_id") and holder["boot_id"] != boot_id():
        return "the host has restarted since"
    if running_here(holder) is False:
        return "that process is gone (killed or crashed)"
    return "it no longer holds the lock"


def unfinished(target, folder: bool = True) -> str | None:
    """Why output ``target`` holds unfinished work (a writer's lock file left behind, or a
    writer at work in it now), or None."""
    holder = read_holder(lock_file(target, folder))
    if holder is None:
        return None
    if not holder.get("failed") and running_here(holder):
        return f"{describe_holder(holder)} is writing it now"
    return f"its writer {describe_holder(holder)} did not finish: {why_gone(holder)}"


def writer_rank() -> int:
    """The process's rank under ``accelerate launch`` / ``torchrun`` (0 when run alone)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _note(message: str) -> None:
    print(f"netdiff: {message}", file=sys.stderr, flush=True)


@contextmanager
def output_lock(target, command: str, folder: bool = True,
                echo: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Hold the lock of output ``target`` (a folder, created if need be, or with ``folder=False``
    a file) for the block; ``command`` names this writer to anyone refused. Raises
    ``OutputLocked`` at once if a live process holds it; takes it, with a line through ``echo``
    (default: stderr), if a writer left it unfinished. On an exception the lock file stays as the
    output's "not finished" mark, unless the block changed nothing there: then the output is
    left as it was (a folder the lock made is removed again)."""
    from filelock import FileLock, Timeout

    target = Path(target)
    echo = echo or _note
    # Processes 2..n of one distributed run write their share of the same output: the lock
    # keeps other runs out, so only the first process takes it.
    if writer_rank() != 0:
        yield target
        return
    created = not target.exists()
    if folder:
        if target.exists() and not target.is_dir():
            raise NetdiffError(f"{target}: exists and is not a folder")
        target.mkdir(parents=True, exist_ok=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
    path = lock_file(target, folder)
    # filelock >= 4 would fall back to a marker file of its own where flock is missing; the
    # holder's record shares this file, so only the kernel lock is wanted.
    lock = FileLock(str(path), timeout=0, fallback_to_soft=False)
    for attempt in range(3):
        try:
            lock.acquire()
            break
        except Timeout:
            holder = read_holder(path)
            if holder is None and attempt < 2:
                # just finished and removed, or just taken and its record not yet written
                time.sleep(0.2)
                continue
            raise OutputLocked(target, holder or {}) from None
        except OSError as e:    # no lock to be had (no room, no flock): leave things as they were
            if read_holder(path) is None:
                path.unlink(missing_ok=True)
            if folder and created and not any(target.iterdir()):
                target.rmdir()
            if e.errno in (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP):
                raise NetdiffError(f"{target}: its file system has no file locks (flock), so two runs "
                                   "could write it at once; write the output to a local disk") from None
            raise
    try:
        left = read_holder(path)
        if left is not None:
            echo(f"{target}: taking over from {describe_holder(left)}: {why_gone(left)}; "
                 "what it left unfinished is written again")
        record = {"pid": os.getpid(), "host": socket.gethostname(), "boot_id": boot_id(),
                  "started": round(time.time(), 3), "command": command}
        with open(path, "w") as f:
            f.write(json.dumps(record) + "\n")
    except BaseException:
        path.unlink(missing_ok=True)
        lock.release()
        raise
    before = contents(target, folder)       # taken under the lock: no other writer changes it
    try:
        yield target
    except SystemExit as e:
        if e.code not in (0, None):
            _leave(path, target, folder, before, created, f"exit status {e.code}")
        else:
            path.unlink(missing_ok=True)
        raise
    except BaseException as e:
        reason = f"{e.__class__.__name__}: {e}".splitlines()[0][:300]
        if _leave(path, target, folder, before, created, reason):
            try:    # for the error line: which output the rerun will write again
                e.unfinished_output = str(target)
            except AttributeError:
                pass
        raise
    else:
        path.unlink(missing_ok=True)
    finally:
        lock.release()


def _leave(path: Path, target: Path, folder: bool, before, created: bool, reason: str) -> bool:
    """The block failed. If it changed nothing in the output, leave the output as it was (no lock
    file; a folder this lock made is removed again) and return False; else keep the lock file as
    the "not finished" mark, with the reason, and return True."""
    if contents(target, folder) == before:
        path.unlink(missing_ok=True)
        if created and folder and target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        return False
    try:
        with open(path, "a") as f:          # appended: on a full disk the record stays whole
            f.write(json.dumps({"failed": reason}) + "\n")
    except OSError:
        pass
    return True


def contents(target: Path, folder: bool):
    """What an output holds, to tell whether a failed writer touched it: (path, size, mtime) of
    every file (the lock file aside), or the file's; None when there is no such output."""
    if not target.exists():
        return None
    if not folder or not target.is_dir():
        st = target.stat()
        return st.st_size, st.st_mtime_ns
    found = []
    for p in sorted(target.rglob("*")):
        if p.name == LOCK_NAME:
            continue
        try:
            st = p.lstat()
        except FileNotFoundError:
            continue
        found.append((str(p.relative_to(target)), st.st_size, st.st_mtime_ns))
    return found
