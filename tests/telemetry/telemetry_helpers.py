"""Tiny telemetry tables for the tests, and the shared data sets (skipped when absent)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "telemetry"
CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "telemetry"


def make_long(n_seq=24, min_len=6, max_len=16, seed=0, fixed=False) -> pd.DataFrame:
    """Noisy sines, amplitude set by the 'kind' attribute; ISO hourly times; shuffled rows."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_seq):
        kind = ["a", "b", "c"][i % 3]
        amp = {"a": 1.0, "b": 2.0, "c": 4.0}[kind]
        L = max_len if fixed else int(rng.integers(min_len, max_len + 1))
        t = np.arange(L)
        load = amp * (1 + np.sin(t / 2 + rng.random() * 6)) + 0.1 * rng.standard_normal(L)
        queue = 0.5 * load + rng.random(L)
        times = pd.date_range("2025-01-01", periods=L, freq="h") + pd.Timedelta(days=i)
        for k in range(L):
            rows.append({"host": f"h{i:02d}", "ts": times[k].strftime("%Y-%m-%d %H:%M:%S"), "kind": kind,
                         "capacity": 10.0 * (i % 4 + 1), "load": load[k], "queue": queue[k]})
    df = pd.DataFrame(rows)
    return df.sample(frac=1.0, random_state=seed).reset_index(drop=True)  # order must not matter


ROLES = {"sequence_key": ["host"], "time_column": "ts", "attributes": ["kind", "capacity"],
         "features": ["load", "queue"], "categorical": ["kind"]}


def shared(name: str) -> Path:
    path = SHARED / name
    if not path.is_file():
        pytest.skip(f"shared data set {path} not present")
    return path
