"""Rules of the source tree that no single feature test would notice breaking.

1. No module uses another netdiff module's private (``_name``) helpers: a helper two modules
   need is public, with a docstring, in the module that owns it.
2. Every ``# Copied from netdiff.<module>.<qualname> [with A->B, C->D]`` marker holds: the copy
   equals its source after the replacements (whitespace aside), as diffusers' check_copies
   enforces for its example scripts. The marker sits directly above a ``def``/``class`` (the whole
   definition is the copy) or above a block inside a function that ends at ``# End copy`` (the
   block must appear, line for line, in the source definition).
"""
from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def module_files(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module under ``package``."""
    out = {}
    for p in sorted(package.rglob("*.py")):
        parts = list(p.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = p
    return out


# --- 1. private names ------------------------------------------------------------------------------

def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(name: str, path: Path, modules: dict[str, Path], top: str, root: Path = ROOT) -> list[str]:
    """``path:line: what`` for each private name of another ``top`` module used in module ``name``."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    bound: dict[str, tuple[str, list[str]]] = {}    # local name -> (owning module, attribute path)
    found = []

    def flag(node, owner: str, what: str) -> None:
        if owner != name:
            found.append(f"{path.relative_to(root)}:{node.lineno}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == top or a.name.startswith(top + "."):
                    if a.asname:
                        bound[a.asname] = (a.name, [])
                    else:
                        bound[a.name.partition(".")[0]] = (a.name.partition(".")[0], [])
                    if any(private(part) for part in a.name.split(".")):
                        flag(node, a.name, f"import {a.name}")
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([mod] if mod else []))
            if mod != top and not mod.startswith(top + "."):
                continue
            for a in node.names:
                full = f"{mod}.{a.name}"
                bound[a.asname or a.name] = (full, []) if full in modules else (mod, [a.name])
                if private(a.name):
                    flag(node, mod, f"from {mod} import {a.name}")

    def resolve(owner: str, attrs: list[str], node) -> None:
        while attrs and f"{owner}.{attrs[0]}" in modules:       # netdiff.model.training: modules
            owner, attrs = f"{owner}.{attrs[0]}", attrs[1:]
        if any(private(a) for a in attrs):
            flag(node, owner, ".".join([owner, *attrs]))

    for node in ast.walk(tree):
        chain = []
        target = node
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in (
                "getattr", "hasattr", "setattr") and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) \
                and isinstance(node.args[1].value, str):
            chain, target = [node.args[1].value], node.args[0]
        elif not isinstance(node, ast.Attribute):
            continue
        while isinstance(target, ast.Attribute):
            chain.insert(0, target.attr)
            target = target.value
        if isinstance(target, ast.Name) and target.id in bound and any(private(a) for a in chain):
            owner, attrs = bound[target.id]
            resolve(owner, attrs + chain, node)
    return sorted(set(found))


def test_no_private_names_across_modules():
    modules = module_files(ROOT / "netdiff")
    found = [f for name, path in modules.items() for f in private_uses(name, path, modules, "netdiff")]
    assert not found, "private names used outside their module (make them public or move them):\n" + \
        "\n".join(found)


@pytest.mark.parametrize("code, bad", [
    ("from netdiff.b import _x", True),
    ("from netdiff.b import x as _x", False),
    ("from .b import _x", True),
    ("from netdiff.b import __version__", False),
    ("import netdiff.b as m\nm._x()", True),
    ("import netdiff.b\nnetdiff.b._x()", True),
    ("from netdiff import b\nb._x", True),
    ("from netdiff import b\nb.Thing._cache", True),
    ("from netdiff.b import Thing\nThing._cache", True),
    ("from netdiff import b\ngetattr(b, '_x')", True),
    ("from netdiff import b\nb.__name__", False),
    ("from netdiff.a import _own", False),          # its own name
    ("import os\nos._exit(0)", False),               # not netdiff's
    ("self._x = 1", False),
])
def test_private_name_checker(tmp_path, code, bad):
    pkg = tmp_path / "netdiff"
    pkg.mkdir()
    for f in ("__init__.py", "b.py"):
        (pkg / f).write_text("")
    (pkg / "a.py").write_text(code + "\n")
    found = private_uses("netdiff.a", pkg / "a.py", module_files(pkg), "netdiff", tmp_path)
    assert bool(found) is bad, found


# --- 2. copies ------------------------------------------------------------------------------------

MARKER = re.compile(r"^(\s*)# Copied from ([\w.]+)(?: with (.+?))?\s*$")
END = re.compile(r"^\s*# End copy\s*$")


def normalise(lines: list[str]) -> list[str]:
    lines = [ln.rstrip() for ln in lines if ln.strip()]
    return textwrap.dedent("\n".join(lines)).split("\n") if lines else []


