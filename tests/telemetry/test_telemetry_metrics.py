import dataclasses

import numpy as np
import pytest

from netdiff.errors import NetdiffError
from netdiff.telemetry import downstream, metrics


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
    with pytest.raises(NetdiffError, match="window"):
        downstream.evaluate(tiny_data, tiny_data, {**tiny_config["downstream"], "window": 40})  # longer than every real sequence
