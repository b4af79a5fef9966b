import numpy as np
import pandas as pd
import pytest
import torch

from netdiff.errors import NetdiffError
from netdiff.telemetry import modelio
from netdiff.telemetry.baselines import ARBaseline, PARBaseline, bootstrap
from netdiff.telemetry.doppelganger import DoppelGANger
from netdiff.telemetry.timegan import TimeGAN


def _same(a, b):
    assert np.array_equal(a.lengths, b.lengths)
    assert np.allclose(a.features, b.features, equal_nan=True)
    pd.testing.assert_frame_equal(a.attributes, b.attributes)


def _check_types(synth, real, count, max_len):
    assert synth.n == count and synth.features.shape == (count, max_len, 2)
    assert synth.feature_names == real.feature_names and synth.attribute_names == real.attribute_names
    assert set(synth.attributes["kind"]) <= {"a", "b", "c"}
    assert synth.attributes["capacity"].dtype.kind == "f"
    lo, hi = real.attributes["capacity"].min(), real.attributes["capacity"].max()
    assert synth.attributes["capacity"].between(lo - 1e-9, hi + 1e-9).all()
    valid = synth.features[synth.mask()]
    assert np.isfinite(valid).all()
    rv = real.features[real.mask()]
    assert (valid >= rv.min(0) - 1e-6).all() and (valid <= rv.max(0) + 1e-6).all()
    assert np.isnan(synth.features[~synth.mask()]).all()


def test_doppelganger_trains_generates_and_round_trips(tiny_data, tiny_config, tmp_path):
    model = DoppelGANger(tiny_config["doppelganger"]).fit(tiny_data, progress=False)
    assert model.net.flags  # lengths vary, so gen flags are on
    assert len(model.history["epoch_seconds"]) == 2
    synth = model.generate(30, seed=5)
    _check_types(synth, tiny_data, 30, 16)
    assert synth.times is not None and synth.time_is_datetime
    _same(synth, model.generate(30, seed=5))  # deterministic given the seed
    assert not np.allclose(np.nan_to_num(synth.features), np.nan_to_num(model.generate(30, seed=6).features))
    model.save(tmp_path / "m", extra={"roles": {}})
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    _same(synth, modelio.load(tmp_path / "m").generate(30, seed=5))


def test_training_is_deterministic(tiny_data, tiny_config):
    a = DoppelGANger(tiny_config["doppelganger"]).fit(tiny_data, progress=False).generate(10, seed=1)
    b = DoppelGANger(tiny_config["doppelganger"]).fit(tiny_data, progress=False).generate(10, seed=1)
    _same(a, b)


def test_real_gen_flags_and_self_norm(tiny_data, tiny_config):
    model = DoppelGANger(tiny_config["doppelganger"])
    model._build(tiny_data)
    attrs, addi, feats = model._prepare(tiny_data)
    L = tiny_data.lengths
    i = int(np.argmin(L))
    flags = feats[i, :, -2:].numpy()
    assert (flags[: L[i] - 1] == [1, 0]).all() and (flags[L[i] - 1] == [0, 1]).all() and (flags[L[i]:] == 0).all()
    x = feats[i, : L[i], :2].numpy()
    assert np.allclose(x.min(0), 0) and np.allclose(x.max(0), 1)  # each sequence in its own range
    assert addi.shape == (tiny_data.n, 4)


def test_gen_flags_set_generated_lengths(tiny_data, tiny_config):
    """Force the flag logits: all "continue" gives full length, "end" at once gives length 1."""
    model = DoppelGANger(tiny_config["doppelganger"]).fit(tiny_data, epochs=1, progress=False)
    out, step, k = model.net.feat_out, model.net.step_dim, model.config.sample_len
    assert model.net.steps == 4  # 16 steps = 4 cells x 4
    for logits, expect in (([5.0, -5.0], 16), ([-5.0, 5.0], 1)):
        with torch.no_grad():
            out.weight.view(k, step, -1)[:, -2:] = 0
            out.bias.view(k, step)[:, -2:] = torch.tensor(logits)
        synth = model.generate(12, seed=0)
        assert (synth.lengths == expect).all()
        assert np.isnan(synth.features[:, expect:]).all() and not np.isnan(synth.features[:, :expect]).any()


def test_variable_lengths_are_learned_from_data(tiny_data, tiny_config):
    cfg = {**tiny_config["doppelganger"], "epochs": 600}
    synth = DoppelGANger(cfg).fit(tiny_data, progress=False).generate(200, seed=0)
    assert len(np.unique(synth.lengths)) > 1 and synth.lengths.max() <= 16


def test_retrain_attributes_changes_only_attribute_mix(tiny_data, tiny_config):
    model = DoppelGANger(tiny_config["doppelganger"]).fit(tiny_data, progress=False)
    lstm_before = {k: v.clone() for k, v in model.net.lstm.state_dict().items()}
    only_c = tiny_data.subset(np.flatnonzero(tiny_data.attributes["kind"] == "c"))
    before = (model.generate(300, seed=0).attributes["kind"] == "c").mean()
    model.retrain_attributes(only_c, epochs=100, progress=False)
    after = (model.generate(300, seed=0).attributes["kind"] == "c").mean()
    assert after > before + 0.3
    for k, v in model.net.lstm.state_dict().items():
        assert torch.equal(v, lstm_before[k])


