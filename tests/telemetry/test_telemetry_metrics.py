import dataclasses

import numpy as np
import pandas as pd
import pytest

from netdiff.errors import NetdiffError
from netdiff.telemetry import downstream, metrics
from netdiff.telemetry.data import TelemetryData


def _distort(data, noise, seed=0):
    rng = np.random.default_rng(seed)
    f = data.features + noise * rng.standard_normal(data.features.shape) * np.nanstd(data.features, axis=(0, 1))
    return dataclasses.replace(data, features=f)


def test_fidelity_is_zero_for_identical_data(tiny_data):
    rep = metrics.fidelity(tiny_data, tiny_data)
    assert rep["m"] == 0 and rep["autocorrelation_mse"] == 0 and rep["cross_correlation"] == 0
    assert all(v == 0 for v in rep["w1"]["features"].values())
    assert all(v == 0 for v in rep["w1"]["attributes"].values()) and rep["w1"]["lengths"] == 0
    assert all(v == 0 for v in rep["tvd"]["attributes"].values())


def test_fidelity_grows_with_distortion(tiny_data):
    small, large = (metrics.fidelity(tiny_data, _distort(tiny_data, s)) for s in (0.1, 1.0))
    for key in ("m", "autocorrelation_mse", "cross_correlation"):
        assert 0 < small[key] < large[key], key
    for f in tiny_data.feature_names:
        assert 0 < small["w1"]["features"][f] < large["w1"]["features"][f]


def test_m_metric_by_hand():
    r = np.array([[[0.0], [1.0], [2.0], [3.0], [4.0]]])  # IQR 2, median 2 (on scale 0..1: 0.5, 0.5)
    s = r + 0.4  # same IQR, median shifted by 0.4 / 4
    m, per = metrics.m_metric(r / 4, s / 4)
    assert m == pytest.approx(0.1)


def test_autocorrelation_respects_lengths():
    x = np.full((2, 6), np.nan)
    x[0, :4] = [1, -1, 1, -1]
    x[1, :6] = [1, -1, 1, -1, 1, -1]
    acf = metrics.autocorrelation(x, 2)
    assert acf[0] == pytest.approx(np.mean([-3 / 4, -5 / 6]))
    assert acf[1] == pytest.approx(np.mean([2 / 4, 4 / 6]))


def test_lengths_and_categorical_attribute_distances(tiny_data):
    shorter = dataclasses.replace(tiny_data, lengths=np.maximum(tiny_data.lengths - 3, 1))
    assert metrics.fidelity(tiny_data, shorter)["w1"]["lengths"] > 0
    attrs = tiny_data.attributes.copy()
    attrs["kind"] = "a"
    rep = metrics.fidelity(tiny_data, dataclasses.replace(tiny_data, attributes=attrs))
    assert rep["tvd"]["attributes"]["kind"] == pytest.approx(2 / 3)


def test_discriminative_and_predictive_scores(tiny_data):
    names, r, _ = metrics._aligned(tiny_data, tiny_data)
    L = tiny_data.lengths
    same = metrics.discriminative_score(r, L, r.copy(), L, iterations=60)
    shifted = metrics.discriminative_score(r, L, np.clip(r + 0.5, 0, None), L, iterations=60)
    assert same <= 0.2 < shifted
    good = metrics.predictive_score(r, L, r, L, iterations=60)
    rng = np.random.default_rng(0)
    bad = metrics.predictive_score(rng.random(r.shape), L, r, L, iterations=60)
    assert good < bad


def test_missing_columns_are_named(tiny_data):
    other = dataclasses.replace(tiny_data, feature_names=["load", "other"])
    with pytest.raises(NetdiffError, match="queue"):
        metrics.fidelity(tiny_data, other)


