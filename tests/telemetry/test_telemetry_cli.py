import json

import pandas as pd
import pytest
from click.testing import CliRunner

from netdiff.cli import cli, main
from telemetry_helpers import CONFIGS, shared

ROLE_ARGS = ["--sequence-key", "host", "--time-column", "ts", "--attributes", "kind,capacity",
             "--features", "load,queue", "--categorical", "kind"]
TINY = ["--config", str(CONFIGS / "tiny.yaml")]


def _ok(args):
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


@pytest.mark.parametrize("kind", ["doppelganger", "timegan", "ar"])
def test_train_generate_evaluate(kind, long_csv, tmp_path):
    model = tmp_path / "model"
    out = _ok(["telemetry", "train", "--model", kind, "--data", str(long_csv), *ROLE_ARGS, *TINY,
               "--output", str(model), "--seed", "3"])
    assert "trained" in out and (model / "model.safetensors").is_file()
    syn = tmp_path / "syn.csv"
    _ok(["telemetry", "generate", "--model", str(model), "--count", "12", "--output", str(syn), "--seed", "1"])
    df = pd.read_csv(syn)
    assert list(df.columns) == ["host", "ts", "kind", "capacity", "load", "queue"]
    assert df["host"].nunique() == 12 and set(df["kind"]) <= {"a", "b", "c"}
    syn2 = tmp_path / "syn2.csv"
    _ok(["telemetry", "generate", "--model", str(model), "--count", "12", "--output", str(syn2), "--seed", "1"])
    assert syn.read_bytes() == syn2.read_bytes()  # deterministic given --seed
    if kind != "doppelganger":
        return
    ev = tmp_path / "ev"
    out = _ok(["telemetry", "evaluate", "--real", str(long_csv), "--synthetic", str(syn), "--out", str(ev),
               "--model", str(model), *TINY, "--downstream"])
    rep = json.loads((ev / "metrics.json").read_text())
    for key in ("m", "m_window_weighted", "autocorrelation_mse", "w1", "cross_correlation", "predictive_score"):
        assert key in rep and rep[key] is not None
    # 12 sequences per side are too few for a held-out classifier test: said, not scored
    assert rep["discriminative_score"] is None and "too few" in rep["discriminative"]["note"]
    assert {"attributes", "features", "lengths"} <= set(rep["w1"])
    assert "forecast" in rep["downstream"] and "anomaly" in rep["downstream"]
    assert sorted(rep["plots"]) == ["autocorrelation.png", "distributions.png", "series.png"]
    assert all((ev / p).stat().st_size > 1000 for p in rep["plots"])
    assert json.loads(out.strip().splitlines()[-1])["m"] == rep["m"]


def test_evaluate_identical_data_from_options(long_csv, tmp_path):
    _ok(["telemetry", "evaluate", "--real", str(long_csv), "--synthetic", str(long_csv), "--out",
         str(tmp_path / "ev"), *ROLE_ARGS, *TINY, "--no-plots"])
    rep = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert rep["m"] == 0 and rep["autocorrelation_mse"] == 0 and rep["w1"]["lengths"] == 0


def test_config_sets_column_roles(long_csv, tmp_path):
    cfg = tmp_path / "roles.yaml"
    cfg.write_text("data:\n  sequence_key: [host]\n  time_column: ts\n  attributes: [kind]\n"
                   "  features: [load]\n")
    _ok(["telemetry", "train", "--model", "ar", "--data", str(long_csv), "--config", str(cfg), *TINY,
         "--output", str(tmp_path / "m")])
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["kind"] == "ar" and meta["roles"]["features"] == ["load"]


@pytest.mark.parametrize("args,message", [
    (["--features", "nosuch"], "nosuch"),
    (["--time-format", "%d/%m"], "time column 'ts'"),
])
def test_user_errors_are_one_line(long_csv, tmp_path, capsys, args, message):
    base = ["--sequence-key", "host", "--time-column", "ts", "--attributes", "kind", "--features", "load"]
    code = main(["telemetry", "train", "--model", "ar", "--data", str(long_csv), *base, *args, *TINY,
                 "--output", str(tmp_path / "m")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and message in err and len(err.splitlines()) == 1 and err.startswith("netdiff: error:")
    assert not (tmp_path / "m").exists()


def test_bad_config_and_model_folder(long_csv, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("modell: {}\n")
    code = main(["telemetry", "train", "--data", str(long_csv), "--config", str(bad), "--output", str(tmp_path / "m")])
    assert code == 1 and "unknown section" in capsys.readouterr().err
    code = main(["telemetry", "generate", "--model", str(tmp_path), "--count", "2", "--output", str(tmp_path / "x.csv")])
    assert code == 1 and "not a telemetry model folder" in capsys.readouterr().err
    code = main(["telemetry", "train", "--model", "par", "--data", str(long_csv), *ROLE_ARGS])
    assert code == 1 and "--sample-output" in capsys.readouterr().err


def test_fcc_mba_end_to_end_with_shared_config(tmp_path):
    data = shared("fcc_mba/fcc_mba.csv")
    model = tmp_path / "dg"
    _ok(["telemetry", "train", "--data", str(data), "--config", str(CONFIGS / "fcc_mba.yaml"), *TINY,
         "--epochs", "1", "--output", str(model), "--sample-output", str(tmp_path / "s.parquet"), "--sample-count", "5"])
    df = pd.read_parquet(tmp_path / "s.parquet")
    assert len(df) == 5 * 56 and df["sequence_id"].nunique() == 5
