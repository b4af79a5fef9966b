"""Dependency versions: the constraints file pins what the suite passed with, and a mismatched pair
of installed packages is one line naming both and the versions that work."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

from netdiff.model import dependencies as deps

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(bool(os.environ.get("NETDIFF_UPGRADING")),
                    reason="scripts/upgrade-deps.sh runs the suite on newer versions than the file it replaces")
def test_constraints_pin_what_is_installed():
    """setup.sh installs with -c constraints.txt: every pinned package present here has that version."""
    tested = deps.tested_versions()
    assert {"diffusers", "transformers", "peft", "accelerate", "numpy"} <= set(tested)
    wrong = {}
    for name, want in tested.items():
        have = deps.installed_version(name)
        if have is not None and have != want:
            wrong[name] = (have, want)
    assert not wrong


def test_pyproject_bounds_the_known_incompatible_release():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"transformers>=4.40,<5.24"' in text
    assert deps.version_tuple(deps.tested_versions()["transformers"]) < (5, 24)


def _fake_dist(site: Path, name: str, version: str, body: str) -> None:
    pkg = site / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(body))
    info = site / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "top_level.txt").write_text(f"{name}\n")
    (info / "RECORD").write_text(f"{name}/__init__.py,,\n")


def test_old_peft_is_one_line_naming_both_packages(tmp_path):
    """A peft older than the installed transformers asks for, shadowing the real one: finetune
    stops before any model work with one line and exit 1, not a traceback inside transformers."""
    site = tmp_path / "site-packages"
    _fake_dist(site, "peft", "0.1.0", "__version__ = '0.1.0'\n")
    (tmp_path / "imgs").mkdir()
    code = ("import sys; from netdiff.cli import main; "
            f"sys.exit(main(['finetune', {str(tmp_path / 'imgs')!r}, '--base-model', 'x', '--output', "
            f"{str(tmp_path / 'lora')!r}]))")
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    tf = metadata.version("transformers")
    assert f"transformers {tf} needs peft >= " in lines[0]
    assert "peft 0.1.0 is installed" in lines[0]
    assert f"peft=={deps.tested_versions()['peft']}" in lines[0]
    assert "Traceback" not in r.stderr


def test_import_failure_between_two_packages_is_named(tmp_path, monkeypatch):
    """An import inside one third-party package of a name another no longer has."""
    site = tmp_path / "site-packages"
    _fake_dist(site, "ndtesthub", "2.0.0", "def kept():\n    return 1\n")
    _fake_dist(site, "ndtestlib", "1.0.0", "from ndtesthub import removed_in_two\n")
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(ImportError) as info:
        import ndtestlib  # noqa: F401
    line = deps.describe_import_failure(info.value)
    assert line is not None
    assert line.startswith("ndtestlib 1.0.0 does not work with ndtesthub 2.0.0 (cannot import name 'removed_in_two'")
    assert "\n" not in line


def test_netdiffs_own_import_error_is_not_blamed_on_a_dependency(tmp_path):
    """An import failing inside netdiff's own code (installed in site-packages) is netdiff's bug."""
    fake = tmp_path / "site-packages" / "netdiff" / "broken.py"
    code = compile("from netdiff import no_such_module\n", str(fake), "exec")
    with pytest.raises(ImportError) as info:
        exec(code, {})
    assert deps.describe_import_failure(info.value) is None
    # the same failure raised from a dependency's file is blamed on that dependency
    other = compile("from netdiff import no_such_module\n", str(tmp_path / "site-packages" / "ndtestdep" / "m.py"),
                    "exec")
    with pytest.raises(ImportError) as info:
        exec(other, {})
    line = deps.describe_import_failure(info.value)
    assert line is not None and line.startswith("ndtestdep does not work with netdiff ")
