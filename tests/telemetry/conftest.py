"""Fixtures for the telemetry tests (tiny tables in tmp_path, the tiny config)."""
from __future__ import annotations

import pytest
from telemetry_helpers import CONFIGS, ROLES, make_long


@pytest.fixture
def long_csv(tmp_path):
    path = tmp_path / "tele.csv"
    make_long().to_csv(path, index=False)
    return path


@pytest.fixture
def tiny_data():
    from netdiff.telemetry.data import ColumnRoles, from_long

    return from_long(make_long(), ColumnRoles.from_dict(ROLES))


@pytest.fixture
def tiny_config():
    import yaml

    return yaml.safe_load((CONFIGS / "tiny.yaml").read_text())


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models are faster on one thread (and two-core CI boxes are often shared)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