def source_of(target: str, modules: dict[str, Path]) -> list[str]:
    """The lines of the definition ``target`` names (a module, or a def/class in one)."""
    parts = target.split(".")
    for k in range(len(parts), 0, -1):
        mod = ".".join(parts[:k])
        if mod in modules:
            break
    else:
        raise LookupError(f"{target}: no such module")
    lines = modules[mod].read_text().splitlines()
    node: ast.AST = ast.parse("\n".join(lines))
    for name in parts[k:]:
        node = next((n for n in ast.iter_child_nodes(node)
                     if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.name == name),
                    None)
        if node is None:
            raise LookupError(f"{target}: no {name} in {mod}")
    return lines if node.__class__ is ast.Module else lines[node.lineno - 1: node.end_lineno]


def replaced(lines: list[str], spec: str | None) -> list[str]:
    text = "\n".join(lines)
    for pair in (spec or "").split(","):
        if pair.strip():
            old, sep, new = pair.strip().partition("->")
            if not sep:
                raise ValueError(f"bad replacement {pair!r} (want old->new)")
            text = text.replace(old, new)
    return text.split("\n")


def copy_problems(path: Path, modules: dict[str, Path], root: Path = ROOT) -> tuple[int, list[str]]:
    """(markers seen, one message per copy that does not match its source) for one file."""
    lines = path.read_text().splitlines()
    tree = ast.parse("\n".join(lines))
    defs = {n.lineno: n for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    problems, seen = [], 0
    for i, line in enumerate(lines):
        m = MARKER.match(line)
        if not m:
            continue
        seen += 1
        where = f"{path.relative_to(root)}:{i + 1}"
        try:
            source = normalise(replaced(source_of(m.group(2), modules), m.group(3)))
        except (LookupError, ValueError) as e:
            problems.append(f"{where}: {e}")
            continue
        j = i + 1
        while j < len(lines) and lines[j].lstrip().startswith("@"):
            j += 1
        if j + 1 in defs:                               # a whole def/class
            copy = normalise(lines[j: defs[j + 1].end_lineno])
            if copy != source:
                problems.append(f"{where}: differs from {m.group(2)}")
            continue
        end = next((k for k in range(i + 1, len(lines)) if END.match(lines[k])), None)
        if end is None or any(MARKER.match(ln) for ln in lines[i + 1: end]):
            problems.append(f"{where}: block without its '# End copy'")
            continue
        block = normalise(lines[i + 1: end])
        if not block or not any(normalise(source[s: s + len(block)]) == block
                                for s in range(len(source) - len(block) + 1)):
            problems.append(f"{where}: block not found in {m.group(2)} (after the replacements)")
    return seen, problems


def test_copies_match_their_sources():
    modules = module_files(ROOT / "netdiff")
    seen, problems = 0, []
    for path in modules.values():
        n, p = copy_problems(path, modules)
        seen, problems = seen + n, problems + p
    assert seen, "no '# Copied from' markers found: is the checker looking in the right place?"
    assert not problems, "copies that drifted from their source:\n" + "\n".join(problems)


SOURCE = '''
def main(tc):
    total = 0
    while total < tc.steps:
        total += 1
        if total > 3:
            break
    return total


class Thing:
    def size(self):
        return 1
'''


@pytest.mark.parametrize("copy, ok", [
    ("# Copied from netdiff.src.main with tc.steps->lc.steps\n"
     "def main(tc):\n    total = 0\n    while total < lc.steps:\n        total += 1\n"
     "        if total > 3:\n            break\n\n    return total\n", True),
    ("# Copied from netdiff.src.main\n"
     "def main(tc):\n    total = 0\n    while total < lc.steps:\n        total += 1\n"
     "        if total > 3:\n            break\n    return total\n", False),
    ("# Copied from netdiff.src.Thing.size with size->length\n@staticmethod\ndef length(self):\n    return 1\n",
     True),
    ("# Copied from netdiff.src.Thing.size\ndef size(self):\n    return 2\n", False),
    ("def f(lc):\n    total = 9\n    # Copied from netdiff.src.main with tc.steps->lc.steps\n"
     "    while total < lc.steps:\n        total += 1\n        # End copy\n        print(total)\n", True),
    ("def f(lc):\n    for _ in range(2):\n        # Copied from netdiff.src.main\n"
     "        total += 1\n        if total > 3:\n            break\n        # End copy\n", True),
    ("def f(lc):\n    # Copied from netdiff.src.main\n    total += 2\n    # End copy\n", False),
    ("def f(lc):\n    # Copied from netdiff.src.main\n    total += 1\n", False),       # no end
    ("# Copied from netdiff.src.missing\ndef missing():\n    pass\n", False),
])
def test_copy_checker(tmp_path, copy, ok):
    pkg = tmp_path / "netdiff"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "src.py").write_text(SOURCE)
    (pkg / "dst.py").write_text(copy)
    seen, problems = copy_problems(pkg / "dst.py", module_files(pkg), tmp_path)
    assert seen == 1
    assert (not problems) is ok, problems
