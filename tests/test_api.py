"""The Python API stays what it documents whatever was imported before: every submodule of
netdiff is imported first (the CLI too), then each name of ``netdiff.__all__`` is checked and the
cheap functions are called for real."""
from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import netdiff

REPO = Path(__file__).resolve().parents[1]
PACKAGE = Path(netdiff.__file__).resolve().parent


def _raise(name):
    raise ImportError(f"cannot import {name}")


def submodules() -> list[str]:
    return [m.name for m in pkgutil.walk_packages(netdiff.__path__, "netdiff.", onerror=_raise)]


def import_every_submodule() -> list[str]:
    names = submodules()
    for name in names:
        importlib.import_module(name)
    return names


PUBLIC = [n for n in netdiff.__all__ if n != "__version__"]


def test_no_public_name_is_also_a_submodule_name():
    """A submodule, once imported, becomes the package attribute of its name."""
    clash = {name.split(".")[1] for name in submodules()} & set(netdiff.__all__)
    assert not clash


def test_every_public_name_is_its_callable_after_every_import():
    import_every_submodule()
    for name in PUBLIC:
        value = getattr(netdiff, name)
        assert not isinstance(value, types.ModuleType) and callable(value), name
    assert isinstance(netdiff.__version__, str)


def test_in_a_fresh_interpreter_too():
    """The order that broke it: a module imports the clashing one, then the API is used."""
    code = ("import importlib, pkgutil, types, netdiff\n"
            "for m in pkgutil.walk_packages(netdiff.__path__, 'netdiff.'):\n"
            "    importlib.import_module(m.name)\n"
            "bad = [n for n in netdiff.__all__ if n != '__version__' and\n"
            "       (isinstance(getattr(netdiff, n), types.ModuleType) or not callable(getattr(netdiff, n)))]\n"
            "print(bad)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={"PYTHONPATH": str(PACKAGE.parent), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_every_documented_call_is_a_public_name():
    """``netdiff.X(...)`` in the README and the package docstring is in ``__all__``."""
    for text in ((REPO / "README.md").read_text(), netdiff.__doc__):
        called = set(re.findall(r"\bnetdiff\.(\w+)\(", text))
        assert called and called <= set(netdiff.__all__), called - set(netdiff.__all__)


def test_the_library_never_imports_its_cli():
    """Only netdiff/cli/ and ``python -m netdiff`` may import netdiff.cli."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "cli" or rel == Path("__main__.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n == "netdiff.cli" or n.startswith("netdiff.cli.") for n in names):
                offenders.append(f"{rel}:{node.lineno}")
    assert not offenders


def test_documented_functions_work_after_every_import(tmp_path):
    import_every_submodule()
    paths = netdiff.samples(tmp_path / "captures", seed=1)
    assert {p.parent.name for p in paths} == {"web_tcp", "dns_udp", "icmp_echo"}
    web = next(p for p in paths if p.parent.name == "web_tcp")

    # read, encode, write
    batch, _ = netdiff.read_capture(web)
    layout = netdiff.named_layout("netdiffusion")
    assert isinstance(layout, netdiff.Layout)
    bits, parsed = netdiff.encode(batch, layout)
    assert bits.shape == (len(batch), layout.width) and (parsed.reason == 0).all()
    netdiff.write_pcap(tmp_path / "copy.pcap", batch)
    assert len(netdiff.read_capture(tmp_path / "copy.pcap")[0]) == len(batch)

    # nprint and back: the rebuilt packets give the same CSV again
    nlayout = netdiff.named_layout("nprint")
    summary = netdiff.nprint(web, tmp_path / "a.csv", nlayout, absolute=True)
    assert summary["rows"] == len(batch)
    assert netdiff.nprint_reverse(tmp_path / "a.csv", tmp_path / "a.pcap") == len(batch)
    netdiff.nprint(tmp_path / "a.pcap", tmp_path / "b.csv", nlayout, absolute=True)
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()

    # image and back, exactly
    s = netdiff.pcap2img(tmp_path / "captures", tmp_path / "images",
                         layout=netdiff.named_layout("netdiffusion", height=64))
    assert s.images > 0 and not s.errors
    png = sorted((tmp_path / "images" / "web_tcp").glob("*.png"))[0]
    res = netdiff.img2pcap(png, tmp_path / "exact.pcap")
    assert res.mode == "exact" and res.packets == 64

    # quantize and repair a noisy image into valid packets
    from netdiff.image.codec import bits_to_rgb

    rgb = bits_to_rgb(bits[:64]).astype(np.int16)
    noisy = np.clip(rgb + np.random.default_rng(0).integers(-60, 60, rgb.shape), 0, 255).astype(np.uint8)
    q, _ = netdiff.quantize(noisy, netdiff.named_layout("netdiffusion", height=64))
    assert np.array_equal(q, bits[:64])
    repaired = netdiff.repair(q, layout, seed=0, timing=netdiff.TimingModel())
    assert len(repaired.batch) == 64 and repaired.report["unreadable_packets"] == 0
    netdiff.write_pcap(tmp_path / "repaired.pcap", repaired.batch)

    if shutil.which("tshark") is None:
        with pytest.raises(netdiff.NetdiffError, match="tshark not found"):
            netdiff.validate([tmp_path / "repaired.pcap"], replay=False)
    else:
        assert netdiff.validate([tmp_path / "repaired.pcap", web], replay=False)["ok"]

    with pytest.raises(netdiff.NetdiffError, match="cannot read"):
        netdiff.nprint_reverse(tmp_path / "missing.csv", tmp_path / "x.pcap")
