"""Fixtures shared by every test folder."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def benchmark_module(name: str):
    """A script of benchmarks/ loaded as a module (benchmarks/ is no package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"{name}_bench", REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or skip when this checkout has none beside it."""
    if not (SHARED / "pcaps").is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED


@pytest.fixture(scope="session")
def shared_pcaps(shared_data) -> list[Path]:
    return sorted((shared_data / "pcaps").glob("*/*.pcap"))


@pytest.fixture
def cli(capsys):
    """Run the netdiff CLI in process: returns (exit code, stdout, stderr)."""
    from netdiff.cli import main

    def run(*args):
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture(scope="session")
def sample_captures(tmp_path_factory) -> Path:
    from netdiff.pipeline.sample_captures import write_samples

    d = tmp_path_factory.mktemp("samples")
    write_samples(d, seed=7)
    return d
