"""A wheel built from the repository carries what netdiff reads at run time (protocol rules,
model configs), and an installed copy finds them without the repository."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    build = tmp_path_factory.mktemp("build")
    # build from a copy: setuptools writes build/ and *.egg-info next to the sources
    src = build / "src"
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others",
                            "--exclude-standard"], check=True, capture_output=True).stdout.split(b"\0")
    for f in filter(None, (x.decode() for x in files)):
        s, d = ROOT / f, src / f
        if not (s.exists() or s.is_symlink()):
            continue                                # deleted in the work tree
        d.parent.mkdir(parents=True, exist_ok=True)
        if s.is_symlink():
            d.symlink_to(os.readlink(s))
        else:
            d.write_bytes(s.read_bytes())
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(out)], capture_output=True, text=True)
    if r.returncode != 0 and "No module named pip" in r.stderr:
        pytest.skip("pip is not available to build a wheel")
    assert r.returncode == 0, r.stderr[-2000:]
    return next(out.glob("netdiff-*.whl"))


def test_wheel_carries_rules_and_configs(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in sorted((ROOT / "protocol_rules").glob("*.yaml")):
        assert f"netdiff/protocol_rules/{f.name}" in names
    for f in sorted((ROOT / "configs").glob("*/*.yaml")):
        assert f"netdiff/configs/{f.parent.name}/{f.name}" in names


def test_wheel_carries_every_module(wheel):
    """Package discovery finds every subpackage (nprint_csv/, packet_repair/, ...)."""
    names = set(zipfile.ZipFile(wheel).namelist())
    package = ROOT / "netdiff"
    modules = [f for f in sorted(package.rglob("*.py")) if "__pycache__" not in f.parts]
    assert Path(package / "nprint_csv" / "reader.py") in modules
    missing = [str(f.relative_to(ROOT)) for f in modules if f.relative_to(ROOT).as_posix() not in names]
    assert not missing


def test_installed_copy_finds_them(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import netdiff.rules.engine as e, netdiff.model.config as c;"
            "print(e.rules_dir()); print(c.load_config('tiny').name); print(c.__file__)")
    env = {k: v for k, v in os.environ.items() if k != "NETDIFF_RULES"}
    env["PYTHONPATH"] = str(site)
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    rules, name, module = r.stdout.split("\n")[:3]
    assert Path(rules).resolve() == (site / "netdiff" / "protocol_rules").resolve()
    assert name == "tiny" and Path(module).resolve().is_relative_to(site.resolve())   # the wheel's copy