def test_dp_critics_train(tiny_data, tiny_config):
    cfg = {**tiny_config["doppelganger"], "dp": True, "epochs": 1, "dp_noise_multiplier": 1.1}
    model = DoppelGANger(cfg).fit(tiny_data, progress=False)
    rep = model.history["dp"]
    assert rep["noise_multiplier"] == 1.1 and rep["steps"] == 1 * (24 // 24)
    assert all(torch.isfinite(p).all() for p in model.net.critic.parameters())
    if rep["epsilon"] is not None:
        assert rep["epsilon"] > 0
    assert model.generate(5).n == 5


def test_fixed_length_without_flags(tiny_config):
    from netdiff.telemetry.data import ColumnRoles, from_long
    from telemetry_helpers import ROLES, make_long

    data = from_long(make_long(n_seq=12, fixed=True), ColumnRoles.from_dict(ROLES))
    model = DoppelGANger({**tiny_config["doppelganger"], "sample_len": 3}).fit(data, progress=False)
    assert not model.net.flags and model.net.steps == 6  # 16 steps padded to 18, cut back
    synth = model.generate(7)
    assert (synth.lengths == 16).all() and synth.features.shape == (7, 16, 2)


def test_timegan_trains_generates_and_round_trips(tiny_data, tiny_config, tmp_path):
    model = TimeGAN(tiny_config["timegan"]).fit(tiny_data, progress=False)
    assert len(model.history["phase_seconds"]) == 3
    synth = model.generate(9, seed=2)
    _check_types(synth, tiny_data, 9, 8)
    assert (synth.lengths == 8).all()
    model.save(tmp_path / "tg")
    _same(synth, modelio.load(tmp_path / "tg").generate(9, seed=2))
    with pytest.raises(NetdiffError, match="seq_len"):
        TimeGAN({**tiny_config["timegan"], "seq_len": 99}).fit(tiny_data, progress=False)


def test_ar_baseline_and_bootstrap(tiny_data, tmp_path):
    model = ARBaseline({"order": 2}).fit(tiny_data)
    synth = model.generate(40, seed=3)
    _check_types(synth, tiny_data, 40, 16)
    assert set(synth.lengths) <= set(tiny_data.lengths)
    model.save(tmp_path / "ar")
    _same(synth, modelio.load(tmp_path / "ar").generate(40, seed=3))
    boot = bootstrap(tiny_data, 10, seed=1)
    assert boot.n == 10 and set(map(tuple, boot.attributes.to_numpy())) <= set(map(tuple, tiny_data.attributes.to_numpy()))


def test_par_baseline_when_sdv_installed(tiny_data):
    pytest.importorskip("sdv")
    model = PARBaseline({"epochs": 1}).fit(tiny_data)
    synth = model.generate(4)
    assert synth.n == 4 and synth.feature_names == tiny_data.feature_names
    assert set(synth.attributes["kind"]) <= {"a", "b", "c"} and np.isfinite(synth.features[synth.mask()]).all()


def test_par_needs_sdv_message(tiny_data):
    try:
        import sdv  # noqa: F401
        pytest.skip("sdv is installed")
    except ImportError:
        pass
    with pytest.raises(NetdiffError, match="netdiff\\[sdv\\]"):
        PARBaseline({"epochs": 1}).fit(tiny_data)


def test_load_rejects_non_model_folder(tmp_path):
    with pytest.raises(NetdiffError, match="not a telemetry model folder"):
        modelio.load(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"junk")
    with pytest.raises(NetdiffError):
        modelio.load(tmp_path)


def test_generation_conditioned_on_given_attributes(tiny_data, tiny_config):
    model = DoppelGANger(tiny_config["doppelganger"]).fit(tiny_data, progress=False)
    wanted = pd.DataFrame({"kind": ["c", "a", "c"], "capacity": [10.0, 25.0, 40.0]})
    synth = model.generate(3, seed=0, attributes=wanted)
    assert synth.attributes["kind"].tolist() == ["c", "a", "c"]
    assert np.allclose(synth.attributes["capacity"], wanted["capacity"], atol=1e-4)
    with pytest.raises(NetdiffError, match="one row per"):
        model.generate(4, attributes=wanted)


def test_hand_written_critic_step_matches_autograd():
    """_MLPCritic's WGAN-GP gradients (double backward written out) equal autograd's."""
    from netdiff.telemetry.common import mlp
    from netdiff.telemetry.doppelganger import _MLPCritic

    torch.manual_seed(0)
    for inp, hidden, layers in ((12, 16, 3), (5, 8, 1), (5, 8, 0)):
        critic = mlp(inp, hidden, layers, 1).double()
        fast = _MLPCritic(critic)
        for _ in range(2):  # the second round reuses the work buffers
            b = 9
            real, fake = torch.rand(b, inp, dtype=torch.float64), torch.rand(b, inp, dtype=torch.float64)
            eps = torch.rand(b, 1, dtype=torch.float64)
            mixed = (eps * real + (1 - eps) * fake).requires_grad_(True)
            out = critic(torch.cat([real, fake, mixed]))
            grad, = torch.autograd.grad(out[2 * b:].sum(), mixed, create_graph=True)
            loss = out[b:2 * b].mean() - out[:b].mean() + 10 * ((grad.norm(2, dim=1) - 1) ** 2).mean()
            critic.zero_grad(set_to_none=True)
            (0.7 * loss).backward()
            expect = [p.grad.clone() for p in critic.parameters()]
            got_loss = fast.wgan_gp_step(real, fake, eps, 10.0, 0.7)
            assert torch.allclose(got_loss, loss.detach())
            for p, e in zip(critic.parameters(), expect):
                assert torch.allclose(p.grad, e, atol=1e-12)
            x = fake.clone().requires_grad_(True)
            (-0.3 * critic(x).sum()).backward()
            value, gx = fast.input_grad(fake, -0.3)
            assert torch.allclose(gx, x.grad) and torch.allclose(value, -0.3 * critic(fake).sum().detach())


def test_cond_lstm_matches_torch_lstm():
    """_CondLSTM (condition projected once, BPTT written out, output layer fused) equals
    nn.LSTM on [cond, noise] followed by nn.Linear, with and without gradients."""
    from netdiff.telemetry.doppelganger import _cond_lstm

    torch.manual_seed(0)
    for n, T, c, z, H, O in ((6, 5, 4, 3, 7, 4), (3, 1, 2, 2, 5, 3), (4, 2, 0, 3, 4, 2)):
        lstm = torch.nn.LSTM(c + z, H, 1, batch_first=True).double()
        lin = torch.nn.Linear(H, O).double()
        params = list(lstm.parameters()) + list(lin.parameters())
        args = lambda cond, noise: (cond, noise, lstm.weight_ih_l0, lstm.weight_hh_l0,  # noqa: E731
                                    lstm.bias_ih_l0, lstm.bias_hh_l0, lin.weight, lin.bias)
        for _ in range(2):  # the second round reuses the work buffers
            cond = torch.rand(n, c, dtype=torch.float64, requires_grad=True)
            noise = torch.randn(n, T, z, dtype=torch.float64)
            weights = torch.randn(n, T, O, dtype=torch.float64)
            y = lin(lstm(torch.cat([cond.unsqueeze(1).expand(n, T, c), noise], 2))[0])
            (y * weights).sum().backward()
            expect = [p.grad.clone() for p in params] + [cond.grad.clone()]
            for p in params + [cond]:
                p.grad = None
            got = _cond_lstm(*args(cond, noise))
            assert torch.allclose(got, y)
            (got * weights).sum().backward()
            for g, e in zip([p.grad for p in params] + [cond.grad], expect):
                assert torch.allclose(g, e)
            for p in params + [cond]:
                p.grad = None
            with torch.no_grad():
                assert torch.allclose(_cond_lstm(*args(cond, noise)), y)

    # a forward pass that reuses the work buffers before an earlier one's backward: recomputed
    first, second = torch.randn(n, T, z, dtype=torch.float64), torch.randn(n, T, z, dtype=torch.float64)
    cond = torch.rand(n, c, dtype=torch.float64, requires_grad=True)
    y1 = lin(lstm(torch.cat([cond.unsqueeze(1).expand(n, T, c), first], 2))[0])
    y1.sum().backward()
    expect = [p.grad.clone() for p in params]
    for p in params + [cond]:
        p.grad = None
    got1 = _cond_lstm(*args(cond, first))
    _cond_lstm(*args(cond, second))
    got1.sum().backward()
    for p, e in zip(params, expect):
        assert torch.allclose(p.grad, e)


def test_fused_adam_matches_torch_adam():
    from netdiff.telemetry.doppelganger import _adam

    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(4))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    mine, ref = _adam(a, 1e-3, 0.5), torch.optim.Adam(b, lr=1e-3, betas=(0.5, 0.999))
    for _ in range(4):
        for p, q in zip(a, b):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        mine.step()
        ref.step()
    for p, q in zip(a, b):
        assert torch.allclose(p, q)


def test_no_attributes_briefly_trained_is_not_length_one(tiny_config):
    """With no attributes nothing varied the random flag logits: every sequence ended at step 1."""
    from netdiff.telemetry.data import ColumnRoles, from_long
    from telemetry_helpers import make_long

    roles = {"sequence_key": ["host"], "time_column": "ts", "features": ["load", "queue"]}
    data = from_long(make_long(), ColumnRoles.from_dict(roles))
    model = DoppelGANger(tiny_config["doppelganger"]).fit(data, progress=False)
    assert model.net.flags and not model.net.attr_dim
    synth = model.generate(40, seed=0)
    assert synth.lengths.min() > 1 and synth.lengths.mean() >= data.lengths.mean()
