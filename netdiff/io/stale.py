"""Leftovers of a killed writer: every atomic write in netdiff goes through ``netdiff.io.atomic``,
whose temporary ``.<name>.tmp<pid>`` (``.<stem>.tmp<pid><suffix>``; ``.<name>.partial<pid>`` for
folders) is renamed into place, so a process killed mid-write leaves one behind. Resuming work
clears those whose writer is gone and leaves alone those of live processes (other shards of the
same run)."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

_PID = re.compile(r"^\..+\.(?:tmp|partial)(\d+)(?:\.\w+)?$")


def remove_stale(folder: Path) -> int:
    """Delete the dead writers' temporaries directly in ``folder``; how many went."""
    gone = 0
    for f in Path(folder).glob(".*"):
        m = _PID.match(f.name)
        if not m:
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue                    # its writer is alive
        except ProcessLookupError:
            pass
        except PermissionError:         # alive, another user's
            continue
        if f.is_dir() and not f.is_symlink():
            shutil.rmtree(f, ignore_errors=True)
        else:
            f.unlink(missing_ok=True)
        gone += 1
    return gone
