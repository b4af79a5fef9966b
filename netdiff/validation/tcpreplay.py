"""tcpreplay of a capture into a veth pair inside a network namespace netdiff creates and removes
itself (never a real interface); skipped, with the reason, without root or namespaces."""
from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess


def replay_unavailable() -> str | None:
    """Why replay cannot run here, or None."""
    if os.name != "posix" or not hasattr(os, "geteuid"):
        return "skipped: needs Linux network namespaces"
    if os.geteuid() != 0:
        return "skipped: needs root to create a network namespace and veth pair"
    for tool in ("tcpreplay", "ip"):
        if shutil.which(tool) is None:
            pkg = "tcpreplay" if tool == "tcpreplay" else "iproute2"
            return f"skipped: {tool} not found (Debian package {pkg})"
    return None


def _ip(*args, check=True):
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip() or f"ip {' '.join(args)} failed")
    return proc


def replay(path: str, expected: int) -> dict | str:
    """Replay into veth ndA (inside a fresh namespace) and count what its peer ndB received."""
    why = replay_unavailable()
    if why:
        return why
    ns = f"netdiff-{os.getpid()}-{secrets.token_hex(3)}"
    try:
        _ip("netns", "add", ns)
    except RuntimeError as e:
        return f"skipped: cannot create a network namespace ({e})"
    try:
        # Both ends are created inside the namespace: nothing touches the host's interfaces.
        _ip("-n", ns, "link", "add", "ndA", "type", "veth", "peer", "name", "ndB")
        for dev in ("ndA", "ndB", "lo"):
            _ip("-n", ns, "link", "set", dev, "up")
        rx0 = _rx(ns)
        proc = subprocess.run(["ip", "netns", "exec", ns, "tcpreplay", "--topspeed", "-i", "ndA",
                               str(path)], capture_output=True, text=True)
        out = proc.stdout + proc.stderr
        ok = _stat(out, "Successful packets")
        failed = _stat(out, "Failed packets")
        if proc.returncode != 0 and ok is None:
            last = [ln for ln in out.strip().splitlines() if ln.strip()]
            return {"sent": 0, "failed": expected, "received": 0,
                    "error": last[-1] if last else f"tcpreplay exit {proc.returncode}"}
        received = _rx(ns) - rx0
        return {"sent": ok or 0, "failed": failed or 0, "received": received}
    except RuntimeError as e:
        return f"skipped: cannot set up the veth pair ({e})"
    finally:
        _ip("netns", "del", ns, check=False)


def _stat(text: str, label: str) -> int | None:
    m = re.search(rf"{label}:\s+(\d+)", text)
    return int(m.group(1)) if m else None


def _rx(ns: str) -> int:
    p = subprocess.run(["ip", "netns", "exec", ns, "cat", "/sys/class/net/ndB/statistics/rx_packets"],
                       capture_output=True, text=True)
    try:
        return int(p.stdout.strip())
    except ValueError:
        return 0
