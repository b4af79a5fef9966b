"""Data shapes that need no YAML: one keyless series cut with --window, inferred features,
column names with spaces, auto-detected time formats, synthetic files without a sequence column."""
import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from netdiff.cli import cli, main
from netdiff.errors import NetdiffError
from netdiff.telemetry.columns import detect_time_format, resolve, split_names
from netdiff.telemetry.data import ColumnRoles, load_table, parse_times


def router_csv(path, n=300, seed=0):
    """One long series as a router-load export: day-first minute stamps, padded header names,
    no key column, a text column that is not a feature."""
    rng = np.random.default_rng(seed)
    t = pd.date_range("2025-07-19 10:19", periods=n, freq="min")  # day 19 > 12: day-first is certain
    x = np.sin(np.arange(n) / 6) + 0.1 * rng.standard_normal(n)
    pd.DataFrame({"Time": t.strftime("%d-%m-%Y %H:%M"), " enq_qdepth2": 3 + x,
                  "Buffer ": 10 + 2 * x + rng.random(n), "Resolution": rng.choice(["hd", "sd"], n),
                  "FPS": rng.integers(24, 31, n)}).to_csv(path, index=False)
    return path


def _run(args):
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res


def test_split_names_keeps_quoted_names_exact():
    assert split_names('a, " b ",c ,') == ["a", '" b "', "c"]
    assert split_names("") is None


def test_resolve_exact_stripped_quoted_and_closest():
    cols = ["Time", " enq_qdepth2", "Buffer ", "x", "x "]
    assert resolve(" enq_qdepth2", cols) == " enq_qdepth2"
    assert resolve("enq_qdepth2", cols) == " enq_qdepth2"
    assert resolve('" enq_qdepth2"', cols) == " enq_qdepth2"
    assert resolve("x", cols) == "x"  # an exact match wins over a stripped one
    with pytest.raises(NetdiffError, match="closest: ' enq_qdepth2'"):
        resolve('"enq_qdepth2"', cols)  # quoted: exact only
    with pytest.raises(NetdiffError, match="closest: 'Buffer '"):
        resolve("bufer", cols)
    with pytest.raises(NetdiffError, match="matches 2 columns"):
        resolve(" x  ", cols)


@pytest.mark.parametrize("values,fmt", [
    (["19-07-2025 10:19", "05-07-2025 10:20"], "%d-%m-%Y %H:%M"),
    (["07/19/2025 10:19:00", "07/05/2025 10:20:00"], "%m/%d/%Y %H:%M:%S"),
    (["2025.07.19_10.19.00"], "%Y.%m.%d_%H.%M.%S"),
    (["2025-07-19T10:19:00Z"], "iso"),
    ([1752920340, 1752920400], "epoch"),
    ([1752920340000, 1752920400000], "epoch_ms"),
    ([0, 1, 2], "number"),
])
def test_auto_time_formats(values, fmt):
    s = pd.Series(values, name="t")
    assert detect_time_format(s)[0] == fmt
    t, is_dt = parse_times(s, "auto")
    if fmt != "number":
        assert is_dt and t[0] == 1752920340.0


def test_ambiguous_day_month_is_reported():
    with pytest.raises(NetdiffError, match="ambiguous.*dayfirst or monthfirst"):
        parse_times(pd.Series(["05-07-2025 10:19", "06-07-2025 10:19"], name="t"), "auto")
    t, _ = parse_times(pd.Series(["05-07-2025 10:19"], name="t"), "dayfirst")
    assert pd.Timestamp(t[0], unit="s").month == 7


def test_one_series_windows_and_inferred_features(tmp_path):
    path = router_csv(tmp_path / "r.csv", n=100)
    got = load_table(path, ColumnRoles(time_column="Time", window=20, stride=10))
    assert got.roles.features == [" enq_qdepth2", "Buffer ", "FPS"]  # Resolution is text
    assert got.roles.time_format == "%d-%m-%Y %H:%M"
    assert got.data.n == 9 and (got.data.lengths == 20).all() and got.rows.n == 1 and got.rows.lengths[0] == 100
    assert np.all(np.diff(got.data.times[0]) == 60)
    assert any("ignored: Resolution" in n for n in got.notes)


def test_cli_no_yaml_train_generate_evaluate(tmp_path):
    real = router_csv(tmp_path / "r.csv")
    model = tmp_path / "m"
    res = _run(["telemetry", "train", "--model", "ar", "--data", str(real), "--time-column", "Time",
                "--window", "20", "--stride", "5", "--output", str(model), "--threads", "1"])
    assert "features (every numeric column not key/time/attribute): ' enq_qdepth2', 'Buffer ', FPS; " \
           "ignored: Resolution" in res.output
    assert "day-first dates" in res.output
    meta = json.loads((model / "config.json").read_text())
    assert meta["roles"]["features"] == [" enq_qdepth2", "Buffer ", "FPS"] and meta["roles"]["window"] == 20
    syn = tmp_path / "s.csv"
    _run(["telemetry", "generate", "--model", str(model), "--count", "57", "--output", str(syn)])
    # someone else's generator: no sequence column, no time, names stripped -> one series, cut like the real
    other = tmp_path / "other.csv"
    raw = pd.read_csv(real)
    raw.columns = [c.strip() for c in raw.columns]
    raw.drop(columns=["Time"]).to_csv(other, index=False)
    out = tmp_path / "ev"
    res = _run(["telemetry", "evaluate", "--real", str(real), "--synthetic", str(other), "--synthetic", str(syn),
                "--model", str(model), "--out", str(out), "--no-plots", "--iterations", "5"])
    assert "no 'sequence_id' column: read as one series, cut like the real data (window 20, stride 5)" in res.output
    rep = json.loads((out / "metrics.json").read_text())
    assert rep["counts"] == {"real": 57, "synthetic": 57}  # (300 - 20) / 5 + 1 windows on both sides
    zero = pytest.approx(0, abs=1e-12)  # the same values, read back from another CSV
    assert rep["m"] == zero and rep["m_window_weighted"] == zero and rep["autocorrelation_mse"] == zero
    sets = rep["synthetic_sets"]
    assert sets["m"]["values"][0] == zero and sets["m"]["min"] == zero and sets["m"]["max"] > 1e-3
    assert sets["m"]["mean"] == pytest.approx(sets["m"]["max"] / 2)


@pytest.mark.parametrize("args,message", [
    (["--features", "enq_qdepth"], "closest: ' enq_qdepth2'"),
    (["--features", '"enq_qdepth2"'], "closest: ' enq_qdepth2'"),
    ([], "cut the one series with --window"),
    (["--stride", "3"], "needs data.window"),
])
def test_no_yaml_errors_are_one_line(tmp_path, capsys, args, message):
    real = router_csv(tmp_path / "r.csv", n=60)
    code = main(["telemetry", "train", "--model", "ar", "--data", str(real), "--time-column", "Time", *args,
                 "--output", str(tmp_path / "m")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and message in err[-1] and err[-1].startswith("netdiff: error:")
    assert not (tmp_path / "m").exists()
