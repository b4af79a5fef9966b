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

Training speed (CPU): the critic step and the generator step's critic pass are written out by
hand (``_MLPCritic``: the WGAN-GP loss, its gradient penalty and every weight gradient as a few
matrix products per layer, no double backward), and the LSTM (``_CondLSTM``) projects the
per-sequence condition once instead of at every step and runs the output layer on all steps at
once, with backpropagation through time written out and its work buffers kept between calls.
Both equal autograd's results to float rounding (tests/telemetry compare them).
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
from torch.autograd.function import once_differentiable
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
    # > 0: generation uses an exponential moving average of the generators' weights over the
    # training steps, with this decay per step. WGAN training oscillates and the last step can
    # land on a poor generator (fcc_mba, training seed 2: M 0.028, 0.005 averaged at 0.99), but
    # the average also smooths the dynamics (autocorrelation error about 2x on device_data), so
    # it is off by default (docs/telemetry.md has the figures)
    generator_ema: float = 0.0
    self_norm: bool = True
    # the generated per-sequence range [mid - half, mid + half] kept inside [0, 1] (half = sigmoid
    # times min(mid, 1 - mid)); off, it may overshoot and the overshoot decodes to the column's
    # extreme value. Models saved before this option were trained without it (``from_saved``).
    bounded_range: bool = True
    gen_flags: str | bool = "auto"  # auto: on when training lengths differ
    log_columns: list = field(default_factory=list)
    # "quantile": each continuous feature through its distribution function mixed with its min-max
    # position (``quantile_weight`` of the former; see netdiff.telemetry.scaling), "minmax": min-max
    feature_scaling: str = "quantile"
    quantile_weight: float = 0.8
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
        self.bounded_range = cfg.bounded_range
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
            if self.bounded_range:
                mid = addi[:, :self.n_cont]
                addi = torch.cat([mid, addi[:, self.n_cont:] * torch.minimum(mid, 1.0 - mid)], 1)
            cond = torch.cat([attributes, addi], 1)
        noise = z(n, self.steps, self.feat_noise)
        if self.lstm.num_layers == 1 and dev.type == "cpu":  # cuDNN's LSTM is the better one on GPU
            lstm = self.lstm
            out = _cond_lstm(cond, noise, lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0,
                                  self.feat_out.weight, self.feat_out.bias)
        else:
            h, _ = self.lstm(torch.cat([cond.unsqueeze(1).expand(n, self.steps, cond.shape[1]), noise], 2))
            out = self.feat_out(h)
        out = self.feat_act(out.reshape(n, self.steps * self.sample_len, self.step_dim))
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


# ------------------------------------------------------------------ hand-written kernels
_relu_grad = torch.ops.aten.threshold_backward.grad_input


