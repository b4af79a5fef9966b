"""The workspace: the one folder the web app reads and writes.

A browser can name any string as a path; ``inside`` is the single gate every such path passes
(resolved with symlinks followed, refused when it ends up outside the workspace), and
``safe_name`` is the gate for a single new file or folder name (an upload, a run name).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from netdiff.errors import NetdiffError
from netdiff.io.atomic import atomic_write_bytes

ENV = "NETDIFF_APP_WORKSPACE"            # set by `netdiff app`, read by the pages and the worker
LIMIT_ENV = "NETDIFF_APP_MAX_UPLOAD_MB"
DEFAULT_LIMIT_MB = 64                     # small enough for memory (Streamlit holds uploads in RAM)

# The folders the pages use, created on first use.
CAPTURES, IMAGES, MODELS, GENERATED, REPORTS, TELEMETRY, JOBS = (
    "captures", "images", "models", "generated", "reports", "telemetry", "jobs")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def inside(root, path) -> Path:
    """``path`` (relative to ``root``, or absolute) resolved; NetdiffError when it leaves ``root``.

    Resolving first means ``..``, absolute paths and symlinks pointing out are all caught by
    one comparison; a path that does not exist yet is resolved as far as it exists."""
    text = str(path)
    if "\x00" in text:
        raise NetdiffError("a path with a NUL byte is not allowed")
    base = Path(root).resolve()
    target = (base / text).resolve()
    if target != base and base not in target.parents:
        raise NetdiffError(f"{text}: outside the workspace {base}; only paths inside it are allowed")
    return target


def safe_name(name: str, what: str = "name") -> str:
    """A single file or folder name from the browser: letters, digits, '.', '_', '-'; no leading
    dot (hidden files and '..'), at most 100 characters. Anything else is refused, not mangled,
    so the user sees what name was used."""
    name = str(name).strip()
    if not _NAME.fullmatch(name):
        raise NetdiffError(f"{what} {name!r} is not allowed: use letters, digits, '.', '_' and '-' "
                           "(not starting with '.' or '-'; at most 100 characters)")
    return name


def upload_limit_mb() -> int:
    try:
        return max(1, int(os.environ.get(LIMIT_ENV, DEFAULT_LIMIT_MB)))
    except ValueError:
        return DEFAULT_LIMIT_MB


class Workspace:
    """The app's folder; ``path`` resolves names in it through ``inside``."""

    def __init__(self, root):
        self.root = Path(root).resolve()

    @classmethod
    def current(cls) -> "Workspace":
        """The workspace `netdiff app` was started with (the environment carries it to every page
        run and to the workers); the current folder's ``netdiff-workspace`` otherwise."""
        ws = cls(os.environ.get(ENV) or Path.cwd() / "netdiff-workspace")
        ws.root.mkdir(parents=True, exist_ok=True)
        return ws

    def path(self, *parts) -> Path:
        return inside(self.root, Path(*[str(p) for p in parts]) if parts else ".")

    def rel(self, path) -> str:
        """A workspace path as shown to the user and stored in job files (relative, '/'-separated)."""
        p = inside(self.root, path)
        return "." if p == self.root else p.relative_to(self.root).as_posix()

    def folders(self, under: str, depth: int = 1) -> list[str]:
        """Visible folders ``depth`` levels below ``under`` (relative to the workspace), sorted."""
        base = self.path(under)
        if not base.is_dir():
            return []
        pattern = "/".join(["*"] * depth)
        return sorted(self.rel(p) for p in base.glob(pattern)
                      if p.is_dir() and not any(part.startswith(".") for part in p.relative_to(base).parts))

    def save_upload(self, folder: str, name: str, data: bytes, limit_mb: int | None = None) -> Path:
        """Write an uploaded file as ``folder/name`` (atomically); refuses names and sizes that
        are not allowed."""
        limit_mb = limit_mb or upload_limit_mb()
        if len(data) > limit_mb * 1024 * 1024:
            raise NetdiffError(f"{name}: {len(data) / 1024 / 1024:.1f} MB is over the upload limit of "
                               f"{limit_mb} MB (netdiff app --max-upload-mb)")
        if not data:
            raise NetdiffError(f"{name}: the file is empty")
        target = self.path(folder, safe_name(name, "file name"))
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, data)
        return target
