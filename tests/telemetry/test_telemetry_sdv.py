"""SDV baselines beside PAR: TVAE and CTGAN (per-row). Trained and sampled in one go; skipped
where sdv is not installed (it needs pandas < 3), where the error message is checked instead."""
import importlib.util

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from netdiff.cli import cli, main
from netdiff.errors import NetdiffError
from netdiff.telemetry.sdv_tabular import CTGANBaseline, TVAEBaseline

HAVE_SDV = importlib.util.find_spec("sdv") is not None
needs_sdv = pytest.mark.skipif(not HAVE_SDV, reason="sdv not installed (optional extra netdiff[sdv])")


@pytest.mark.skipif(HAVE_SDV, reason="sdv is installed")
@pytest.mark.parametrize("cls", [TVAEBaseline, CTGANBaseline])
def test_sdv_missing_is_one_clear_error(cls, tiny_data):
    with pytest.raises(NetdiffError, match=r"pip install 'netdiff\[sdv\]'"):
        cls({"epochs": 1}).fit(tiny_data)


@pytest.mark.parametrize("kind", ["tvae", "ctgan"])
def test_cli_needs_sample_output(kind, long_csv, tmp_path, capsys):
    code = main(["telemetry", "train", "--model", kind, "--data", str(long_csv), "--sequence-key", "host",
                 "--output", str(tmp_path / "m")])
    assert code == 1 and f"--model {kind} needs --sample-output" in capsys.readouterr().err


@needs_sdv
@pytest.mark.parametrize("cls", [TVAEBaseline, CTGANBaseline])
def test_tabular_baselines_generate_sequences(cls, tiny_data):
    model = cls({"epochs": 1, "batch_size": 50}).fit(tiny_data)
    a, b = model.generate(6, seed=3), model.generate(6, seed=3)
    assert a.n == 6 and a.feature_names == tiny_data.feature_names and set(a.lengths) <= set(tiny_data.lengths)
    assert np.array_equal(a.features, b.features, equal_nan=True)  # deterministic with a seed
    assert set(a.attributes["kind"]) <= {"a", "b", "c"} and np.isfinite(a.features[a.mask()]).all()
    with pytest.raises(NetdiffError, match="never unpickles"):
        model.save("x")


@needs_sdv
def test_cli_tvae_on_one_keyless_series_writes_as_many_rows(tmp_path):
    rng = np.random.default_rng(0)
    real = tmp_path / "usage.csv"
    pd.DataFrame({"plan": rng.choice(["a", "b"], 80), "mb": rng.gamma(2, 50, 80),
                  "calls": rng.integers(0, 9, 80)}).to_csv(real, index=False)
    out = tmp_path / "s.csv"
    res = CliRunner().invoke(cli, ["telemetry", "train", "--model", "tvae", "--data", str(real), "--epochs", "1",
                                   "--sample-output", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    df = pd.read_csv(out)
    assert len(df) == 80 and {"mb", "calls"} <= set(df.columns)
