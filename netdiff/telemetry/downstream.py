"""Downstream utility: train on synthetic, test on real (TSTR), against train on real (TRTR).

Real sequences are split 80/20 by sequence (seeded); both models of a task are tested on the
same held-out real sequences.

* forecasting: an LSTM reads ``window`` steps (24) of the continuous features and predicts the
  next step; MSE, RMSE and MAE on the real min-max scale, MAPE in original units (steps whose
  true value is 0 are left out of MAPE);
* anomaly detection: an LSTM autoencoder reconstructs windows; DBSCAN on the (standardised, log)
  reconstruction errors flags the outliers as anomalies (eps from the training windows). Real test windows get known anomalies
  injected (a spike of +0.5 on the scaled features at one step of 5% of the windows), so
  precision, recall and F1 are measurable.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from netdiff.errors import NetdiffError
from netdiff.telemetry.common import merge_config, pick_device, seeded
from netdiff.telemetry.data import TelemetryData


@dataclass
class DownstreamConfig:
    window: int = 24
    hidden: int = 32
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    max_windows: int = 4000
    test_fraction: float = 0.2
    anomaly_fraction: float = 0.05
    anomaly_size: float = 0.5
    dbscan_quantile: float = 0.99  # eps = this quantile of the training windows' k-NN distance
    dbscan_min_samples: int = 5
    seed: int = 0


def _scaled(data: TelemetryData, lo, span, names):
    idx = [data.feature_names.index(f) for f in names]
    x = (data.features[..., idx] - lo) / span
    return np.where(data.mask()[..., None], x, np.nan)


def _windows(x: np.ndarray, lengths: np.ndarray, size: int, cap: int, rng) -> np.ndarray:
    """Every full window of ``size`` steps, at most ``cap`` of them (random subset)."""
    seq, start = [], []
    for i, L in enumerate(lengths):
        s = np.arange(0, int(L) - size + 1)
        seq.append(np.full(len(s), i))
        start.append(s)
    seq, start = np.concatenate(seq), np.concatenate(start)
    if len(seq) > cap:
        keep = rng.choice(len(seq), cap, replace=False)
        seq, start = seq[keep], start[keep]
    return x[seq[:, None], start[:, None] + np.arange(size)[None, :]].astype(np.float32)


class _Forecaster(nn.Module):
    def __init__(self, f, h):
        super().__init__()
        self.lstm, self.head = nn.LSTM(f, h, batch_first=True), nn.Linear(h, f)

    def forward(self, x):
        return self.head(self.lstm(x)[0][:, -1])


class _AutoEncoder(nn.Module):
    def __init__(self, f, h):
        super().__init__()
        self.enc, self.dec, self.head = nn.LSTM(f, h, batch_first=True), nn.LSTM(h, h, batch_first=True), nn.Linear(h, f)

    def forward(self, x):
        z = self.enc(x)[0][:, -1:].expand(-1, x.shape[1], -1)
        return self.head(self.dec(z)[0])


def _train(model, inputs, targets, cfg, g, dev):
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    X, Y = torch.from_numpy(inputs).to(dev), torch.from_numpy(targets).to(dev)
    n = len(X)
    for _ in range(cfg.epochs):
        perm = torch.randperm(n, generator=g, device=dev)
        for b in range(0, n, cfg.batch_size):
            idx = perm[b:b + cfg.batch_size]
            loss = ((model(X[idx]) - Y[idx]) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model


def _forecast_scores(pred, true, lo, span):
    err = pred - true
    mse = float((err ** 2).mean())
    y, p = true * span + lo, pred * span + lo
    nz = np.abs(y) > 1e-12
    return {"mse": mse, "rmse": float(np.sqrt(mse)), "mae": float(np.abs(err).mean()),
            "mape": float(np.mean(np.abs((p[nz] - y[nz]) / y[nz])) * 100) if nz.any() else None}


def _flag(train_errors, errors, cfg):
    """(flagged windows, eps): DBSCAN on log reconstruction errors, standardised and with eps taken from the detector's
    own training windows (the 99th percentile of their k-nearest-neighbour distance), so no
    test label informs the threshold. Anomalies: outside the most populous cluster and above its
    median error (a dense group of anomalies forms its own cluster, still not the normal one)."""
    from sklearn.cluster import DBSCAN
    from sklearn.neighbors import NearestNeighbors

    k = cfg.dbscan_min_samples
    lt = np.log(train_errors + 1e-12)
    mu, sd = lt.mean(), lt.std() + 1e-12
    zt = ((lt - mu) / sd)[:, None]
    dist = NearestNeighbors(n_neighbors=min(k, len(zt))).fit(zt).kneighbors(zt)[0][:, -1]
    eps = max(float(np.quantile(dist, cfg.dbscan_quantile)), 1e-6)
    z = (np.log(errors + 1e-12) - mu) / sd
    found = DBSCAN(eps=eps, min_samples=k).fit_predict(z[:, None])
    ids, counts = np.unique(found[found >= 0], return_counts=True)
    if len(ids):
        main = ids[np.argmax(counts)]
        flagged = (found != main) & (z > np.median(z[found == main]))
    else:
        flagged = np.zeros(len(z), bool)
    return flagged, eps


def _anomaly_scores(train_errors, errors, labels, cfg):
    flagged, eps = _flag(train_errors, errors, cfg)
    tp = int((flagged & labels).sum())
    precision = tp / max(int(flagged.sum()), 1)
    recall = tp / max(int(labels.sum()), 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "flagged": int(flagged.sum()), "eps": eps}


def _trace_windows(seq: np.ndarray, length: int, size: int) -> tuple[np.ndarray, list[int]]:
    """Every window of ``size`` steps of one sequence ending in its last ``TRACE_STEPS`` steps
    (stride 1), and the step each ends at."""
    start = np.arange(max(0, length - size - TRACE_STEPS + 1), length - size + 1)
    return seq[start[:, None] + np.arange(size)[None, :]].astype(np.float32), (start + size - 1).tolist()


TRACE_STEPS = 400         # steps of the held-out sequence the traces show


def evaluate(real: TelemetryData, synth: TelemetryData, config: DownstreamConfig | dict | None = None) -> dict:
    """Forecaster and anomaly detector trained on synthetic and on real (training) sequences,
    tested on held-out real ones: their scores, and ``trace``: on the longest held-out sequence
    (its last ``TRACE_STEPS`` steps, original units), the actual series, each forecaster's
    one-step predictions, and where each detector flagged a window of it with spikes injected."""
    cfg = config if isinstance(config, DownstreamConfig) else merge_config(DownstreamConfig, config)
    names = [f for f in real.feature_names if real.feature_kinds[f] == "continuous"]
    if not names:
        raise NetdiffError("downstream tasks need continuous features")
    W = cfg.window
    if real.lengths.max() <= W:
        raise NetdiffError(f"downstream tasks need real sequences longer than the window ({W} steps)")
    dev = pick_device()
    rng = np.random.default_rng(cfg.seed)
    r_all = real.features[..., [real.feature_names.index(f) for f in names]][real.mask()]
    lo, hi = r_all.min(0), r_all.max(0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)

    order = rng.permutation(real.n)
    n_test = max(1, int(round(real.n * cfg.test_fraction)))
    test_i, train_i = order[:n_test], order[n_test:]
    if len(train_i) == 0:
        raise NetdiffError("too few real sequences to split into train and test")
    r = _scaled(real, lo, span, names)
    s = _scaled(synth, lo, span, names)
    sets = {"synthetic": (s, synth.lengths), "real": (r[train_i], real.lengths[train_i])}
    test_x, test_len = r[test_i], real.lengths[test_i]
    if test_len.max() <= W:
        raise NetdiffError("held-out real sequences are shorter than the window")
    out = {"window": W, "features": names, "forecast": {}, "anomaly": {}}
    j = int(np.argmax(test_len))
    trace_x, steps = _trace_windows(test_x[j], int(test_len[j]), W + 1)
    trace = {"feature_names": names, "step": steps,
             "actual": (trace_x[:, -1] * span + lo).T.tolist(), "predicted": {}, "flagged": {}}
    out["trace"] = trace

    # forecasting: windows of W + 1 (input W, target the last)
    test_w = _windows(test_x, test_len, W + 1, cfg.max_windows, rng)
    for name, (x, lengths) in sets.items():
        if lengths.max() <= W:
            out["forecast"][name] = None
            continue
        g = seeded(cfg.seed, dev)
        win = _windows(x, lengths, W + 1, cfg.max_windows, rng)
        model = _train(_Forecaster(len(names), cfg.hidden).to(dev), win[:, :-1], win[:, -1], cfg, g, dev)
        with torch.no_grad():
            pred = model(torch.from_numpy(test_w[:, :-1]).to(dev)).cpu().numpy()
        out["forecast"][name] = _forecast_scores(pred.astype(np.float64), test_w[:, -1].astype(np.float64), lo, span)
        with torch.no_grad():
            tp = model(torch.from_numpy(trace_x[:, :-1]).to(dev)).cpu().numpy()
        trace["predicted"][name] = (tp * span + lo).T.tolist()

    # anomaly detection on windows of W with injected spikes
    test_a = _windows(test_x, test_len, W, cfg.max_windows, rng)
    labels = rng.random(len(test_a)) < cfg.anomaly_fraction
    spiked = test_a.copy()
    at = rng.integers(0, W, size=len(test_a))
    spiked[np.flatnonzero(labels), at[labels]] += cfg.anomaly_size
    # the trace: windows of W ending at each traced step, spikes at a few of its steps
    trace_a, a_steps = _trace_windows(test_x[j], int(test_len[j]), W)
    spikes = np.flatnonzero(rng.random(len(trace_a)) < cfg.anomaly_fraction)
    trace_spiked = trace_a.copy()
    for s in spikes:                      # a spike at step s shows in every window holding it
        for k in range(s, min(s + W, len(trace_a))):
            trace_spiked[k, W - 1 - (k - s)] += cfg.anomaly_size
    trace["anomaly_step"] = a_steps
    trace["anomaly_series"] = (trace_spiked[:, -1] * span + lo).T.tolist()
    trace["injected"] = [a_steps[s] for s in spikes]
    for name, (x, lengths) in sets.items():
        if lengths.max() < W:  # e.g. a synthetic set of short sequences: nothing to train on
            out["anomaly"][name] = None
            continue
        g = seeded(cfg.seed, dev)
        win = _windows(x, lengths, W, cfg.max_windows, rng)
        model = _train(_AutoEncoder(len(names), cfg.hidden).to(dev), win, win, cfg, g, dev)
        with torch.no_grad():
            rec = model(torch.from_numpy(spiked).to(dev)).cpu().numpy()
            rec_train = model(torch.from_numpy(win).to(dev)).cpu().numpy()
        errors = ((rec - spiked) ** 2).mean(axis=(1, 2))
        train_errors = ((rec_train - win) ** 2).mean(axis=(1, 2))
        out["anomaly"][name] = _anomaly_scores(train_errors, errors, labels, cfg)
        with torch.no_grad():
            rec_trace = model(torch.from_numpy(trace_spiked).to(dev)).cpu().numpy()
        flagged, _ = _flag(train_errors, ((rec_trace - trace_spiked) ** 2).mean(axis=(1, 2)), cfg)
        trace["flagged"][name] = [a_steps[k] for k in np.flatnonzero(flagged)]
    out["anomaly"]["injected"] = int(labels.sum())
    out["test_sequences"] = int(n_test)
    return out
