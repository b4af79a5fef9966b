"""Quantile feature scaling, the bounded per-sequence range of DoppelGANger, and old model
folders (saved before these options) keeping their behaviour."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from netdiff.cli import cli, main
from netdiff.errors import NetdiffError
from netdiff.telemetry import api, modelio
from netdiff.telemetry.common import seeded
from netdiff.telemetry.doppelganger import DoppelGANger
from netdiff.telemetry.scaling import ColumnSpec, Encoder, quantile_decode, quantile_encode
from telemetry_helpers import CONFIGS


def _heavy_with_zeros(n=4000, seed=0):
    rng = np.random.default_rng(seed)
    v = rng.lognormal(0.0, 3.0, n)
    v[rng.random(n) < 0.6] = 0.0  # a point mass holding 60% of the values
    return v


@pytest.mark.parametrize("weight", [1.0, 0.5])
def test_quantile_map_round_trips_and_keeps_point_mass(weight):
    v = _heavy_with_zeros()
    q = np.quantile(v, np.linspace(0, 1, 1001))
    u = quantile_encode(v, q, weight)
    assert np.nanmin(u) >= 0 and np.nanmax(u) <= 1
    assert np.allclose(quantile_decode(u, q, weight), v, rtol=1e-9, atol=1e-12)
    zero_u = quantile_encode(np.array([0.0]), q, weight)[0]
    assert 0.25 * weight < zero_u < 0.35 * weight + (1 - weight) * 1e-3 + 1e-9  # middle of the mass's run
    # everything generated inside the point mass's interval comes back as exactly 0
    inside = np.linspace(0.0, 0.59 * weight, 50)
    assert (quantile_decode(inside, q, weight) == 0.0).all()
    assert np.isnan(quantile_encode(np.array([np.nan]), q, weight)).all()


def test_quantile_spreads_heavy_tail_evenly():
    v = np.random.default_rng(1).lognormal(0.0, 3.0, 5000)
    q = np.quantile(v, np.linspace(0, 1, 1001))
    u = quantile_encode(v, q)
    assert abs(np.median(u) - 0.5) < 0.01  # min-max would put the median near 0
    assert np.median((v - v.min()) / (v.max() - v.min())) < 0.01


def test_encoder_saves_quantiles_and_old_dicts_stay_min_max(tiny_data):
    enc = Encoder.fit(tiny_data, feature_scaling="quantile")
    assert all(c.quantiles is not None for c in enc.features)
    assert all(c.quantiles is None for c in enc.attributes)  # attributes stay min-max
    back = Encoder.from_dict(json.loads(json.dumps(enc.to_dict())))
    assert np.allclose(back.encode_features(tiny_data), enc.encode_features(tiny_data))
    old = ColumnSpec(**{"name": "x", "kind": "continuous", "lo": 2.0, "hi": 6.0, "log": False, "categories": None})
    assert np.allclose(old.decode(np.array([[0.0], [0.5], [1.0]])), [2.0, 4.0, 6.0])
    with pytest.raises(NetdiffError, match="feature scaling"):
        Encoder.fit(tiny_data, feature_scaling="rank")
    with pytest.raises(NetdiffError, match="quantile_weight"):
        Encoder.fit(tiny_data, feature_scaling="quantile", quantile_weight=1.5)


def _saturate_range_generator(model):
    """Push the min/max generator's every output towards sigmoid's 1."""
    last = model.net.addi_gen[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(8.0)


@pytest.mark.parametrize("bounded", [True, False])
def test_generated_range_stays_inside_unit_interval(tiny_data, tiny_config, bounded):
    model = DoppelGANger({**tiny_config["doppelganger"], "bounded_range": bounded}).fit(tiny_data, epochs=1,
                                                                                         progress=False)
    _saturate_range_generator(model)
    with torch.no_grad():
        _, addi, _ = model.net.generate(50, seeded(0, torch.device("cpu")))
    k = addi.shape[1] // 2
    lo, hi = addi[:, :k] - addi[:, k:], addi[:, :k] + addi[:, k:]
    inside = bool((lo >= -1e-6).all() and (hi <= 1 + 1e-6).all())
    assert inside == bounded  # unbounded, mid ~ 1 and half ~ 1 reach 2


def test_old_model_folder_keeps_old_behaviour(tiny_data, tiny_config, tmp_path):
    cfg = {**tiny_config["doppelganger"], "bounded_range": False, "feature_scaling": "minmax"}
    model = DoppelGANger(cfg).fit(tiny_data, progress=False)
    expect = model.generate(20, seed=4)
    model.save(tmp_path / "m", extra={"roles": {}})
    doc = json.loads((tmp_path / "m" / "config.json").read_text())
    for key in ("bounded_range", "feature_scaling", "quantile_weight"):  # as saved before they existed
        del doc["config"][key]
    for col in doc["encoder"]["features"] + doc["encoder"]["attributes"]:
        del col["quantiles"], col["quantile_weight"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(doc))
    old = modelio.load(tmp_path / "m")
    assert old.config.bounded_range is False and old.config.feature_scaling == "minmax"
    got = old.generate(20, seed=4)
    assert np.allclose(got.features, expect.features, equal_nan=True)


def test_default_model_uses_quantile_scaling_and_round_trips(tiny_data, tiny_config, tmp_path):
    model = DoppelGANger(tiny_config["doppelganger"]).fit(tiny_data, progress=False)
    assert model.config.feature_scaling == "quantile" and model.config.bounded_range
    assert all(c.quantiles for c in model.encoder.features)
    model.save(tmp_path / "m", extra={"roles": {}})
    a, b = model.generate(15, seed=2), modelio.load(tmp_path / "m").generate(15, seed=2)
    assert np.array_equal(a.features, b.features, equal_nan=True)


def test_cli_feature_scaling_option(long_csv, tmp_path, capsys):
    args = ["telemetry", "train", "--data", str(long_csv), "--sequence-key", "host", "--time-column", "ts",
            "--attributes", "kind", "--features", "load,queue", "--config", str(CONFIGS / "tiny.yaml")]
    res = CliRunner().invoke(cli, [*args, "--output", str(tmp_path / "m"), "--feature-scaling", "minmax"])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "m" / "config.json").read_text())
    assert doc["config"]["feature_scaling"] == "minmax"
    assert all(c["quantiles"] is None for c in doc["encoder"]["features"])
    code = main([*args, "--model", "ar", "--output", str(tmp_path / "a"), "--feature-scaling", "quantile"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1] == "netdiff: error: --feature-scaling applies to --model doppelganger, not ar"
    assert not (tmp_path / "a").exists()


def test_old_folder_with_auto_numeric_time_keeps_numbers():
    meta = {"roles": {"time_column": "t", "time_format": "auto"}, "times": {"start": 1.7e9, "step": 60.0,
                                                                             "datetime": False}}
    assert api.saved_roles(meta).time_format == "number"
    meta["times"]["datetime"] = True  # trained on dates: auto still reads them as dates
    assert api.saved_roles(meta).time_format == "auto"
    meta["roles"]["time_format"] = "epoch"  # concrete formats (new folders) are kept as saved
    meta["times"]["datetime"] = False
    assert api.saved_roles(meta).time_format == "epoch"


def test_old_folder_auto_time_numbers_evaluate_end_to_end(tmp_path, capsys):
    """A folder saved when ``auto`` kept epoch-range numbers as numbers still evaluates its output."""
    import pandas as pd

    rng = np.random.default_rng(0)
    rows = [{"host": f"h{i}", "t": 1.7e9 + 60 * k, "load": rng.random(), "queue": rng.random()}
            for i in range(12) for k in range(8)]
    real = tmp_path / "real.csv"
    pd.DataFrame(rows).to_csv(real, index=False)
    model = tmp_path / "m"
    assert main(["telemetry", "train", "--data", str(real), "--sequence-key", "host", "--time-column", "t",
                 "--time-format", "number", "--config", str(CONFIGS / "tiny.yaml"), "--output", str(model)]) == 0
    doc = json.loads((model / "config.json").read_text())
    assert doc["times"]["datetime"] is False
    doc["roles"]["time_format"] = "auto"  # what such folders hold
    (model / "config.json").write_text(json.dumps(doc))
    syn = tmp_path / "syn.csv"
    assert main(["telemetry", "generate", "--model", str(model), "--count", "12", "--output", str(syn)]) == 0
    assert pd.api.types.is_numeric_dtype(pd.read_csv(syn)["t"])
    assert api.roles_of_model(model).time_format == "number"
    code = main(["telemetry", "evaluate", "--real", str(real), "--synthetic", str(syn), "--model", str(model),
                 "--out", str(tmp_path / "ev"), "--no-plots", "--iterations", "5"])
    assert code == 0, capsys.readouterr().err


def test_generator_weight_average(tiny_data, tiny_config):
    """One training step: averaged generator weights are decay * initial + (1 - decay) * trained;
    the critics (and so the training itself) do not depend on the average."""
    cfg = {**tiny_config["doppelganger"], "epochs": 1}
    assert tiny_data.n <= cfg["batch_size"]  # one batch, one step
    init = DoppelGANger({**cfg, "epochs": 0}).fit(tiny_data, progress=False).net
    live = DoppelGANger({**cfg, "generator_ema": 0.0}).fit(tiny_data, progress=False).net
    avg = DoppelGANger({**cfg, "generator_ema": 0.9}).fit(tiny_data, progress=False).net
    for name, p in avg.lstm.named_parameters():
        w0, w1 = dict(init.lstm.named_parameters())[name], dict(live.lstm.named_parameters())[name]
        assert not torch.allclose(w0, w1)
        assert torch.allclose(p, 0.9 * w0 + 0.1 * w1, atol=1e-6)
    for a, b in zip(avg.critic.parameters(), live.critic.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(NetdiffError, match="generator_ema"):
        DoppelGANger({**cfg, "generator_ema": 1.0}).fit(tiny_data, progress=False)
