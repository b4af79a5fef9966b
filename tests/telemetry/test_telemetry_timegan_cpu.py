"""TimeGAN on CPU: the hand-written GRU equals torch's, phases are timed and logged, --epochs
counts per phase, and generation does not depend on the thread count."""
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from netdiff.cli import cli
from netdiff.errors import NetdiffError
from netdiff.telemetry import fastgru, timegan
from netdiff.telemetry.timegan import TimeGAN
from telemetry_helpers import CONFIGS


@pytest.mark.parametrize("layers", [1, 3])
def test_fast_gru_matches_torch_values_and_gradients(layers):
    torch.manual_seed(0)
    gru = torch.nn.GRU(5, 7, layers, batch_first=True).double()
    x = torch.randn(4, 9, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 9, 7, dtype=torch.float64)
    results = []
    for f in (lambda v: gru(v)[0], lambda v: fastgru.gru(gru, v)):
        gru.zero_grad()
        x.grad = None
        y = f(x)
        (y * w).sum().backward()
        results.append([y.detach().clone(), x.grad.clone()] + [p.grad.clone() for p in gru.parameters()])
    for a, b in zip(*results):
        assert torch.allclose(a, b, atol=1e-12), (a - b).abs().max()
    with torch.no_grad():
        assert torch.allclose(fastgru.gru(gru, x), gru(x)[0], atol=1e-12)


def test_fast_gru_training_matches_torch_gru(tiny_data, tiny_config, monkeypatch):
    cfg = {**tiny_config["timegan"], "autoencoder_steps": 3, "supervisor_steps": 3, "joint_steps": 2, "layers": 2}
    runs = []
    for fast in (True, False):
        monkeypatch.setattr(timegan, "FAST_GRU", fast)
        runs.append(TimeGAN(cfg).fit(tiny_data, progress=False).generate(5, seed=1).features)
    assert np.allclose(runs[0], runs[1], atol=1e-4)


def test_phases_are_timed_logged_and_epochs_count_per_phase(tiny_data, tiny_config):
    lines = []
    model = TimeGAN({**tiny_config["timegan"], "epochs": 2, "batch_size": 16})
    model.log = lines.append
    model.fit(tiny_data, progress=False)
    n = model.history["windows"]
    assert model.history["phase_steps"] == [2 * (n // 16)] * 3
    assert len(model.history["phase_seconds"]) == 3 and all(s > 0 for s in model.history["phase_seconds"])
    assert lines[0].startswith(f"timegan: {n} windows of 8 steps")
    assert [ln.split(":")[0] for ln in lines[1:]] == ["timegan 1/3 autoencoder", "timegan 2/3 supervisor",
                                                       "timegan 3/3 joint"]


def test_generation_is_byte_identical_across_thread_counts(long_csv, tmp_path):
    args = ["--sequence-key", "host", "--time-column", "ts", "--attributes", "kind", "--features", "load,queue"]
    model = tmp_path / "tg"
    res = CliRunner().invoke(cli, ["telemetry", "train", "--model", "timegan", "--data", str(long_csv), *args,
                                   "--config", str(CONFIGS / "tiny.yaml"), "--output", str(model)],
                             catch_exceptions=False)
    assert res.exit_code == 0 and "timegan 3/3 joint" in res.output and "phases" in res.output
    outs = []
    for threads in (1, 2):
        out = tmp_path / f"s{threads}.csv"
        res = CliRunner().invoke(cli, ["telemetry", "generate", "--model", str(model), "--count", "1500",
                                       "--output", str(out), "--seed", "4", "--threads", str(threads)],
                                 catch_exceptions=False)
        assert res.exit_code == 0, res.output
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


def test_seq_len_follows_equal_training_lengths(tiny_data, tiny_config):
    from netdiff.telemetry.data import windows

    cfg = {**tiny_config["timegan"], "seq_len": None, "autoencoder_steps": 1, "supervisor_steps": 1, "joint_steps": 1}
    model = TimeGAN(cfg).fit(windows(tiny_data, 6, 3), progress=False)
    assert model.config.seq_len == 6 and (model.generate(3).lengths == 6).all()
    with pytest.raises(NetdiffError, match="seq_len=24"):  # lengths 6..16 differ: the paper's 24
        TimeGAN(cfg).fit(tiny_data, progress=False)


def test_frozen_fast_gru_passes_input_gradients_only():
    torch.manual_seed(1)
    gru = torch.nn.GRU(3, 4, 2, batch_first=True).double()
    x = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    gru(x)[0].sum().backward()
    expect = x.grad.clone()
    x.grad = None
    gru.zero_grad(set_to_none=True)
    gru.requires_grad_(False)
    fastgru.gru(gru, x).sum().backward()
    assert torch.allclose(x.grad, expect, atol=1e-12) and all(p.grad is None for p in gru.parameters())


def test_default_steps_keep_the_minutes_for_long_windows():
    from netdiff.telemetry.timegan import TGConfig, default_steps

    assert default_steps(TGConfig(seq_len=24)) == [2000, 2000, 1000] == default_steps(TGConfig(seq_len=8))
    assert default_steps(TGConfig(seq_len=48)) == [1000, 1000, 500]
    assert default_steps(TGConfig(seq_len=48, joint_steps=7)) == [1000, 1000, 7]