def test_downstream_tasks_report_both_trainings(tiny_data, tiny_config):
    rep = downstream.evaluate(tiny_data, tiny_data, tiny_config["downstream"])
    for side in ("synthetic", "real"):
        f = rep["forecast"][side]
        assert f["rmse"] == pytest.approx(np.sqrt(f["mse"])) and f["mae"] > 0 and f["mape"] > 0
        a = rep["anomaly"][side]
        assert 0 <= a["precision"] <= 1 and 0 <= a["recall"] <= 1 and 0 <= a["f1"] <= 1
    # the traces on the longest held-out sequence, in the data's own units
    tr = rep["trace"]
    n = len(tr["step"])
    assert n > 0 and tr["step"] == list(range(tr["step"][0], tr["step"][0] + n))
    assert [len(x) for x in tr["actual"]] == [n] * len(tr["feature_names"])
    for side in ("synthetic", "real"):
        assert [len(x) for x in tr["predicted"][side]] == [n] * len(tr["feature_names"])
        assert set(tr["flagged"][side]) <= set(tr["anomaly_step"])
    names = tr["feature_names"]
    values = tiny_data.features[..., [tiny_data.feature_names.index(f) for f in names]][tiny_data.mask()]
    assert np.isin(np.round(tr["actual"][0], 4), np.round(values[:, 0], 4)).all()
    spiked = np.array(tr["anomaly_series"][0])
    at = [tr["anomaly_step"].index(s) for s in tr["injected"]]
    clean = np.delete(spiked, at)
    assert np.isin(np.round(clean, 4), np.round(values[:, 0], 4)).all()
    with pytest.raises(NetdiffError, match="window"):
        downstream.evaluate(tiny_data, tiny_data, {**tiny_config["downstream"], "window": 40})  # longer than every real sequence


def test_m_is_the_tutorial_eq1_on_rows_and_window_weighted_is_separate():
    from netdiff.telemetry.data import windows

    rng = np.random.default_rng(1)
    series = np.r_[np.zeros(8), rng.random(12) ** 3 * 10][None, :, None]  # skewed one series of 20 rows
    base = dict(attributes=pd.DataFrame(index=range(1)), lengths=np.array([20]), keys=["s"], attribute_names=[],
                feature_names=["x"], attribute_kinds={}, feature_kinds={"x": "continuous"})
    rows = TelemetryData(features=series, **base)
    real_w = windows(rows, 5, 1)  # overlapping windows: middle rows count 5 times, the ends once
    synth_w = windows(rows, 5, 5)  # generated windows, every row once
    rep = metrics.fidelity(real_w, synth_w, real_rows=rows, synth_rows=synth_w)
    assert rep["m"] == 0 < rep["m_window_weighted"]
    # Eq. 1 by hand: min-max by the real rows, numpy percentiles over the rows
    other = series[0, :, 0] * 0.5 + 1.0
    synth = TelemetryData(features=other[None, :, None], **base)
    r = (series[0, :, 0] - series.min()) / np.ptp(series)
    s = (other - series.min()) / np.ptp(series)
    q = lambda v: np.percentile(v, [25, 50, 75])  # noqa: E731
    expect = abs((q(r)[2] - q(r)[0]) - (q(s)[2] - q(s)[0])) + abs(q(r)[1] - q(s)[1])
    assert metrics.fidelity(rows, synth)["m"] == pytest.approx(expect)


def test_discriminative_reports_confidence_or_says_too_few(tiny_data):
    names, r, _ = metrics._aligned(tiny_data, tiny_data)
    L = tiny_data.lengths
    few = metrics.discriminative(r, L, r, L, iterations=5)
    assert few["score"] is None and "too few sequences" in few["note"] and "24 real" in few["note"]
    many = np.concatenate([r] * 3)
    LL = np.concatenate([L] * 3)
    rep = metrics.discriminative(many, LL, np.clip(many + 0.5, 0, None), LL, iterations=40)
    lo, hi = rep["accuracy_ci95"]
    assert rep["test_sequences"] == 28 and lo <= rep["accuracy"] <= hi
    assert rep["score_ci95"][0] <= rep["score"] <= rep["score_ci95"][1]
    assert metrics.wilson(14, 28)[0] < 0.5 < metrics.wilson(14, 28)[1]
