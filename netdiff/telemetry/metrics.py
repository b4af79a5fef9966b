"""Fidelity of synthetic telemetry against real telemetry.

All distances are computed on the real data's min-max scale (so features with large units do
not dominate), over valid time steps only (variable lengths are respected):

* ``m``: the TimeGAN telemetry tutorial's model-selection metric (its Eq. 1): sum over continuous
  features of |IQR(real) - IQR(synth)| + |median(real) - median(synth)|, on data min-max scaled
  by the real rows, the statistics over the rows of each file as they stand (every real row
  once; every step of every generated sequence or window, flattened, as the tutorial takes the
  generator's windows);
* ``m_window_weighted``: the same statistics over the windows the models train on (a real row
  counts once per window that covers it; equal to ``m`` when no windows are cut);
* ``autocorrelation_mse``: per feature, the mean over sequences of the autocorrelation at lags
  1..K, real vs synthetic, squared difference averaged over lags (DoppelGANger);
* ``w1``: Wasserstein-1 of continuous attributes, of feature values, of per-sequence feature
  means and of lengths (normalised by the real maximum length); categorical attributes and
  features get the total variation distance in ``tvd``;
* ``cross_correlation``: mean |corr(real) - corr(synth)| over feature pairs;
* ``discriminative_score``: |accuracy - 0.5| of a GRU classifier real vs synthetic on held-out
  sequences (TimeGAN), its inputs standardised on the real statistics; ``discriminative`` gives
  the held-out size and the 95% interval, and the score is None when there are too few
  sequences for a held-out test (``MIN_TEST_PER_CLASS``) instead of a meaningless 0 or 0.5;
* ``predictive_score``: MAE on real sequences of a GRU trained on synthetic ones to predict the
  next step (TimeGAN; lower is better, compare with ``predictive_score_real``, trained on real).
"""
from __future__ import annotations

import numpy as np
from scipy.stats import wasserstein_distance

from netdiff.errors import NetdiffError
from netdiff.telemetry.data import TelemetryData

MIN_TEST_PER_CLASS = 10  # held-out windows per class below which the classifier says nothing


def _check_pair(real: TelemetryData, synth: TelemetryData) -> None:
    for kind, a, b in (("feature", real.feature_names, synth.feature_names),
                       ("attribute", real.attribute_names, synth.attribute_names)):
        missing = [c for c in a if c not in b]
        if missing:
            raise NetdiffError(f"synthetic data lacks {kind} column(s): {', '.join(missing)}")


def _aligned(real: TelemetryData, synth: TelemetryData):
    """Continuous features of both sets scaled by the real min/max: (names, real, synth) arrays
    of shape (n, T, F) with NaN after each length."""
    names = [f for f in real.feature_names if real.feature_kinds[f] == "continuous"]
    ri = [real.feature_names.index(f) for f in names]
    si = [synth.feature_names.index(f) for f in names]
    r = np.where(real.mask()[..., None], real.features[..., ri], np.nan)
    s = np.where(synth.mask()[..., None], synth.features[..., si], np.nan).astype(np.float64)
    lo, hi = np.nanmin(r, axis=(0, 1)), np.nanmax(r, axis=(0, 1))
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    return names, (r - lo) / span, (s - lo) / span


def m_metric(real_scaled: np.ndarray, synth_scaled: np.ndarray) -> tuple[float, dict]:
    per = []
    for j in range(real_scaled.shape[-1]):
        r = real_scaled[..., j][~np.isnan(real_scaled[..., j])]
        s = synth_scaled[..., j][~np.isnan(synth_scaled[..., j])]
        qr, qs = np.quantile(r, [0.25, 0.5, 0.75]), np.quantile(s, [0.25, 0.5, 0.75])
        per.append(abs((qr[2] - qr[0]) - (qs[2] - qs[0])) + abs(qr[1] - qs[1]))
    return float(sum(per)), [float(v) for v in per]


