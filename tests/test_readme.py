"""The README's Python API example runs as written, in an empty folder, and the package
docstring shows the same code: the documentation cannot rot unnoticed."""
from __future__ import annotations

import ast
import re
import shutil
import textwrap
import warnings
from pathlib import Path

import netdiff

REPO = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("## Python API")
    section = text[start:text.index("\n## ", start)]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the Python API section holds one python block"
    return blocks[0]


def test_package_docstring_shows_the_readme_example():
    doc = netdiff.__doc__
    code = textwrap.dedent(doc[doc.index("    import netdiff"):])
    assert code.strip() == readme_example().strip()


def test_readme_example_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    code = readme_example()
    tree = ast.parse(code)
    # validate needs tshark; without it only that statement is left out, the rest still runs
    if shutil.which("tshark") is None:
        kept = [s for s in tree.body if "netdiff.validate(" not in ast.get_source_segment(code, s)]
        warnings.warn(f"tshark is not installed: {len(tree.body) - len(kept)} README statement(s) "
                      "calling netdiff.validate were not run")
        tree.body = kept
    namespace: dict = {"__name__": "readme"}
    exec(compile(tree, "README.md (Python API)", "exec"), namespace)
    report = namespace["report"]
    assert {"jsd", "tstr", "c2st_auc"} <= set(report)
    assert (tmp_path / "report" / "report.json").is_file()
    assert sorted(p.name for p in (tmp_path / "gen_pcaps").rglob("*.pcap")) == \
        ["dns_udp_000000.pcap", "icmp_echo_000000.pcap", "web_tcp_000000.pcap"]
    assert list((tmp_path / "out" / "convert" / "images").rglob("*.png"))
    assert namespace["bits"].shape[0] == len(namespace["batch"])
