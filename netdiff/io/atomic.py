"""Write-by-rename: a file (or folder) is written under a temporary name beside its target and
renamed over it only once complete, so a reader never sees half a file and a killed writer leaves
the old version in place.

The temporary name is ``.<name>.tmp<pid>`` (``.<stem>.tmp<pid><suffix>`` where the writer picks
a format from the extension, as matplotlib does; ``.<name>.partial<pid>`` for folders). The
leading dot keeps it out of folder scans (``find_pngs`` and the like skip dot-files), the pid keeps
two processes writing the same target (shards of one run) from sharing a temporary, and
``netdiff.io.stale.remove_stale`` reads the pid back to clear the leftovers of dead writers.

No fsync: the outputs are reproducible, so the rename is for readers' consistency, not for
durability across a power cut.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def temp_path(path, keep_suffix: bool = False) -> Path:
    """The temporary a write of ``path`` goes through (see the module docstring)."""
    path = Path(path)
    if keep_suffix:
        return path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


@contextmanager
def atomic_path(path, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to (for writers that want a file name:
    safetensors, matplotlib, pandas); on leaving it replaces ``path``. If the block raises, the
    temporary is removed and ``path`` is left as it was."""
    path = Path(path)
    tmp = temp_path(path, keep_suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_open(path, mode: str = "wb") -> Iterator[IO]:
    """``open(path, mode)`` for streaming writers, through a temporary renamed into place when
    the block completes (and removed if it raises)."""
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f


def atomic_write_bytes(path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def stage_dir(parent, name: str) -> Path:
    """An empty hidden folder in ``parent`` to build the folder ``name`` in; ``replace_dir`` moves
    it into place. A leftover of an earlier run by this pid is cleared first."""
    staged = Path(parent) / f".{name}.partial{os.getpid()}"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    return staged


def replace_dir(staged: Path, final: Path) -> None:
    """Move a fully written folder into place (the old one, if any, goes only after that)."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old{os.getpid()}")
        os.replace(final, old)
    os.replace(staged, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