def autocorrelation(x: np.ndarray, max_lag: int) -> np.ndarray:
    """Mean over sequences of the sample autocorrelation at lags 1..max_lag; x (n, T) NaN-padded.
    Constant sequences contribute nothing (their autocorrelation is undefined)."""
    valid = ~np.isnan(x)
    cnt = valid.sum(1)
    mean = np.nansum(x, 1) / np.maximum(cnt, 1)
    d = np.where(valid, x - mean[:, None], 0.0)
    var = (d * d).sum(1)
    out = np.full(max_lag, np.nan)
    ok = var > 1e-12
    if not ok.any():
        return np.zeros(max_lag)
    for k in range(1, max_lag + 1):
        c = (d[:, :-k] * d[:, k:]).sum(1)
        out[k - 1] = np.mean(c[ok] / var[ok])
    return out


def autocorrelation_mse(real_scaled, synth_scaled, max_lag: int | None = None) -> tuple[float, list, dict]:
    T = min(real_scaled.shape[1], synth_scaled.shape[1])
    max_lag = max(1, min(max_lag or T - 1, T - 1))
    per, curves = [], {"real": [], "synthetic": []}
    for j in range(real_scaled.shape[-1]):
        a, b = autocorrelation(real_scaled[..., j], max_lag), autocorrelation(synth_scaled[..., j], max_lag)
        a, b = np.nan_to_num(a), np.nan_to_num(b)
        per.append(float(np.mean((a - b) ** 2)))
        curves["real"].append(a.tolist())
        curves["synthetic"].append(b.tolist())
    return float(np.mean(per)), per, curves


def _tvd(a, b) -> float:
    import pandas as pd

    pa = pd.Series(a).astype(str).value_counts(normalize=True)
    pb = pd.Series(b).astype(str).value_counts(normalize=True)
    keys = pa.index.union(pb.index)
    return float(0.5 * np.abs(pa.reindex(keys, fill_value=0) - pb.reindex(keys, fill_value=0)).sum())


def cross_correlation(real_scaled, synth_scaled) -> float | None:
    F = real_scaled.shape[-1]
    if F < 2:
        return None
    def corr(x):
        flat = x.reshape(-1, F)
        flat = flat[~np.isnan(flat).any(1)]
        with np.errstate(invalid="ignore", divide="ignore"):
            c = np.corrcoef(flat, rowvar=False)
        return np.nan_to_num(c)
    iu = np.triu_indices(F, 1)
    return float(np.mean(np.abs(corr(real_scaled)[iu] - corr(synth_scaled)[iu])))


def fidelity(real: TelemetryData, synth: TelemetryData, max_lag: int | None = None,
             real_rows: TelemetryData | None = None, synth_rows: TelemetryData | None = None) -> dict:
    """The distribution metrics (no model training): m, m_window_weighted, autocorrelation_mse,
    w1, tvd, cross_correlation. ``real_rows`` / ``synth_rows``: the data before windows were
    cut (default: ``real`` / ``synth``), for the tutorial's ``m``."""
    _check_pair(real, synth)
    names, r, s = _aligned(real, synth)
    out: dict = {"features": names}
    if names:
        _, rr, ss = _aligned(real_rows if real_rows is not None else real,
                             synth_rows if synth_rows is not None else synth)
        out["m"], per_m = m_metric(rr, ss)
        out["m_per_feature"] = dict(zip(names, per_m))
        out["m_window_weighted"], per_w = m_metric(r, s)
        out["m_window_weighted_per_feature"] = dict(zip(names, per_w))
        out["autocorrelation_mse"], per_acf, curves = autocorrelation_mse(r, s, max_lag)
        out["autocorrelation_mse_per_feature"] = dict(zip(names, per_acf))
        out["autocorrelation"] = curves
        out["cross_correlation"] = cross_correlation(r, s)
    w1 = {"attributes": {}, "features": {}, "features_sequence_mean": {}}
    tvd = {"attributes": {}, "features": {}}
    for j, f in enumerate(names):
        rv, sv = r[..., j], s[..., j]
        w1["features"][f] = float(wasserstein_distance(rv[~np.isnan(rv)], sv[~np.isnan(sv)]))
        w1["features_sequence_mean"][f] = float(wasserstein_distance(np.nanmean(rv, 1), np.nanmean(sv, 1)))
    for f in real.feature_names:
        if real.feature_kinds[f] == "categorical":
            rc = real.features[..., real.feature_names.index(f)][real.mask()]
            sc = synth.features[..., synth.feature_names.index(f)][synth.mask()]
            labels_r = np.asarray(real.feature_categories[f], dtype=object)[rc.astype(int)]
            cats_s = synth.feature_categories.get(f, real.feature_categories[f])
            labels_s = np.asarray(cats_s, dtype=object)[np.clip(sc.astype(int), 0, len(cats_s) - 1)]
            tvd["features"][f] = _tvd(labels_r, labels_s)
    for a in real.attribute_names:
        if real.attribute_kinds[a] == "categorical":
            tvd["attributes"][a] = _tvd(real.attributes[a].to_numpy(), synth.attributes[a].to_numpy())
        else:
            rv = real.attributes[a].to_numpy(np.float64)
            sv = synth.attributes[a].to_numpy(np.float64)
            span = (rv.max() - rv.min()) or 1.0
            w1["attributes"][a] = float(wasserstein_distance(rv / span, sv / span))
    w1["lengths"] = float(wasserstein_distance(real.lengths / real.lengths.max(), synth.lengths / real.lengths.max()))
    out["w1"], out["tvd"] = w1, tvd
    return out