class _MLPCritic:
    """WGAN-GP maths of a Linear/ReLU critic (no batch norm), written out.

    With h_0 = x, h_i = relu(W_i h_{i-1} + b_i) and D(x) = W_L h_L + b_L, one backward pass over
    the real, fake and mixed rows gives D_i = d(W-loss, or D for mixed rows)/d(pre-activation i)
    and grad_x D(mixed) = D_0 W_0. The penalty's adjoint u_0 = d gp / d grad_x then runs forward
    through the same ReLU masks, u_{i+1} = mask_i * (u_i W_i^T), and every weight gradient is one
    product D_i^T [h_i(real, fake); u_i]. That is 10 forward passes' worth of matrix products per
    critic step where autograd's double backward needs about 12 (it also pushes ReLU's zero
    second derivative back through the forward graph), with far fewer operator calls; the
    results equal autograd's to float rounding (tests/telemetry check this). Activations live
    in work buffers kept between steps (fresh ones measured about 5% slower per step on CPU)."""

    def __init__(self, critic: nn.Sequential):
        self.lins = [m for m in critic if isinstance(m, nn.Linear)]
        if len(self.lins) + sum(isinstance(m, nn.ReLU) for m in critic) != len(critic):
            raise NetdiffError("the hand-written critic step needs a Linear/ReLU critic")
        self._bufs: dict = {}

    def _buf(self, key, rows: int, cols: int, like: torch.Tensor) -> torch.Tensor:
        t = self._bufs.get(key)
        if t is None or t.shape != (rows, cols) or t.device != like.device or t.dtype != like.dtype:
            t = self._bufs[key] = like.new_empty(rows, cols)
        return t

    def _forward(self, x, tag):
        """Activations [x, h_1, .., h_L] and the output D(x)."""
        hs = [x]
        for i, lin in enumerate(self.lins[:-1]):
            out = self._buf((tag, "h", i), x.shape[0], lin.out_features, x)
            hs.append(torch.addmm(lin.bias, hs[-1], lin.weight.t(), out=out).relu_())
        return hs, torch.addmm(self.lins[-1].bias, hs[-1], self.lins[-1].weight.t())

    def _backward(self, hs, d, tag):
        """[D_0, .., D_L] from ``d`` = d loss / d output, (n, 1)."""
        ds = [d]
        for i in range(len(self.lins) - 1, 0, -1):
            buf = self._buf((tag, "d", i), d.shape[0], self.lins[i].in_features, d)
            torch.mm(ds[-1], self.lins[i].weight, out=buf)
            ds.append(_relu_grad(buf, hs[i], 0, grad_input=buf))
        return ds[::-1]

    @torch.no_grad()
    def wgan_gp_step(self, real, fake, eps, lam: float, weight: float = 1.0):
        """Loss mean D(fake) - mean D(real) + lam * mean((|grad_x D(mixed)| - 1)^2), mixed =
        eps * real + (1 - eps) * fake; ``weight`` times its gradients are written into the
        critic's ``.grad`` (overwritten, not accumulated). Returns the loss without ``weight``."""
        b, lins = real.shape[0], self.lins
        x = self._buf("x", 3 * b, real.shape[1], real)
        x[:b], x[b:2 * b] = real, fake
        torch.lerp(fake, real, eps, out=x[2 * b:])
        hs, out = self._forward(x, "c")
        s = self._buf("s", 3 * b, 1, x)
        s[:b], s[b:2 * b], s[2 * b:] = -weight / b, weight / b, 1.0
        ds = self._backward(hs, s, "c")
        gx = ds[0][2 * b:] @ lins[0].weight
        norm = torch.linalg.vector_norm(gx, dim=1, keepdim=True)
        loss = out[b:2 * b].mean() - out[:b].mean() + lam * (norm - 1).square().mean()
        hs[0][2 * b:] = gx.mul_((2 * lam * weight / b) * (norm - 1) / norm.clamp_min(1e-30))
        for i, lin in enumerate(lins):
            if i:  # u_i replaces the mixed rows of h_i (its ReLU mask is read first)
                u = self._buf("u", b, lin.in_features, x)
                torch.mm(hs[i - 1][2 * b:], lins[i - 1].weight.t(), out=u)
                _relu_grad(u, hs[i][2 * b:], 0, grad_input=hs[i][2 * b:])
            for p in lin.parameters():
                if p.grad is None or p.grad.shape != p.shape:
                    p.grad = torch.empty_like(p)
            torch.mm(ds[i].t(), hs[i], out=lin.weight.grad)
            torch.sum(ds[i][:2 * b], 0, out=lin.bias.grad)
        return loss

    @torch.no_grad()
    def input_grad(self, x, scale: float):
        """(scale * sum D(x), its gradient w.r.t. x); the critic's weights get no gradient."""
        hs, out = self._forward(x, "g")
        ds = self._backward(hs, self._buf("g", x.shape[0], 1, x).fill_(scale), "g")
        return scale * out.sum(), ds[0] @ self.lins[0].weight


_sigmoid_grad = torch.ops.aten.sigmoid_backward.grad_input
_tanh_grad = torch.ops.aten.tanh_backward.grad_input


_gate_orders: dict = {}


