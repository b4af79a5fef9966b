"""A GRU layer with backpropagation through time written out, for TimeGAN on CPU.

torch's CPU GRU records about ten autograd nodes per time step, and replaying them is most of
TimeGAN's training time at its small sizes (hidden 24, batch 128: per-op overhead, not FLOPs).
Here the input projection of all steps is one product, a forward step is ``addmm`` plus five
elementwise calls, and the forward pass keeps each step's local derivatives so that a backward
step is one broadcast product, one ``addmm`` and an add; the weight gradients are one product
each over all steps. Same equations and parameters as ``torch.nn.GRU`` (gate order r, z, n):

    r = s(W_ir x + b_ir + W_hr h + b_hr)      z = s(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))      h' = n + z * (h - n)

Results equal ``torch.nn.GRU``'s to float rounding (tests/telemetry compare values and gradients).
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable


def _forward(x, w_ih, w_hh, b_ih, b_hh, keep: bool):
    """x (T, B, I) time-major -> (outputs (T, B, H), saved or None)."""
    T, B, _ = x.shape
    H = w_hh.shape[1]
    gi = torch.addmm(b_ih, x.reshape(T * B, -1), w_ih.t()).view(T, B, 3 * H)
    out = x.new_empty(T + 1, B, H)  # out[0] = h_0 = 0, out[t + 1] = h_t
    out[0].zero_()
    gh, rz, n = x.new_empty(T, B, 3 * H), x.new_empty(T, B, 2 * H), x.new_empty(T, B, H)
    # per-step views made once (indexing from Python costs as much as the arithmetic)
    gi_rz, gi_n = gi[..., : 2 * H].unbind(0), gi[..., 2 * H:].unbind(0)
    gh_t, gh_rz, gh_n = gh.unbind(0), gh[..., : 2 * H].unbind(0), gh[..., 2 * H:].unbind(0)
    rz_t, r_t, z_t, n_t, h_t = rz.unbind(0), rz[..., :H].unbind(0), rz[..., H:].unbind(0), n.unbind(0), out.unbind(0)
    w_hh_t = w_hh.t()
    for t in range(T):
        torch.addmm(b_hh, h_t[t], w_hh_t, out=gh_t[t])
        torch.sigmoid(torch.add(gi_rz[t], gh_rz[t]), out=rz_t[t])
        torch.tanh(torch.addcmul(gi_n[t], r_t[t], gh_n[t]), out=n_t[t])
        torch.addcmul(n_t[t], z_t[t], h_t[t] - n_t[t], out=h_t[t + 1])
    if not keep:
        return out[1:], None
    # local derivatives of every step at once: d gates_pre / d h_t, laid out [r, z, n]
    h_prev = out[:-1]
    r, z = rz[..., :H], rz[..., H:]
    a = (1 - z) * (1 - n * n)  # dn_pre / dh
    p = torch.cat([a * gh[..., 2 * H:] * r * (1 - r), (h_prev - n) * z * (1 - z), a], dim=2)  # d gi / dh
    q = torch.cat([p[..., : 2 * H], a * r], dim=2)  # d gh / dh
    return out[1:], (p, q, z.contiguous(), h_prev)


class _GRULayer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w_ih, w_hh, b_ih, b_hh):
        out, saved = _forward(x, w_ih, w_hh, b_ih, b_hh, keep=True)
        ctx.save_for_backward(x, w_ih, w_hh, *saved)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out):
        x, w_ih, w_hh, p, q, z, h_prev = ctx.saved_tensors
        T, B, H = d_out.shape
        d_gi, d_gh = p.new_empty(T, B, 3, H), p.new_empty(T, B, 3, H)
        d_out = d_out.contiguous()
        dh = d_out.new_zeros(B, H)
        do_t, p_t, q_t, z_t = d_out.unbind(0), p.view(T, B, 3, H).unbind(0), q.view(T, B, 3, H).unbind(0), z.unbind(0)
        dgi_t, dgh_t, dgh2_t = d_gi.unbind(0), d_gh.unbind(0), d_gh.view(T, B, 3 * H).unbind(0)
        for t in range(T - 1, -1, -1):
            dh = dh + do_t[t]
            g3 = dh.unsqueeze(1)
            torch.mul(g3, p_t[t], out=dgi_t[t])
            torch.mul(g3, q_t[t], out=dgh_t[t])
            dh = torch.addmm(dh * z_t[t], dgh2_t[t], w_hh)
        gi2, gh2 = d_gi.view(T * B, 3 * H), d_gh.view(T * B, 3 * H)
        need = ctx.needs_input_grad
        dx = (gi2 @ w_ih).view(T, B, -1) if need[0] else None
        if not any(need[1:]):  # frozen layer: gradients for the input only
            return dx, None, None, None, None
        dw_ih = gi2.t() @ x.reshape(T * B, -1)
        dw_hh = gh2.t() @ h_prev.reshape(T * B, H)
        return dx, dw_ih, dw_hh, gi2.sum(0), gh2.sum(0)


def gru(module: torch.nn.GRU, x: torch.Tensor) -> torch.Tensor:
    """``module(x)[0]`` for a unidirectional, batch-first ``nn.GRU`` with biases, computed here."""
    y = x.transpose(0, 1).contiguous()
    for k in range(module.num_layers):
        w = [getattr(module, f"{n}_l{k}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        if torch.is_grad_enabled() and (y.requires_grad or any(p.requires_grad for p in w)):
            y = _GRULayer.apply(y, *w)
        else:
            y = _forward(y, *w, keep=False)[0]
    return y.transpose(0, 1)


def supported(module) -> bool:
    return (isinstance(module, torch.nn.GRU) and module.batch_first and not module.bidirectional
            and module.bias and module.weight_hh_l0.device.type == "cpu")
