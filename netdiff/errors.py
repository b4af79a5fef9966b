"""Errors a user can cause, and the machine running out of something (space, memory, file
handles). The CLI prints either as one line and exits 1."""
from __future__ import annotations

import errno
import os
import re
from pathlib import Path


class NetdiffError(Exception):
    """A problem with the user's input or configuration, with a message that names it."""


class CaptureError(NetdiffError):
    """A capture file that cannot be read (wrong magic, truncated header, unknown link type)."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class ImageError(NetdiffError):
    """An image that does not fit the layout (size, palette) or lacks what a step needs."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


# errno -> (what happened, what to do); the errors a full, locked or exhausted machine gives
_RESOURCE_ERRNOS = {
    errno.ENOSPC: ("no space left on device", "free some space or write to another disk"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or write to another disk"),
    errno.EACCES: ("permission denied", "make it accessible to you or choose another path"),
    errno.EPERM: ("operation not permitted", "make it accessible to you or choose another path"),
    errno.EROFS: ("read-only file system", "choose an output folder on a writable file system"),
    errno.EMFILE: ("too many open files", "raise the limit (ulimit -n 4096) or run fewer jobs at once"),
    errno.ENFILE: ("too many open files on this machine", "close other programs or run fewer jobs at once"),
}
# the same errors as libraries word them when they wrap them in their own exception types
_RESOURCE_WORDS = [("No space left on device", errno.ENOSPC), ("Disk quota exceeded", errno.EDQUOT),
                   ("Read-only file system", errno.EROFS), ("Too many open files", errno.EMFILE),
                   ("StorageFull", errno.ENOSPC)]
# "could not create a primitive": oneDNN (torch's CPU convolutions) when its allocation fails
_OOM_WORDS = ("out of memory", "can't allocate memory", "DefaultCPUAllocator", "OutOfMemoryError",
              "could not create a primitive")
_TEMPORARY = re.compile(r"^\.(?P<stem>.+)\.(?:tmp|partial|old)\d+(?P<suffix>\.\w+)?$")


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen and len(seen) < 16:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def final_name(path: str) -> str:
    """The path a write-by-rename temporary (``.name.tmp123``) stands for, else ``path``."""
    p = Path(path)
    m = _TEMPORARY.match(p.name)
    return str(p.with_name(m["stem"] + (m["suffix"] or ""))) if m else path


def describe_resource_error(exc: BaseException, step: str) -> str | None:
    """One line for a machine running out of something (disk space, permission, a writable file
    system, file handles, memory) while ``step`` (a command name) ran: what happened, where, and
    what to do; None when ``exc`` is none of those. An output that ``netdiff.io.lock`` marked
    unfinished on the way out (``exc.unfinished_output``) is named as what the rerun writes again."""
    marked = getattr(exc, "unfinished_output", None)
    rerun = (f"then run it again ({marked} is marked unfinished and is written again)" if marked
             else "then run it again")
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in _RESOURCE_ERRNOS:
            what, todo = _RESOURCE_ERRNOS[e.errno]
            where = f" ({final_name(os.fsdecode(e.filename))})" if e.filename else ""
            return f"{step}: {what}{where}; {todo}, {rerun}"
    for e in _chain(exc):
        text = f"{e.__class__.__name__}: {e}"
        if isinstance(e, MemoryError) or any(w in text for w in _OOM_WORDS):
            detail = str(e).strip().splitlines()[0][:160] if str(e).strip() else "MemoryError"
            if step in ("train-base", "finetune", "train-controlnet"):
                todo = ("use a smaller --batch-size (with --grad-accum to keep the effective batch) or "
                        "--mixed-precision bf16 on a GPU, then run again with --resume latest to go on "
                        "from the last checkpoint")
            elif step == "generate":
                todo = "use a smaller --batch-size, then run again with --skip-existing to keep what is done"
            else:
                todo = "free memory (close other jobs) or give it less data at once, then run it again"
            return f"{step}: out of memory ({detail}); {todo}"
        for words, code in _RESOURCE_WORDS:
            if words in text:
                what, todo = _RESOURCE_ERRNOS[code]
                return f"{step}: {what} ({e.__class__.__name__}); {todo}, {rerun}"
    if marked and disk_full(marked):
        # some writers word a full disk as their own failure (torch.save: "unexpected pos
        # 7734720 vs 7734608"); the output's file system having no room left says what it was
        what, todo = _RESOURCE_ERRNOS[errno.ENOSPC]
        return f"{step}: {what} ({marked}; the error was: {str(exc).strip()[:120]}); {todo}, {rerun}"
    return None


def disk_full(path) -> bool:
    """Whether the file system holding ``path`` has (next to) no room left for this user."""
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    free = st.f_bfree if os.geteuid() == 0 else st.f_bavail     # root may use the reserved blocks
    return free * st.f_frsize < (1 << 20)
