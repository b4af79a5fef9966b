"""DoppelGANger (Lin et al., IMC 2020) in PyTorch.

Generators, in order:
  1. attribute generator: MLP on noise -> attributes (softmax per categorical, sigmoid otherwise);
  2. min/max generator ("self-norm"): MLP on (attributes, noise) -> per-sequence (max+min)/2 and
     (max-min)/2 of every continuous feature; features are generated in the sequence's own range;
  3. feature generator: LSTM whose every cell emits ``sample_len`` time steps, each with the
     features and a generation flag pair ([1, 0] continue, [0, 1] end). Steps after the end are
     zeroed, which is how variable lengths are learned and generated.
Critics: an MLP on (all features, attributes, min/max) and an auxiliary MLP on attributes and
min/max only, both WGAN-GP. ``retrain_attributes`` refits the attribute generator alone, e.g. to
change the attribute mix without touching the time series. ``dp`` trains the critics with DP-SGD
(per-sample clipping + Gaussian noise, via torch.func; opacus accounts epsilon when installed).
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from netdiff.errors import NetdiffError
from netdiff.telemetry import modelio
from netdiff.telemetry.common import (GroupActivation, merge_config, mlp, pick_device, seeded,
                                      stamp_times, time_info)
from netdiff.telemetry.data import TelemetryData
from netdiff.telemetry.scaling import Encoder


@dataclass
class DGConfig:
    epochs: int = 400
    batch_size: int = 100
    sample_len: int = 7
    max_length: int | None = None  # default: longest training sequence
    attribute_noise_dim: int = 5
    feature_noise_dim: int = 5
    attribute_hidden: int = 100
    attribute_layers: int = 3
    feature_hidden: int = 100
    feature_layers: int = 1
    critic_hidden: int = 200
    critic_layers: int = 5
    gp_lambda: float = 10.0
    aux_weight: float = 1.0
    lr: float = 1e-3
    critic_lr: float = 1e-3
    beta1: float = 0.5
    critic_steps: int = 1
    self_norm: bool = True
    gen_flags: str | bool = "auto"  # auto: on when training lengths differ
    log_columns: list = field(default_factory=list)
    dp: bool = False
    dp_noise_multiplier: float = 1.0
    dp_max_grad_norm: float = 1.0
    dp_delta: float = 1e-5
    seed: int = 0
    device: str = "auto"


class _Networks(nn.Module):
    def __init__(self, cfg: DGConfig, enc: Encoder, n_cont: int, steps: int, flags: bool):
        super().__init__()
        self.attr_dim, self.n_cont = enc.attribute_dim, n_cont
        self.addi_dim = 2 * n_cont if cfg.self_norm else 0
        self.step_dim = enc.feature_dim + (2 if flags else 0)
        self.steps, self.sample_len, self.flags = steps, cfg.sample_len, flags
        self.attr_noise, self.feat_noise = cfg.attribute_noise_dim, cfg.feature_noise_dim
        cond = self.attr_dim + self.addi_dim

        if self.attr_dim:
            self.attr_gen = mlp(self.attr_noise, cfg.attribute_hidden, cfg.attribute_layers, self.attr_dim, True)
            self.attr_act = GroupActivation(Encoder.groups(enc.attributes))
        if self.addi_dim:
            self.addi_gen = mlp(self.attr_dim + self.attr_noise, cfg.attribute_hidden, cfg.attribute_layers,
                                self.addi_dim, True)
        self.lstm = nn.LSTM(cond + self.feat_noise, cfg.feature_hidden, cfg.feature_layers, batch_first=True)
        self.feat_out = nn.Linear(cfg.feature_hidden, self.sample_len * self.step_dim)
        groups = Encoder.groups(enc.features)
        if flags:
            groups = groups + [("flag", enc.feature_dim, enc.feature_dim + 2)]
        self.feat_act = GroupActivation(groups)

        feat_flat = steps * self.sample_len * self.step_dim
        self.critic = mlp(feat_flat + cond, cfg.critic_hidden, cfg.critic_layers, 1)
        self.aux_critic = mlp(cond, cfg.critic_hidden, cfg.critic_layers, 1) if cond else None

    def generators(self):
        return [m for name, m in self.named_children() if not name.endswith("critic")]

    def generate(self, n: int, g: torch.Generator, attributes: torch.Tensor | None = None):
        """(attributes, addi, features) with features (n, T, step_dim) zeroed after the end."""
        dev = self.feat_out.weight.device
        z = lambda *shape: torch.randn(*shape, generator=g, device=dev)  # noqa: E731
        if attributes is None:
            attributes = (self.attr_act(self.attr_gen(z(n, self.attr_noise))) if self.attr_dim
                          else torch.zeros(n, 0, device=dev))
        cond = attributes
        addi = torch.zeros(n, 0, device=dev)
        if self.addi_dim:
            # The min/max generator sees the attributes but does not push gradients into them.
            addi = torch.sigmoid(self.addi_gen(torch.cat([attributes.detach(), z(n, self.attr_noise)], 1)))
            cond = torch.cat([attributes, addi], 1)
        inp = torch.cat([cond.unsqueeze(1).expand(n, self.steps, cond.shape[1]),
                         z(n, self.steps, self.feat_noise)], 2)
        h, _ = self.lstm(inp)
        out = self.feat_act(self.feat_out(h).reshape(n, self.steps * self.sample_len, self.step_dim))
        if self.flags:
            # alive[t] = no end flag before t; a hard mask, as in DoppelGANger
            end = (out[..., -1] > out[..., -2]).to(out.dtype)
            alive = torch.cumprod(torch.cat([torch.ones_like(end[:, :1]), 1.0 - end[:, :-1]], 1), 1)
            out = out * alive.unsqueeze(-1)
        return attributes, addi, out

    def critic_inputs(self, attributes, addi, features):
        cond = torch.cat([attributes, addi], 1)
        return torch.cat([features.flatten(1), cond], 1), cond


def _wgan_gp(critic, real, fake, g, lam):
    """WGAN-GP critic loss with real, fake and interpolated rows in one forward pass (three small
    matrix products cost three times the overhead of one larger one on CPU)."""
    b = real.shape[0]
    eps = torch.rand(b, 1, generator=g, device=real.device)
    mixed = (eps * real + (1 - eps) * fake).requires_grad_(True)
    out = critic(torch.cat([real, fake, mixed]))
    grad, = torch.autograd.grad(out[2 * b:].sum(), mixed, create_graph=True)
    return out[b:2 * b].mean() - out[:b].mean() + lam * ((grad.norm(2, dim=1) - 1) ** 2).mean()


def _adam(params, lr, beta1):
    try:  # fused kernels on CPU and GPU in recent torch; same maths
        return torch.optim.Adam(params, lr=lr, betas=(beta1, 0.999), fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=lr, betas=(beta1, 0.999))


class DoppelGANger:
    kind = "doppelganger"

    def __init__(self, config: DGConfig | dict | None = None):
        self.config = config if isinstance(config, DGConfig) else merge_config(DGConfig, config)
        self.encoder: Encoder | None = None
        self.net: _Networks | None = None
        self.times: dict | None = None
        self.history: dict = {}
        self.device = pick_device(self.config.device)

    # ------------------------------------------------------------------ data preparation
    def _prepare(self, data: TelemetryData):
        """Encoded real tensors: attributes, addi (min/max), features with flags, padded."""
        cfg, enc = self.config, self.encoder
        feats = enc.encode_features(data)
        n, T, _ = feats.shape
        mask = data.mask()
        cont = enc.continuous_feature_slots()
        addi = np.zeros((n, 0), np.float32)
        if cfg.self_norm and cont:
            x = feats[..., cont]
            lo = np.where(mask[..., None], x, np.inf).min(axis=1)
            hi = np.where(mask[..., None], x, -np.inf).max(axis=1)
            span = hi - lo
            normed = np.where(span[:, None, :] > 1e-8, (x - lo[:, None, :]) / np.maximum(span[:, None, :], 1e-8), 0.5)
            feats[..., cont] = np.where(mask[..., None], normed, 0.0)
            addi = np.concatenate([(hi + lo) / 2, (hi - lo) / 2], axis=1).astype(np.float32)
        Tp = self.net.steps * cfg.sample_len
        out = np.zeros((n, Tp, self.net.step_dim), np.float32)
        out[:, :T, : feats.shape[2]] = feats[:, :Tp]
        if self.net.flags:
            L = np.minimum(data.lengths, Tp)
            t = np.arange(Tp)[None, :]
            out[..., -2] = t < (L[:, None] - 1)
            out[..., -1] = t == (L[:, None] - 1)
        attrs = enc.encode_attributes(data.attributes)
        return (torch.from_numpy(attrs), torch.from_numpy(addi), torch.from_numpy(out))

    def _build(self, data: TelemetryData):
        cfg = self.config
        if cfg.sample_len < 1:
            raise NetdiffError("doppelganger.sample_len must be >= 1")
        self.encoder = Encoder.fit(data, cfg.log_columns)
        T = int(cfg.max_length or data.lengths.max())
        steps = math.ceil(T / cfg.sample_len)
        flags = (cfg.gen_flags is True or cfg.gen_flags == "true"
                 or (cfg.gen_flags == "auto" and len(np.unique(np.minimum(data.lengths, T))) > 1))
        self.max_length = T
        self.net = _Networks(cfg, self.encoder, len(self.encoder.continuous_feature_slots()), steps, flags).to(self.device)

    # ------------------------------------------------------------------ training
    def fit(self, data: TelemetryData, epochs: int | None = None, progress: bool | None = None):
        cfg = self.config
        g = seeded(cfg.seed, self.device)
        if self.net is None:
            self._build(data)
        self.times = time_info(data)
        attrs, addi, feats = (t.to(self.device) for t in self._prepare(data))
        net = self.net
        gen_params = [p for m in net.generators() for p in m.parameters()]
        critic_params = list(net.critic.parameters()) + (list(net.aux_critic.parameters()) if net.aux_critic else [])
        opt_g = _adam(gen_params, cfg.lr, cfg.beta1)
        opt_d = _adam(critic_params, cfg.critic_lr, cfg.beta1)
        n, bs = feats.shape[0], min(cfg.batch_size, feats.shape[0])
        batches = max(1, n // bs)
        dp = _DPCritic(net, cfg, n, bs) if cfg.dp else None
        epochs = cfg.epochs if epochs is None else epochs
        hist = {"epoch_seconds": [], "critic_loss": [], "generator_loss": []}
        net.train()
        for _ in tqdm(range(epochs), desc="doppelganger", disable=progress is False or None, leave=False):
            t0 = time.perf_counter()
            perm = torch.randperm(n, generator=g, device=self.device)
            for b in range(batches):
                idx = perm[b * bs:(b + 1) * bs]
                real = net.critic_inputs(attrs[idx], addi[idx], feats[idx])
                for k in range(cfg.critic_steps):
                    # The last critic step's fake batch also serves the generator step (one
                    # generator pass per batch instead of two; the critic is updated in between).
                    last = k == cfg.critic_steps - 1
                    with torch.set_grad_enabled(last):
                        fake = net.critic_inputs(*net.generate(bs, g))
                    fake_d = tuple(t.detach() for t in fake)
                    opt_d.zero_grad(set_to_none=True)
                    if dp:
                        d_loss = dp.step(real, fake_d, g)
                    else:
                        d_loss = self._critic_loss(real, fake_d, g)
                        d_loss.backward()
                    opt_d.step()
                g_loss = -net.critic(fake[0]).mean()
                if net.aux_critic is not None:
                    g_loss = g_loss - cfg.aux_weight * net.aux_critic(fake[1]).mean()
                opt_g.zero_grad(set_to_none=True)
                g_loss.backward()
                opt_g.step()
            hist["epoch_seconds"].append(time.perf_counter() - t0)
            hist["critic_loss"].append(float(d_loss.detach()))
            hist["generator_loss"].append(float(g_loss.detach()))
        if dp:
            hist["dp"] = dp.report(epochs * batches * cfg.critic_steps)
        self.history = hist
        return self

    def _critic_loss(self, real, fake, g):
        net, lam = self.net, self.config.gp_lambda
        loss = _wgan_gp(net.critic, real[0], fake[0], g, lam)
        if net.aux_critic is not None:
            loss = loss + self.config.aux_weight * _wgan_gp(net.aux_critic, real[1], fake[1], g, lam)
        return loss

    def retrain_attributes(self, data: TelemetryData, epochs: int = 100, progress: bool | None = None):
        """Refit the attribute generator alone on ``data``'s attributes (new attribute mix, or a
        privacy-preserving release of them); the other generators are untouched."""
        if self.net is None:
            raise NetdiffError("train the model before retraining its attribute generator")
        if not self.net.attr_dim:
            raise NetdiffError("the model has no attributes to retrain")
        cfg, net = self.config, self.net
        g = seeded(cfg.seed + 1, self.device)
        real_all = torch.from_numpy(self.encoder.encode_attributes(data.attributes)).to(self.device)
        critic = mlp(net.attr_dim, cfg.critic_hidden, cfg.critic_layers, 1).to(self.device)
        opt_g = _adam(list(net.attr_gen.parameters()), cfg.lr, cfg.beta1)
        opt_d = _adam(list(critic.parameters()), cfg.critic_lr, cfg.beta1)
        n, bs = real_all.shape[0], min(cfg.batch_size, real_all.shape[0])
        net.attr_gen.train()
        sample = lambda: net.attr_act(net.attr_gen(torch.randn(bs, net.attr_noise, generator=g, device=self.device)))  # noqa: E731
        for _ in tqdm(range(epochs), desc="attributes", disable=progress is False or None, leave=False):
            perm = torch.randperm(n, generator=g, device=self.device)
            for b in range(max(1, n // bs)):
                real = real_all[perm[b * bs:(b + 1) * bs]]
                with torch.no_grad():
                    fake = sample()
                d_loss = _wgan_gp(critic, real, fake, g, cfg.gp_lambda)
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()
                g_loss = -critic(sample()).mean()
                opt_g.zero_grad(set_to_none=True)
                g_loss.backward()
                opt_g.step()
        return self

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, count: int, seed: int = 0, batch_size: int = 1000,
                 attributes: pd.DataFrame | None = None) -> TelemetryData:
        """``count`` sequences; ``attributes`` (one row per sequence) conditions the features."""
        if self.net is None:
            raise NetdiffError("the model is not trained")
        if count < 1:
            raise NetdiffError("count must be >= 1")
        net, enc = self.net, self.encoder
        net.eval()
        g = seeded(seed, self.device)
        given = None
        if attributes is not None:
            if len(attributes) != count:
                raise NetdiffError("attributes must have one row per generated sequence")
            given = torch.from_numpy(enc.encode_attributes(attributes)).to(self.device)
        parts = []
        for s in range(0, count, batch_size):
            m = min(batch_size, count - s)
            parts.append([t.cpu() for t in net.generate(m, g, None if given is None else given[s:s + m])])
        attrs, addi, feats = (torch.cat(p).numpy().astype(np.float64) for p in zip(*parts))
        T = self.max_length
        if net.flags:
            end = feats[..., -1] > feats[..., -2]
            lengths = np.where(end.any(axis=1), end.argmax(axis=1) + 1, feats.shape[1])
            feats = feats[..., :-2]
        else:
            lengths = np.full(count, feats.shape[1])
        lengths = np.minimum(lengths, T)
        feats = feats[:, :T]
        cont = enc.continuous_feature_slots()
        if net.addi_dim:
            k = len(cont)
            mid, half = addi[:, :k], addi[:, k:]
            feats[..., cont] = (mid - half)[:, None, :] + feats[..., cont] * (2 * half)[:, None, :]
        out = enc.make_data(enc.decode_attributes(attrs), enc.decode_features(feats), lengths)
        return stamp_times(out, self.times)

    # ------------------------------------------------------------------ persistence
    def save(self, directory, extra: dict | None = None):
        meta = {"config": dataclasses.asdict(self.config), "encoder": self.encoder.to_dict(),
                "max_length": self.max_length, "steps": self.net.steps, "flags": self.net.flags,
                "times": self.times, "history": self.history, **(extra or {})}
        return modelio.save(directory, self.kind, self.net.state_dict(), meta)

    @classmethod
    def from_saved(cls, meta: dict, tensors: dict):
        self = cls(meta["config"])
        self.encoder = Encoder.from_dict(meta["encoder"])
        self.max_length, self.times, self.history = meta["max_length"], meta["times"], meta.get("history", {})
        self.net = _Networks(self.config, self.encoder, len(self.encoder.continuous_feature_slots()),
                             meta["steps"], meta["flags"]).to(self.device)
        try:
            self.net.load_state_dict(tensors)
        except RuntimeError as e:
            raise NetdiffError(f"saved weights do not match the saved configuration ({e})") from e
        self.meta = meta
        return self


class _DPCritic:
    """DP-SGD for the critics: per-sample gradients of the WGAN-GP loss (each sample's loss only
    depends on its own real/fake pair, and the critics have no batch norm), clipped to
    ``dp_max_grad_norm`` and noised with N(0, (noise_multiplier * max_norm)^2)."""

    def __init__(self, net: _Networks, cfg: DGConfig, n: int, batch: int):
        from torch.func import functional_call, grad, vmap

        self.net, self.cfg, self.n, self.batch = net, cfg, n, batch
        self.modules = {"critic": net.critic}
        if net.aux_critic is not None:
            self.modules["aux_critic"] = net.aux_critic
        self.params = {f"{m}.{k}": v for m, mod in self.modules.items() for k, v in mod.named_parameters()}

        def one(params, real_f, real_c, fake_f, fake_c, eps):
            loss = 0.0
            for name, mod, r, f, w in self._parts(real_f, real_c, fake_f, fake_c):
                p = {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith(name + ".")}
                call = lambda x: functional_call(mod, p, (x.unsqueeze(0),)).squeeze()  # noqa: E731
                mixed = eps * r + (1 - eps) * f
                gp = (torch.linalg.vector_norm(grad(call)(mixed)) - 1) ** 2
                loss = loss + w * (call(f) - call(r) + cfg.gp_lambda * gp)
            return loss

        self._per_sample = vmap(grad(one), in_dims=(None, 0, 0, 0, 0, 0))
        self._loss = one

    def _parts(self, real_f, real_c, fake_f, fake_c):
        yield "critic", self.net.critic, real_f, fake_f, 1.0
        if self.net.aux_critic is not None:
            yield "aux_critic", self.net.aux_critic, real_c, fake_c, self.cfg.aux_weight

    def step(self, real, fake, g):
        cfg = self.cfg
        params = {k: v.detach() for k, v in self.params.items()}
        eps = torch.rand(real[0].shape[0], generator=g, device=real[0].device)
        grads = self._per_sample(params, real[0], real[1], fake[0], fake[1], eps)
        norms = torch.sqrt(sum(gr.flatten(1).pow(2).sum(1) for gr in grads.values()))
        scale = (cfg.dp_max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
        b = real[0].shape[0]
        for k, p in self.params.items():
            noise = torch.randn(p.shape, generator=g, device=p.device) * (cfg.dp_noise_multiplier * cfg.dp_max_grad_norm)
            clipped = (grads[k] * scale.view(-1, *([1] * (grads[k].dim() - 1)))).sum(0)
            p.grad = (clipped + noise) / b
        with torch.no_grad():  # the Wasserstein estimate, for the loss history
            return self.net.critic(fake[0]).mean() - self.net.critic(real[0]).mean()

    def report(self, steps: int) -> dict:
        out = {"noise_multiplier": self.cfg.dp_noise_multiplier, "max_grad_norm": self.cfg.dp_max_grad_norm,
               "sample_rate": self.batch / self.n, "steps": steps, "delta": self.cfg.dp_delta}
        try:
            from opacus.accountants import RDPAccountant
        except ImportError:
            out["epsilon"] = None
            out["note"] = "install opacus (netdiff[dp]) for the epsilon accounting"
            return out
        acc = RDPAccountant()
        acc.history = [(self.cfg.dp_noise_multiplier, self.batch / self.n, steps)]
        out["epsilon"] = float(acc.get_epsilon(self.cfg.dp_delta))
        return out