def _gate_order(H: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch's gate rows i, f, g, o reordered i, f, o, g, and the inverse permutation."""
    key = (H, str(device))
    if key not in _gate_orders:
        order = torch.cat([torch.arange(2 * H), torch.arange(3 * H, 4 * H), torch.arange(2 * H, 3 * H)]).to(device)
        _gate_orders[key] = (order, torch.argsort(order))
    return _gate_orders[key]


class _LSTMWork:
    """Work buffers of one _CondLSTM shape and the per-step views into them, made once: slicing
    tensors from Python costs about as much as the elementwise work of a step here."""

    def __init__(self, T: int, z: int, H: int, n: int, like: torch.Tensor, grad: bool):
        self.key = (T, z, H, n, like.dtype, like.device, grad)
        self.owner = None  # the forward whose activations the buffers hold
        H3, H4, H5 = 3 * H, 4 * H, 5 * H
        self.x = like.new_empty(T + 1, z + H, n)  # x[t] = [noise_t; h_{t-1}], x[T] holds h_T only
        self.e = like.new_empty(T, 6 * H, n)  # per step: i, f, o, g, c_{t-1}, tanh c_t
        self.x[0, z:] = 0
        self.e[0, H4:H5] = 0
        self.noise = self.x[:T, :z]
        self.hs = self.x[1:, z:]  # (T, H, n)
        c_last = like.new_empty(H, n)
        self.pq = like.new_empty(T, H5, n) if grad else None  # i', f', o', g' times partners; o tanh'(c)
        self.fwd = []
        for t in range(T):
            et = self.e[t]
            c_new = self.e[t + 1, H4:H5] if t + 1 < T else c_last
            pq = (self.pq[t, :H3], self.pq[t, H3:H4], self.pq[t, H4:]) if grad else None
            self.fwd.append((self.x[t], et[:H4], et[:H3], et[H3:H4], et[:H], et[H:2 * H], et[2 * H:H3],
                             et[H4:H5], c_new, et[H5:], et[H3:], self.x[t + 1, z:], pq))
        if grad:
            self.d_gates = like.new_empty(T, H4, n)
            self.dc = like.new_empty(H, n)
            self.dout = like.new_empty(T, H, n)
            self.bwd = []
            for t in range(T):
                p, dg = self.pq[t], self.d_gates[t]
                self.bwd.append((p[:2 * H].view(2, H, n), dg[:2 * H].view(2, H, n), p[2 * H:H3], dg[2 * H:H3],
                                 p[H3:H4], dg[H3:H4], p[H4:], self.e[t + 1, H:2 * H] if t + 1 < T else None,
                                 self.x[t].t(), dg, self.dout[t - 1] if t else None))

    def forward(self, base, w_zh, noise):
        self.noise.copy_(noise.permute(1, 2, 0))
        grad = self.pq is not None
        for t, (xt, pre, sig, g, i, f, o, c_prev, c_new, tc, partners, h, pq) in enumerate(self.fwd):
            torch.addmm(base, w_zh, xt, out=pre)
            sig.sigmoid_()
            g.tanh_()
            if t:
                torch.mul(f, c_prev, out=c_new).addcmul_(i, g)
            else:
                torch.mul(i, g, out=c_new)
            torch.tanh(c_new, out=tc)
            torch.mul(o, tc, out=h)
            if grad:
                _sigmoid_grad(partners, sig, grad_input=pq[0])  # [g, c_{t-1}, tanh c_t] s (1 - s)
                _tanh_grad(i, g, grad_input=pq[1])  # i (1 - g^2)
                _tanh_grad(o, tc, grad_input=pq[2])  # o (1 - tanh^2 c_t)
        return self.hs


_lstm_work: dict = {}


def _lstm_inputs(cond, w_ih, w_hh, b_ih, b_hh):
    """Weights with gate rows reordered i, f, o, g, stacked [W_cond | W_noise | W_hh], and the
    per-sequence part of the gate pre-activations, W_cond cond + b_ih + b_hh, as (4H, n)."""
    order, _ = _gate_order(w_hh.shape[1], w_hh.device)
    w = torch.cat([w_ih, w_hh], 1).index_select(0, order)
    c = cond.shape[1]
    return w, torch.addmm((b_ih + b_hh).index_select(0, order)[:, None], w[:, :c], cond.t())


def _cond_lstm(cond, noise, w_ih, w_hh, b_ih, b_hh, w_out, b_out):
    """_CondLSTM, or under no_grad its forward pass alone (fresh buffers, no derivatives kept)."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (cond, w_ih, w_hh, b_ih, b_hh, w_out, b_out)):
        return _CondLSTM.apply(cond, noise, w_ih, w_hh, b_ih, b_hh, w_out, b_out)
    n, T, z = noise.shape
    w, base = _lstm_inputs(cond, w_ih, w_hh, b_ih, b_hh)
    hs = _LSTMWork(T, z, w_hh.shape[1], n, cond, False).forward(base, w[:, cond.shape[1]:], noise)
    return torch.baddbmm(b_out[None, :, None], w_out.expand(T, *w_out.shape), hs).permute(2, 0, 1).contiguous()


class _CondLSTM(torch.autograd.Function):
    """One-layer LSTM with PyTorch's maths over inputs [cond, noise_t] whose ``cond`` part is the
    same at every step, followed by a linear output layer: returns (n, T, O) = h_t W_out^T + b_out.

    Written for a small batch on one CPU core, where operator count matters as much as FLOPs:
    the condition's projection (and both biases) is computed once per sequence; each step is one
    matrix product [W_z | W_hh] [noise_t; h_{t-1}] into a per-step buffer, the activations and
    the cell update; the forward pass also stores the activations' local derivatives (sigmoid'
    times its partner, etc.), so that backpropagation through time is 3 elementwise products,
    2 cell-state updates and 2 matrix products per step. Everything runs transposed, (rows,
    batch), with the gates reordered i, f, o, g, and each step's buffer laid out [i, f, o, g,
    c_{t-1}, tanh c_t], so that the sigmoid block and its partners (g, c_{t-1}, tanh c_t) are
    contiguous blocks. The output layer runs on all steps at once in that layout (no transposes
    of the hidden states). Work buffers and their per-step views are kept between calls
    (``_LSTMWork``); a backward pass whose buffers were reused by a later forward recomputes
    them. Results equal nn.LSTM + nn.Linear to float rounding (tests compare)."""

    @staticmethod
    def forward(ctx, cond, noise, w_ih, w_hh, b_ih, b_hh, w_out, b_out):
        n, T, z = noise.shape
        H = w_hh.shape[1]
        w, base = _lstm_inputs(cond, w_ih, w_hh, b_ih, b_hh)
        key = (T, z, H, n, cond.dtype, cond.device, True)
        work = _lstm_work.get(key)
        if work is None:
            if len(_lstm_work) > 8:
                _lstm_work.clear()
            work = _lstm_work[key] = _LSTMWork(T, z, H, n, cond, True)
        hs = work.forward(base, w[:, cond.shape[1]:], noise)
        work.owner = ctx.token = object()
        ctx.save_for_backward(cond, noise, w, base, w_out)
        ctx.work = work
        return torch.baddbmm(b_out[None, :, None], w_out.expand(T, *w_out.shape), hs).permute(2, 0, 1).contiguous()

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        cond, noise, w, base, w_out = ctx.saved_tensors
        work, c = ctx.work, cond.shape[1]
        z = noise.shape[2]
        if work.owner is not ctx.token:  # a later forward reused the buffers: recompute
            work = _LSTMWork(*work.key[:4], cond, True)
            work.forward(base, w[:, c:], noise)
        T, H4, n = work.d_gates.shape
        _, inv = _gate_order(H4 // 4, w.device)
        dy = dy.permute(1, 2, 0).contiguous()  # (T, O, n)
        d_wout = torch.bmm(dy, work.hs.transpose(1, 2)).sum(0)
        d_bout = dy.sum((0, 2))
        torch.matmul(w_out.t(), dy, out=work.dout)  # d loss / d h_t from the output layer
        w_hh_t = w[:, c + z:].t()
        d_wzh = w.new_zeros(H4, w.shape[1] - c)
        dc = work.dc
        dh = work.dout[T - 1]
        for t in range(T - 1, -1, -1):
            p_if, dg_if, p_o, dg_o, p_g, dg_g, p_c, f_next, xt_t, dg, dout_prev = work.bwd[t]
            if f_next is None:
                torch.mul(dh, p_c, out=dc)
            else:
                dc.mul_(f_next).addcmul_(dh, p_c)
            torch.mul(p_if, dc, out=dg_if)
            torch.mul(p_o, dh, out=dg_o)
            torch.mul(p_g, dc, out=dg_g)
            d_wzh.addmm_(dg, xt_t)
            if t:
                dh = torch.addmm(dout_prev, w_hh_t, dg)
        d_pre = work.d_gates.sum(0)  # (4H, n): the condition's projection and the biases
        d_bias = d_pre.sum(1).index_select(0, inv)
        d_w = torch.cat([d_pre @ cond, d_wzh], 1).index_select(0, inv)
        d_cond = (d_pre.t() @ w[:, :c]) if ctx.needs_input_grad[0] else None
        return d_cond, None, d_w[:, :c + z], d_w[:, c + z:], d_bias, d_bias, d_wout, d_bout


class _FusedAdam:
    """Adam through torch's fused kernel, called directly: the same update as
    ``torch.optim.Adam(fused=True)`` without its per-step Python overhead (about 0.25 ms a step
    here, 2% of a batch) or the ~1.7 s CPU import of torch._dynamo that its first use triggers."""

    def __init__(self, params, lr: float, beta1: float):
        self.params = list(params)
        self.lr, self.beta1 = lr, beta1
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.steps = [torch.zeros((), dtype=torch.float32, device=p.device) for p in self.params]

    def zero_grad(self, set_to_none: bool = True):
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self):
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not live:
            return
        pick = lambda xs: [xs[i] for i in live]  # noqa: E731
        steps = pick(self.steps)
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(pick(self.params), [self.params[i].grad for i in live], pick(self.exp_avg),
                           pick(self.exp_avg_sq), [], steps, lr=self.lr, beta1=self.beta1, beta2=0.999,
                           weight_decay=0.0, eps=1e-8, amsgrad=False, maximize=False)


def _adam(params, lr, beta1):
    params = list(params)
    if all(p.device.type == "cpu" and p.dtype == torch.float32 for p in params) and hasattr(torch, "_fused_adam_"):
        try:
            opt = _FusedAdam(params, lr, beta1)
            probe = torch.zeros(1, requires_grad=True)
            probe.grad = torch.zeros(1)
            _FusedAdam([probe], lr, beta1).step()  # the private kernel exists and takes these arguments
            return opt
        except (RuntimeError, TypeError, AttributeError):
            pass
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
            # a constant sequence sits at its own minimum (0), as in gretel's DGAN: for features
            # that mostly rest at a floor (fcc_mba's ping loss: 78% of sequences all zero) the
            # generator then learns one resting level instead of 0 here and 0.5 there
            normed = np.where(span[:, None, :] > 1e-8, (x - lo[:, None, :]) / np.maximum(span[:, None, :], 1e-8), 0.0)
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
        self.encoder = Encoder.fit(data, cfg.log_columns, cfg.feature_scaling, cfg.quantile_weight)
        T = int(cfg.max_length or data.lengths.max())
        steps = math.ceil(T / cfg.sample_len)
        flags = (cfg.gen_flags is True or cfg.gen_flags == "true"
                 or (cfg.gen_flags == "auto" and len(np.unique(np.minimum(data.lengths, T))) > 1))
        self.max_length = T
        self.net = _Networks(cfg, self.encoder, len(self.encoder.continuous_feature_slots()), steps, flags).to(self.device)
        if flags:
            # Freshly initialised, the end flag wins about half of the steps and the first win ends
            # the sequence: briefly trained models generated length-1 sequences (always, with no
            # attributes to vary the flag logits). "Continue" starts ahead by the log odds of a
            # training step continuing, so training starts from long sequences and shortens them.
            mean_len = float(np.minimum(data.lengths, T).mean())
            bias = self.net.feat_out.bias.view(cfg.sample_len, self.net.step_dim)
            with torch.no_grad():
                bias[:, -2] += math.log(max(mean_len - 1, 1.0))

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
        critics = [_MLPCritic(net.critic)] + ([_MLPCritic(net.aux_critic)] if net.aux_critic is not None else [])
        epochs = cfg.epochs if epochs is None else epochs
        hist = {"epoch_seconds": [], "epoch_cpu_seconds": [], "critic_loss": [], "generator_loss": []}
        net.train()
        # the critics' real inputs for every sequence, made once: a batch is two row gathers
        real_all, cond_all = (t.contiguous() for t in net.critic_inputs(attrs, addi, feats))
        if not 0.0 <= cfg.generator_ema < 1.0:
            raise NetdiffError(f"doppelganger.generator_ema must be in [0, 1), not {cfg.generator_ema}")
        # batch-norm running statistics are averaged with the weights they were measured under
        averaged = [t for m in net.generators() for t in list(m.parameters()) + list(m.buffers())
                    if t.is_floating_point()]
        ema = [t.detach().clone() for t in averaged] if cfg.generator_ema and epochs else None
        for _ in tqdm(range(epochs), desc="doppelganger", disable=progress is False or None, leave=False):
            t0, c0 = time.perf_counter(), time.process_time()
            perm = torch.randperm(n, generator=g, device=self.device)
            for b in range(batches):
                idx = perm[b * bs:(b + 1) * bs]
                real = (real_all.index_select(0, idx), cond_all.index_select(0, idx))
                for k in range(cfg.critic_steps):
                    # The last critic step's fake batch also serves the generator step (one
                    # generator pass per batch instead of two; the critic is updated in between).
                    last = k == cfg.critic_steps - 1
                    with torch.set_grad_enabled(last):
                        fake = net.critic_inputs(*net.generate(bs, g))
                    fake_d = tuple(t.detach() for t in fake)
                    if dp:
                        opt_d.zero_grad(set_to_none=True)
                        d_loss = dp.step(real, fake_d, g)
                    else:  # writes every critic gradient
                        d_loss = self._critic_step(critics, real, fake_d, g)
                    opt_d.step()
                opt_g.zero_grad(set_to_none=True)
                g_loss = self._generator_backward(critics, fake)
                opt_g.step()
                if ema is not None:
                    with torch.no_grad():
                        for e, t in zip(ema, averaged):
                            e.lerp_(t, 1.0 - cfg.generator_ema)
            hist["epoch_seconds"].append(time.perf_counter() - t0)
            hist["epoch_cpu_seconds"].append(time.process_time() - c0)
            hist["critic_loss"].append(float(d_loss.detach()))
            hist["generator_loss"].append(float(g_loss.detach()))
        if ema is not None:
            with torch.no_grad():
                for e, t in zip(ema, averaged):
                    t.copy_(e)
        if dp:
            hist["dp"] = dp.report(epochs * batches * cfg.critic_steps)
        self.history = hist
        return self

    def _critic_step(self, critics, real, fake, g):
        """Both critics' WGAN-GP loss; its gradients are left in the critics' ``.grad``."""
        lam, b = self.config.gp_lambda, real[0].shape[0]
        loss = critics[0].wgan_gp_step(real[0], fake[0], torch.rand(b, 1, generator=g, device=real[0].device), lam)
        if len(critics) > 1:
            w = self.config.aux_weight
            eps = torch.rand(b, 1, generator=g, device=real[0].device)
            loss = loss + w * critics[1].wgan_gp_step(real[1], fake[1], eps, lam, w)
        return loss

    def _generator_backward(self, critics, fake):
        """Generator loss -mean D(fake) - aux_weight * mean D_aux(fake): the critics' input
        gradients are computed by hand and pushed into the generators with one backward."""
        b = fake[0].shape[0]
        loss, grad = critics[0].input_grad(fake[0].detach(), -1.0 / b)
        # sum(fake * grad) has exactly ``grad`` as its gradient; a scalar backward also avoids
        # torch.autograd.backward's shape check for explicit gradients, whose first use
        # imports sympy (0.6 s of CPU)
        surrogate = (fake[0] * grad).sum()
        if len(critics) > 1:
            aux_loss, aux_grad = critics[1].input_grad(fake[1].detach(), -self.config.aux_weight / b)
            loss = loss + aux_loss
            surrogate = surrogate + (fake[1] * aux_grad).sum()
        surrogate.backward()
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
        # options added later: absent from a folder saved before them, they take the old behaviour
        self = cls({"bounded_range": False, "feature_scaling": "minmax", **meta["config"]})
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
