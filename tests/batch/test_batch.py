"""netdiff batch: stages are skipped when up to date, and a pipeline killed with SIGKILL at any
moment then run again gives the same outputs as one run straight through."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from netdiff.batch import run_pipeline, tree_hash

REPO = Path(__file__).resolve().parents[2]


def write_pipeline(tmp: Path, stages: list[dict]) -> Path:
    p = tmp / "p.yaml"
    p.write_text(yaml.safe_dump({"name": "t", "out": "out", "vars": {"seed": 3}, "stages": stages}))
    return p


STAGES = [
    {"name": "samples", "run": "samples {output} --seed {seed}", "output": "captures"},
    {"name": "images", "run": "pcap2img {captures} {output} --height 64", "inputs": ["captures"], "output": "images"},
    {"name": "rebuilt", "run": "img2pcap {images} {output}", "inputs": ["images"], "output": "rebuilt"},
]


def outputs(out: Path) -> dict[str, str]:
    """Hashes of every output file, with the run's own folder name taken out of sidecars."""
    res = {}
    for f in sorted(out.rglob("*")):
        if not f.is_file() or f.name in ("manifest.json", "batch.log"):
            continue
        data = f.read_bytes()
        if f.suffix == ".json":
            doc = json.loads(data)
            doc.get("source", {}).pop("path", None)
            data = json.dumps(doc, sort_keys=True).encode()
        res[str(f.relative_to(out))] = tree_hash_bytes(data)
    return res


def tree_hash_bytes(b: bytes) -> str:
    import hashlib
    return hashlib.sha256(b).hexdigest()


def test_up_to_date_stages_are_skipped_and_changes_rerun(tmp_path):
    p = write_pipeline(tmp_path, STAGES)
    logs = []
    run_pipeline(p, echo=logs.append)
    assert not any("skipped" in line for line in logs)
    logs.clear()
    run_pipeline(p, echo=logs.append)
    assert sum("up to date, skipped" in line for line in logs) == 3
    # a changed output is noticed and rebuilt
    victim = next((tmp_path / "out" / "rebuilt").rglob("*.pcap"))
    victim.write_bytes(b"damaged")
    logs.clear()
    run_pipeline(p, echo=logs.append)
    assert any(line.startswith("[rebuilt] netdiff") for line in logs)
    assert victim.read_bytes() != b"damaged"
    assert not list((tmp_path / "out").glob("*.partial"))


def test_bad_pipeline_files(tmp_path, cli):
    f = tmp_path / "bad.yaml"
    f.write_text("stages: [")
    code, _, err = cli("batch", f)
    assert code == 1 and "not valid YAML" in err
    f.write_text(yaml.safe_dump({"stages": [{"name": "x"}]}))
    code, _, err = cli("batch", f)
    assert code == 1 and "needs 'name' and 'run'" in err
    f.write_text(yaml.safe_dump({"stages": [{"name": "x", "run": "pcap2img {nothing} {output}", "output": "o"}]}))
    code, _, err = cli("batch", f)
    assert code == 1 and "unknown placeholder {nothing}" in err
    code, _, err = cli("batch", tmp_path / "missing.yaml")
    assert code == 1 and "no such pipeline file" in err


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    d = tmp_path_factory.mktemp("straight")
    run_pipeline(write_pipeline(d, STAGES), echo=lambda s: None)
    return d


@pytest.mark.parametrize("kill_after", [1.0, 3.0])
def test_killed_and_resumed_equals_straight_through(tmp_path, straight, kill_after):
    resumed = tmp_path / "b"
    resumed.mkdir()
    p = write_pipeline(resumed, STAGES)
    proc = subprocess.Popen([sys.executable, "-m", "netdiff.cli", "batch", str(p)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(kill_after)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    run_pipeline(p, echo=lambda s: None)
    assert outputs(straight / "out") == outputs(resumed / "out")
    assert not list((resumed / "out").glob("*.partial"))
