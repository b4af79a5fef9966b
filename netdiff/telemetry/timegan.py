"""TimeGAN (Yoon et al., NeurIPS 2019) in PyTorch.

Five recurrent networks: embedder (features -> latent), recovery (latent -> features), generator
(noise -> latent), supervisor (latent_t -> latent_t+1) and discriminator (latent -> real/fake
per step). Training has three phases: (1) autoencoder on reconstruction, (2) supervisor on the
next-step loss of real latents, (3) joint: per step two generator updates (adversarial + gamma *
adversarial on un-supervised latents + 100 sqrt(supervised) + 100 moments), one embedder update,
and a discriminator update when its loss is above 0.15.

TimeGAN models fixed-length windows (``seq_len``) of the features; it does not learn attributes,
which are drawn from their real marginals (``AttributeSampler``) for each generated window.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from netdiff.errors import NetdiffError
from netdiff.telemetry import fastgru, modelio
from netdiff.telemetry.common import AttributeSampler, merge_config, pick_device, seeded, stamp_times, time_info
from netdiff.telemetry.data import TelemetryData, windows
from netdiff.telemetry.scaling import Encoder


DEFAULT_STEPS = (2000, 2000, 1000)  # autoencoder, supervisor, joint, for windows of <= 24 steps
FAST_GRU = True  # CPU GRUs through fastgru (same results to float rounding); False: torch.nn.GRU


@contextlib.contextmanager
def _frozen(*mods):
    """Parameters that take no gradient for one update (their inputs still do)."""
    for m in mods:
        m.requires_grad_(False)
    try:
        yield
    finally:
        for m in mods:
            m.requires_grad_(True)


def default_steps(cfg) -> list[int]:
    """Steps per phase: the configured ones, else DEFAULT_STEPS scaled by 24 / seq_len for windows
    longer than 24 (a step's cost grows with the window: the same minutes for any window)."""
    scale = 24 / max(24, cfg.seq_len)
    given = (cfg.autoencoder_steps, cfg.supervisor_steps, cfg.joint_steps)
    return [int(v) if v is not None else max(1, round(d * scale)) for v, d in zip(given, DEFAULT_STEPS)]


class _Phases:
    """A progress bar per training phase, and its time and last loss in the history and the log."""

    def __init__(self, steps, hist, say, progress):
        self.steps, self.hist, self.say, self.progress, self.i = steps, hist, say, progress, 0

    def start(self, name):
        self.name, self.t0 = name, time.perf_counter()
        self.bar = tqdm(total=self.steps[self.i], desc=f"timegan {self.i + 1}/3 {name}",
                        disable=self.progress is False or None, leave=False)
        return self.bar

    def end(self, loss):
        self.bar.close()
        secs = time.perf_counter() - self.t0
        self.hist["phase_seconds"].append(secs)
        n = self.steps[self.i]
        self.say(f"timegan {self.i + 1}/3 {self.name}: {n} steps in {secs:.1f} s "
                 f"({1e3 * secs / max(1, n):.0f} ms/step), loss {loss:.4g}")
        self.i += 1


@dataclass
class TGConfig:
    seq_len: int | None = None  # None: the training length when all are equal (--window N), else 24
    stride: int = 1
    hidden: int = 24
    layers: int = 3
    cell: str = "gru"  # or "lstm"
    batch_size: int = 128
    # None: CPU-practical defaults, minutes on 2 cores (DEFAULT_STEPS for windows of up to 24
    # steps, proportionally fewer for longer ones); the paper's 10,000 per phase are in
    # configs/telemetry/timegan.yaml
    autoencoder_steps: int | None = None
    supervisor_steps: int | None = None
    joint_steps: int | None = None
    gamma: float = 1.0
    lr: float = 1e-3
    log_columns: list = field(default_factory=list)
    seed: int = 0
    device: str = "auto"
    epochs: int | None = None  # --epochs E: E passes over the windows in each phase (steps = E * windows / batch)


class _RNN(nn.Module):
    def __init__(self, cell: str, inp: int, hidden: int, layers: int, out: int, act: bool = True):
        super().__init__()
        if cell not in ("gru", "lstm"):
            raise NetdiffError(f"timegan.cell must be gru or lstm, not {cell!r}")
        self.rnn = (nn.GRU if cell == "gru" else nn.LSTM)(inp, hidden, max(1, layers), batch_first=True)
        self.out, self.act = nn.Linear(hidden, out), act

    def forward(self, x):
        h = fastgru.gru(self.rnn, x) if FAST_GRU and fastgru.supported(self.rnn) else self.rnn(x)[0]
        y = self.out(h)
        return torch.sigmoid(y) if self.act else y


class _Networks(nn.Module):
    def __init__(self, cfg: TGConfig, dim: int):
        super().__init__()
        h, L, c = cfg.hidden, cfg.layers, cfg.cell
        self.dim = dim
        self.embedder = _RNN(c, dim, h, L, h)
        self.recovery = _RNN(c, h, h, L, dim)
        self.generator = _RNN(c, dim, h, L, h)
        self.supervisor = _RNN(c, h, h, L - 1, h)
        self.discriminator = _RNN(c, h, h, L, 1, act=False)


class TimeGAN:
    kind = "timegan"

    def __init__(self, config: TGConfig | dict | None = None):
        self.config = config if isinstance(config, TGConfig) else merge_config(TGConfig, config)
        self.device = pick_device(self.config.device)
        self.encoder = self.net = self.times = self.sampler = None
        self.history: dict = {}

    def fit(self, data: TelemetryData, progress: bool | None = None):
        cfg = self.config
        g = seeded(cfg.seed, self.device)
        if cfg.seq_len is None:
            equal = int(data.lengths.min()) == int(data.lengths.max())
            self.config = cfg = dataclasses.replace(cfg, seq_len=int(data.lengths.max()) if equal else 24)
        if data.lengths.max() < cfg.seq_len:
            raise NetdiffError(f"no sequence reaches timegan.seq_len={cfg.seq_len} steps")
        win = windows(data, cfg.seq_len, cfg.stride)
        self.encoder = Encoder.fit(data, cfg.log_columns)
        self.sampler = AttributeSampler.fit(data)
        self.times = time_info(data)
        X = torch.from_numpy(self.encoder.encode_features(win)).to(self.device)
        n, dim = X.shape[0], X.shape[2]
        self.net = net = _Networks(cfg, dim).to(self.device)
        bs = min(cfg.batch_size, n)
        steps = default_steps(cfg)
        if cfg.epochs is not None:  # an epoch = one pass over the windows, per phase
            steps = [max(1, cfg.epochs * max(1, n // bs))] * 3
        batch = lambda: X[torch.randint(n, (bs,), generator=g, device=self.device)]  # noqa: E731
        noise = lambda: torch.rand(bs, cfg.seq_len, dim, generator=g, device=self.device)  # noqa: E731
        adam = lambda *mods: torch.optim.Adam([p for m in mods for p in m.parameters()], lr=cfg.lr)  # noqa: E731
        hist = {"phase_seconds": [], "phase_steps": steps, "autoencoder_loss": None, "supervisor_loss": None,
                "generator_loss": None}
        say = getattr(self, "log", None) or (lambda line: None)
        say(f"timegan: {n} windows of {cfg.seq_len} steps x {dim} columns, batch {bs} "
            f"({max(1, n // bs)} steps = 1 epoch); steps per phase: autoencoder {steps[0]}, "
            f"supervisor {steps[1]}, joint {steps[2]}")
        phase = _Phases(steps, hist, say, progress)

        # 1. autoencoder
        bar = phase.start("autoencoder")
        opt = adam(net.embedder, net.recovery)
        for _ in range(steps[0]):
            x = batch()
            loss = 10 * torch.sqrt(F.mse_loss(net.recovery(net.embedder(x)), x))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update()
        hist["autoencoder_loss"] = loss.item()
        phase.end(loss.item())

        # 2. supervisor on real latents (next-step)
        bar = phase.start("supervisor")
        opt = adam(net.generator, net.supervisor)
        for _ in range(steps[1]):
            with torch.no_grad():
                h = net.embedder(batch())
            loss = F.mse_loss(net.supervisor(h)[:, :-1], h[:, 1:])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update()
        hist["supervisor_loss"] = loss.item()
        phase.end(loss.item())

        # 3. joint training
        bar = phase.start("joint")
        opt_g = adam(net.generator, net.supervisor)
        opt_e = adam(net.embedder, net.recovery)
        opt_d = adam(net.discriminator)
        bce = nn.BCEWithLogitsLoss()
        for _ in range(steps[2]):
            for _ in range(2):
                x = batch()
                # the embedder does not change in the generator update: one forward serves both
                # updates (the generator's sees it detached); the recovery and discriminator
                # pass gradients to their inputs only
                h = net.embedder(x)
                hd = h.detach()
                with _frozen(net.recovery, net.discriminator):
                    e_hat = net.generator(noise())
                    h_hat = net.supervisor(e_hat)
                    x_hat = net.recovery(h_hat)
                    y_fake, y_fake_e = net.discriminator(h_hat), net.discriminator(e_hat)
                    g_u = bce(y_fake, torch.ones_like(y_fake))
                    g_u_e = bce(y_fake_e, torch.ones_like(y_fake_e))
                    g_s = F.mse_loss(net.supervisor(hd)[:, :-1], hd[:, 1:])
                    g_v = ((torch.sqrt(x_hat.var(0, unbiased=False) + 1e-6)
                            - torch.sqrt(x.var(0, unbiased=False) + 1e-6)).abs().mean()
                           + (x_hat.mean(0) - x.mean(0)).abs().mean())
                    g_loss = g_u + cfg.gamma * g_u_e + 100 * torch.sqrt(g_s + 1e-12) + 100 * g_v
                    opt_g.zero_grad(set_to_none=True)
                    g_loss.backward()
                opt_g.step()

                with _frozen(net.supervisor):
                    e_loss = 10 * torch.sqrt(F.mse_loss(net.recovery(h), x)) + 0.1 * F.mse_loss(
                        net.supervisor(h)[:, :-1], h[:, 1:])
                    opt_e.zero_grad(set_to_none=True)
                    e_loss.backward()
                opt_e.step()

            x = batch()
            with torch.no_grad():
                h = net.embedder(x)
                e_hat = net.generator(noise())
                h_hat = net.supervisor(e_hat)
            y_real, y_fake, y_fake_e = (net.discriminator(v) for v in (h, h_hat, e_hat))
            d_loss = (bce(y_real, torch.ones_like(y_real)) + bce(y_fake, torch.zeros_like(y_fake))
                      + cfg.gamma * bce(y_fake_e, torch.zeros_like(y_fake_e)))
            if d_loss.item() > 0.15:  # keep the discriminator from overpowering the generator
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()
            bar.update()
        hist["generator_loss"] = g_loss.item()
        phase.end(g_loss.item())
        hist["windows"] = n
        self.history = hist
        return self

    @torch.no_grad()
    def generate(self, count: int, seed: int = 0, batch_size: int = 1000) -> TelemetryData:
        if self.net is None:
            raise NetdiffError("the model is not trained")
        if count < 1:
            raise NetdiffError("count must be >= 1")
        cfg, net = self.config, self.net
        net.eval()
        g = seeded(seed, self.device)
        parts = []
        for s in range(0, count, batch_size):
            m = min(batch_size, count - s)
            z = torch.rand(m, cfg.seq_len, net.dim, generator=g, device=self.device)
            parts.append(net.recovery(net.supervisor(net.generator(z))).cpu())
        feats = torch.cat(parts).numpy().astype(np.float64)
        attrs = self.sampler.sample(count, np.random.default_rng(seed))
        out = self.encoder.make_data(attrs, self.encoder.decode_features(feats), np.full(count, cfg.seq_len))
        return stamp_times(out, self.times)

    def save(self, directory, extra: dict | None = None):
        meta = {"config": dataclasses.asdict(self.config), "encoder": self.encoder.to_dict(),
                "attributes": self.sampler.marginals, "times": self.times, "history": self.history,
                **(extra or {})}
        return modelio.save(directory, self.kind, self.net.state_dict(), meta)

    @classmethod
    def from_saved(cls, meta: dict, tensors: dict):
        self = cls(meta["config"])
        self.encoder = Encoder.from_dict(meta["encoder"])
        self.sampler = AttributeSampler(meta["attributes"])
        self.times, self.history, self.meta = meta["times"], meta.get("history", {}), meta
        self.net = _Networks(self.config, self.encoder.feature_dim).to(self.device)
        try:
            self.net.load_state_dict(tensors)
        except RuntimeError as e:
            raise NetdiffError(f"saved weights do not match the saved configuration ({e})") from e
        return self