# ------------------------------------------------------------------ post-hoc GRU models
def _padded(x: np.ndarray) -> np.ndarray:
    return np.nan_to_num(x, nan=0.0).astype(np.float32)


def discriminative_score(real_scaled, real_len, synth_scaled, synth_len, seed: int = 0,
                         iterations: int = 300, batch_size: int = 128, hidden: int | None = None) -> float:
    """|accuracy - 0.5| of a one-layer GRU classifier on a held-out 20% (balanced classes)."""
    return discriminative(real_scaled, real_len, synth_scaled, synth_len, seed, iterations, batch_size, hidden,
                          min_test=1)["score"]


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson interval of a proportion."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    mid, half = p + z * z / (2 * n), z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return float((mid - half) / (1 + z * z / n)), float((mid + half) / (1 + z * z / n))


def discriminative(real_scaled, real_len, synth_scaled, synth_len, seed: int = 0, iterations: int = 300,
                   batch_size: int = 128, hidden: int | None = None, min_test: int = MIN_TEST_PER_CLASS) -> dict:
    """The discriminative score with its confidence: ``score`` (None with a ``note`` when fewer
    than ``min_test`` sequences per class would be held out), ``accuracy``, ``accuracy_ci95``
    (Wilson), ``score_ci95`` and ``test_sequences``."""
    import torch
    from torch import nn

    from netdiff.telemetry.common import pick_device, seeded

    dev = pick_device()
    g = seeded(seed, dev)
    rng = np.random.default_rng(seed)
    n = min(len(real_len), len(synth_len))
    k = n // 5
    if k < min_test:
        return {"score": None, "test_sequences": 2 * k,
                "note": f"too few sequences for a held-out test ({len(real_len)} real, {len(synth_len)} synthetic; "
                        f"needs {5 * min_test} per side for {min_test} held out per class): no score"}
    ri = rng.permutation(len(real_len))[:n]
    si = rng.permutation(len(synth_len))[:n]
    T = max(real_scaled.shape[1], synth_scaled.shape[1])
    F = real_scaled.shape[-1]
    # standardise on the real statistics: min-max scaled counters that span decades sit near 0,
    # where a small GRU learns too slowly to tell anything apart
    mu, sd = np.nanmean(real_scaled, axis=(0, 1)), np.nanstd(real_scaled, axis=(0, 1))
    sd = np.where(sd > 1e-12, sd, 1.0)
    real_scaled, synth_scaled = (real_scaled - mu) / sd, (synth_scaled - mu) / sd
    X = np.zeros((2 * n, T, F), np.float32)
    X[:n, : real_scaled.shape[1]] = _padded(real_scaled[ri])
    X[n:, : synth_scaled.shape[1]] = _padded(synth_scaled[si])
    L = np.concatenate([real_len[ri], synth_len[si]]).clip(1, T)
    y = np.r_[np.ones(n), np.zeros(n)].astype(np.float32)
    # split each class 80/20 so the test set stays balanced
    test = np.zeros(2 * n, bool)
    test[rng.permutation(n)[:k]] = True
    test[n + rng.permutation(n)[:k]] = True

    hidden = hidden or max(16, F)
    gru, head = nn.GRU(F, hidden, batch_first=True).to(dev), nn.Linear(hidden, 1).to(dev)
    opt = torch.optim.Adam(list(gru.parameters()) + list(head.parameters()), lr=5e-3)
    Xt, Lt, yt = torch.from_numpy(X).to(dev), torch.from_numpy(L).to(dev), torch.from_numpy(y).to(dev)
    tr = torch.from_numpy(np.flatnonzero(~test)).to(dev)

    def logits(idx):
        h, _ = gru(Xt[idx])
        last = h[torch.arange(len(idx), device=dev), Lt[idx] - 1]
        return head(last).squeeze(1)

    loss_fn = nn.BCEWithLogitsLoss()
    for _ in range(iterations):
        idx = tr[torch.randint(len(tr), (min(batch_size, len(tr)),), generator=g, device=dev)]
        loss = loss_fn(logits(idx), yt[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        te = torch.from_numpy(np.flatnonzero(test)).to(dev)
        right = int(((logits(te) > 0).float() == yt[te]).sum().item())
    acc = right / len(te)
    lo, hi = wilson(right, len(te))
    # |acc - 0.5| over the accuracy interval: 0 when the interval holds 0.5
    s_lo = 0.0 if lo <= 0.5 <= hi else min(abs(lo - 0.5), abs(hi - 0.5))
    return {"score": float(abs(acc - 0.5)), "accuracy": float(acc), "accuracy_ci95": [lo, hi],
            "score_ci95": [float(s_lo), float(max(abs(lo - 0.5), abs(hi - 0.5)))], "test_sequences": int(len(te))}


def predictive_score(train_scaled, train_len, test_scaled, test_len, seed: int = 0,
                     iterations: int = 300, batch_size: int = 128, hidden: int | None = None) -> float:
    """MAE on ``test`` of a GRU trained on ``train`` to predict each next step (all features)."""
    import torch
    from torch import nn

    from netdiff.telemetry.common import pick_device, seeded

    dev = pick_device()
    g = seeded(seed, dev)
    F = train_scaled.shape[-1]
    hidden = hidden or max(16, F)
    gru, head = nn.GRU(F, hidden, batch_first=True).to(dev), nn.Linear(hidden, F).to(dev)
    opt = torch.optim.Adam(list(gru.parameters()) + list(head.parameters()), lr=5e-3)

    def tensors(x, lengths):
        x = torch.from_numpy(_padded(x)).to(dev)
        T = x.shape[1]
        mask = torch.arange(T - 1, device=dev)[None, :] < torch.as_tensor(lengths - 1, device=dev)[:, None]
        return x[:, :-1], x[:, 1:], mask.float()

    Xa, Ya, Ma = tensors(train_scaled, train_len)
    if Xa.shape[1] == 0:
        raise NetdiffError("predictive score needs sequences of at least 2 steps")
    for _ in range(iterations):
        idx = torch.randint(len(Xa), (min(batch_size, len(Xa)),), generator=g, device=dev)
        h, _ = gru(Xa[idx])
        err = (head(h) - Ya[idx]).abs().mean(-1) * Ma[idx]
        loss = err.sum() / Ma[idx].sum().clamp(min=1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    Xb, Yb, Mb = tensors(test_scaled, test_len)
    with torch.no_grad():
        h, _ = gru(Xb)
        err = (head(h) - Yb).abs().mean(-1) * Mb
        return float(err.sum() / Mb.sum().clamp(min=1))


def evaluate(real: TelemetryData, synth: TelemetryData, seed: int = 0, iterations: int = 300,
             max_lag: int | None = None, real_rows: TelemetryData | None = None,
             synth_rows: TelemetryData | None = None) -> dict:
    """Every metric; the GRU scores are skipped (None) when there are no continuous features."""
    out = fidelity(real, synth, max_lag, real_rows, synth_rows)
    names, r, s = _aligned(real, synth)
    if names:
        out["discriminative"] = discriminative(r, real.lengths, s, synth.lengths, seed, iterations)
        out["discriminative_score"] = out["discriminative"]["score"]
        out["predictive_score"] = predictive_score(s, synth.lengths, r, real.lengths, seed, iterations)
        # reference: the same predictor trained on real (the floor a synthetic set can approach)
        out["predictive_score_real"] = predictive_score(r, real.lengths, r, real.lengths, seed, iterations)
    else:
        out["discriminative_score"] = out["predictive_score"] = None
    out["counts"] = {"real": real.n, "synthetic": synth.n}
    return out
