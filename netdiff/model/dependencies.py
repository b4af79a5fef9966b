"""Installed dependency versions against the ones netdiff's tests passed with.

``constraints.txt`` (repository root, also inside the package) pins every dependency to the
versions of the last green test run; ``scripts/setup.sh`` installs exactly those. People who
install netdiff into their own environment get ranges instead, and a newer release of one package
can break another (transformers 5.24 needs peft >= 0.22, which was not released yet). When that
happens netdiff says which two packages disagree and which versions work, in one line, instead of
a traceback from deep inside transformers.
"""
from __future__ import annotations

import re
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from netdiff.errors import NetdiffError

CONSTRAINTS_FILE = "constraints.txt"


class DependencyError(NetdiffError):
    """Two installed packages that do not work together."""


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@lru_cache(maxsize=1)
def tested_versions() -> dict[str, str]:
    """Package -> version from the constraints file (empty when netdiff has none with it)."""
    here = Path(__file__).resolve().parent
    for path in (here / CONSTRAINTS_FILE, here.parent / CONSTRAINTS_FILE):
        if path.is_file():
            out = {}
            for line in path.read_text().splitlines():
                m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;#]+)", line)
                if m:
                    out[_canonical(m.group(1))] = m.group(2)
            return out
    return {}


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def version_tuple(v: str) -> tuple:
    parts = []
    for piece in re.split(r"[.+]", v):
        m = re.match(r"(\d+)", piece)
        if not m:
            break
        parts.append(int(m.group(1)))
    return tuple(parts)


def _works_with(*names: str) -> str:
    tested = tested_versions()
    pins = [f"{n}=={tested[_canonical(n)]}" for n in names if _canonical(n) in tested]
    if not pins:
        return "see constraints.txt in netdiff's repository for versions tested together"
    return f"tested together: {', '.join(pins)} (bash scripts/setup.sh, or pip install -c constraints.txt)"


def check_peft_stack() -> None:
    """peft must be at least what the installed transformers and diffusers ask for; checked before
    LoRA set-up, where transformers would otherwise fail deep inside ``add_adapter``."""
    peft = installed_version("peft")
    if peft is None:
        raise DependencyError(f"LoRA needs peft, which is not installed; {_works_with('peft')}")
    for owner, module in (("transformers", "transformers.integrations.peft"),
                          ("diffusers", "diffusers.utils.constants")):
        have = installed_version(owner)
        if have is None:
            continue
        try:
            need = getattr(__import__(module, fromlist=["MIN_PEFT_VERSION"]), "MIN_PEFT_VERSION", None)
        except ImportError:
            need = None
        if need and version_tuple(peft) < version_tuple(str(need)):
            raise DependencyError(f"{owner} {have} needs peft >= {need}, but peft {peft} is installed; "
                                  f"{_works_with(owner, 'peft')}")


def _top_package(filename: str) -> str | None:
    """The distribution-level package a source file belongs to (site-packages/<pkg>/...)."""
    parts = Path(filename).parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            i = parts.index(marker)
            if i + 1 < len(parts):
                return parts[i + 1].removesuffix(".py")
    return None


def _distribution(module: str) -> str:
    top = module.split(".")[0]
    dists = metadata.packages_distributions().get(top)
    return dists[0] if dists else top


def describe_import_failure(exc: ImportError) -> str | None:
    """One line for an ImportError raised inside a third-party package by another one (a version
    mismatch), or None when it is not that (netdiff's own bug, or a package simply missing)."""
    importer = None
    tb = exc.__traceback__
    while tb is not None:
        pkg = _top_package(tb.tb_frame.f_code.co_filename)
        if pkg and pkg != "netdiff":
            importer = pkg
        tb = tb.tb_next
    target = exc.name or ""
    m = re.search(r"from '([\w.]+)'", str(exc))
    if m:
        target = m.group(1)
    if not importer or not target:
        return None
    a, b = _distribution(importer), _distribution(target)
    if _canonical(a) == _canonical(b):
        return None
    va, vb = installed_version(a), installed_version(b)
    who = f"{a} {va}" if va else a
    if vb is None:
        return f"{who} needs {b}, which is not installed; {_works_with(a, b)}"
    return (f"{who} does not work with {b} {vb} ({str(exc).splitlines()[0]}); "
            f"{_works_with(a, b)}")


def report_versions(names=("torch", "diffusers", "transformers", "peft", "accelerate")) -> str:
    """Installed vs tested versions, one package a line (for ``netdiff --versions`` style output)."""
    tested = tested_versions()
    rows = []
    for n in names:
        have, want = installed_version(n), tested.get(_canonical(n))
        flag = "" if want is None or have is None or have == want or have.split("+")[0] == want else "  (tested: " + want + ")"
        rows.append(f"{n} {have or 'not installed'}{flag}")
    return "\n".join(rows)


if __name__ == "__main__":   # python -m netdiff.model.dependencies: what is installed against what was tested
    print(report_versions())
    sys.exit(0)
