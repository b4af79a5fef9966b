import zipfile

import numpy as np
import pandas as pd
import pytest
import yaml

from netdiff.errors import NetdiffError
from netdiff.telemetry.data import ColumnRoles, from_long, load, parse_times, to_frame, windows

from telemetry_helpers import CONFIGS, ROLES, make_long, shared


def test_long_form_groups_sorts_and_pads(long_csv):
    data = load(long_csv, ColumnRoles.from_dict(ROLES))
    raw = pd.read_csv(long_csv)
    assert data.n == 24
    assert sorted(data.lengths.tolist()) == sorted(raw.groupby("host").size().tolist())
    assert np.isnan(data.features[~data.mask()]).all() and not np.isnan(data.features[data.mask()]).any()
    # rows were shuffled in the file: each sequence must come back in time order
    i = data.keys.index("h05")
    expect = raw[raw.host == "h05"].sort_values("ts")["load"].to_numpy()
    assert np.allclose(data.features[i, : data.lengths[i], 0], expect)
    assert data.attribute_kinds == {"kind": "categorical", "capacity": "continuous"}
    assert np.all(np.diff(data.times[i, : data.lengths[i]]) == 3600)


def test_round_trip_through_frame(tiny_data):
    frame = to_frame(tiny_data, "host", "ts")
    back = from_long(frame, ColumnRoles(sequence_key=["host"], time_column="ts", time_format="iso",
                                        attributes=["kind", "capacity"], features=["load", "queue"]))
    assert back.keys == tiny_data.keys
    assert np.array_equal(back.lengths, tiny_data.lengths)
    assert np.allclose(back.features[back.mask()], tiny_data.features[tiny_data.mask()])
    assert np.allclose(back.times[back.mask()], tiny_data.times[tiny_data.mask()])


@pytest.mark.parametrize("fmt,values", [
    ("iso", ["2025-03-04T10:00:00Z", "2025-03-04T11:00:00Z"]),
    ("dayfirst", ["04/03/2025 10:00", "04/03/2025 11:00"]),
    ("epoch", [1741082400, 1741086000]),
    ("epoch_ms", [1741082400000, 1741086000000]),
    ("%Y.%m.%d_%H.%M.%S", ["2025.03.04_10.00.00", "2025.03.04_11.00.00"]),
])
def test_time_formats_agree(fmt, values):
    t, is_dt = parse_times(pd.Series(values, name="t"), fmt)
    assert is_dt and t[0] == 1741082400.0 and t[1] - t[0] == 3600.0


def test_bad_time_is_one_error():
    with pytest.raises(NetdiffError, match="time column 't'"):
        parse_times(pd.Series(["yesterday", "noon"], name="t"), "iso")


def test_missing_values_filled_within_sequence(tmp_path):
    df = pd.DataFrame({"s": [1, 1, 1, 2, 2], "x": ["1", "-", "3", "-", "-"], "a": ["p", "p", "p", "q", "q"],
                       "y": [5, 6, 7, 8, 9]})
    path = tmp_path / "m.csv"
    df.to_csv(path, index=False)
    data = load(path, ColumnRoles(sequence_key=["s"], attributes=["a"], features=["x", "y"]))
    assert data.features[0, :3, 0].tolist() == [1.0, 1.0, 3.0]  # gap takes the previous value
    assert data.features[1, :2, 0].tolist() == [2.0, 2.0]  # all-missing: the column median


def test_errors_name_the_problem(long_csv):
    with pytest.raises(NetdiffError, match="nosuch"):
        load(long_csv, ColumnRoles.from_dict({**ROLES, "features": ["nosuch"]}))
    with pytest.raises(NetdiffError, match="attribute 'queue' varies"):
        load(long_csv, ColumnRoles.from_dict({**ROLES, "attributes": ["queue"], "features": ["load"]}))
    with pytest.raises(NetdiffError, match="unknown data option"):
        ColumnRoles.from_dict({"bogus": 1})


def test_wide_form_variable_length(tmp_path):
    df = pd.DataFrame({"id": ["x", "y"], "site": ["n", "s"], "v_0": [1.0, 4.0], "v_1": [2.0, 5.0],
                       "v_2": [3.0, np.nan]})
    path = tmp_path / "w.csv"
    df.to_csv(path, index=False)
    data = load(path, ColumnRoles(layout="wide", sequence_key=["id"], attributes=["site"], features=["v"]))
    assert data.lengths.tolist() == [3, 2] and data.features.shape == (2, 3, 1)
    assert data.features[1, :2, 0].tolist() == [4.0, 5.0]


def test_parquet_and_zip_sources(tmp_path):
    df = make_long(n_seq=4)
    pq = tmp_path / "t.parquet"
    df.to_parquet(pq)
    assert load(pq, ColumnRoles.from_dict(ROLES)).n == 4
    zpath = tmp_path / "z.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for i, (host, g) in enumerate(df.groupby("host")):
            zf.writestr(f"root/{'app1' if i % 2 else 'app2'}/{host}.csv", g.drop(columns=["host"]).to_csv(index=False))
        zf.writestr("__MACOSX/root/._junk.csv", "junk")
    data = load(zpath, ColumnRoles(time_column="ts", path_attributes={"app": 1}, attributes=["app"],
                                   features=["load"]))
    assert data.n == 4 and sorted(data.attributes["app"].unique()) == ["app1", "app2"]


def test_windows_and_resample(tiny_data):
    w = windows(tiny_data, 6, 3)
    assert (w.lengths == 6).all() and w.features.shape[1:] == (6, 2)
    expected = sum(len(range(0, L - 6 + 1, 3)) for L in tiny_data.lengths)
    assert w.n == expected
    df = make_long(n_seq=3, fixed=True)
    data = from_long(df, ColumnRoles.from_dict({**ROLES, "resample_seconds": 7200}))
    assert (data.lengths == 8).all()
    raw = df[df.host == "h00"].sort_values("ts")["load"].to_numpy()
    assert np.isclose(data.features[0, 0, 0], raw[:2].mean())


def _roles(name):
    return ColumnRoles.from_dict(yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())["data"])


def test_shared_fcc_mba_loads():
    data = load(shared("fcc_mba/fcc_mba.csv"), _roles("fcc_mba"))
    assert data.features.shape == (600, 56, 2) and (data.lengths == 56).all()
    assert data.attributes["technology"].nunique() == 4 and data.attributes["isp"].nunique() == 11


def test_shared_device_data_loads():
    roles = _roles("device_data")
    whole = load(shared("network_load_anomaly/device_data.csv"), ColumnRoles.from_dict(
        {**roles.to_dict(), "window": None, "stride": None}))
    assert whole.n == 10 and (whole.lengths == 741).all()
    steps = np.diff(whole.times, axis=1)
    assert whole.time_is_datetime and np.median(steps) == 3600 and (steps > 0).all()
    data = load(shared("network_load_anomaly/device_data.csv"), roles)
    assert data.features.shape == (600, 24, 2)


def test_shared_5g_loads_variable_length():
    data = load(shared("uccmisl_5g/5G-production-dataset.zip"), _roles("uccmisl_5g"))
    assert data.n == 83
    assert set(data.attributes["app"]) == {"Amazon_Prime", "Netflix", "Download"}
    assert set(data.attributes["mobility"]) == {"Static", "Driving"}
    assert data.lengths.min() < 20 and data.lengths.max() == 240
    assert not np.isnan(data.features[data.mask()]).any()
