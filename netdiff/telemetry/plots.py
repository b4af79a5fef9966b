"""Figures of real vs synthetic telemetry: example series, autocorrelation, distributions."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from netdiff.io.atomic import atomic_path
from netdiff.telemetry.data import TelemetryData


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path, keep_suffix=True) as tmp:    # matplotlib picks the format by suffix
        fig.savefig(tmp, dpi=90)


def write_plots(real: TelemetryData, synth: TelemetryData, report: dict, out_dir, examples: int = 4,
                seed: int = 0) -> list[str]:
    """series.png, autocorrelation.png, distributions.png in ``out_dir``; returns their names."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    names = [f for f in real.feature_names if real.feature_kinds[f] == "continuous"]
    if not names:
        return []
    rng = np.random.default_rng(seed)
    written = []
    F = len(names)

    fig, axes = plt.subplots(F, 2, figsize=(10, 2.2 * F), squeeze=False, sharey="row")
    for j, f in enumerate(names):
        for col, (data, title) in enumerate(((real, "real"), (synth, "synthetic"))):
            ax = axes[j, col]
            k = data.feature_names.index(f)
            for i in rng.choice(data.n, size=min(examples, data.n), replace=False):
                ax.plot(data.features[i, : data.lengths[i], k], lw=1)
            ax.set_title(f"{title}: {f}", fontsize=9)
    fig.tight_layout()
    _save(fig, out_dir / "series.png")
    plt.close(fig)
    written.append("series.png")

    curves = report.get("autocorrelation")
    if curves:
        fig, axes = plt.subplots(1, F, figsize=(4 * F, 3), squeeze=False)
        for j, f in enumerate(names):
            ax = axes[0, j]
            lags = np.arange(1, len(curves["real"][j]) + 1)
            ax.plot(lags, curves["real"][j], label="real")
            ax.plot(lags, curves["synthetic"][j], label="synthetic")
            ax.set_title(f"autocorrelation: {f}", fontsize=9)
            ax.set_xlabel("lag")
            ax.legend(fontsize=8)
        fig.tight_layout()
        _save(fig, out_dir / "autocorrelation.png")
        plt.close(fig)
        written.append("autocorrelation.png")

    fig, axes = plt.subplots(1, F + 1, figsize=(4 * (F + 1), 3), squeeze=False)
    for j, f in enumerate(names):
        ax = axes[0, j]
        r = real.features[..., real.feature_names.index(f)][real.mask()]
        s = synth.features[..., synth.feature_names.index(f)][synth.mask()]
        bins = np.histogram_bin_edges(np.r_[r, s], bins=40)
        ax.hist(r, bins=bins, alpha=0.5, density=True, label="real")
        ax.hist(s, bins=bins, alpha=0.5, density=True, label="synthetic")
        ax.set_title(f, fontsize=9)
        ax.legend(fontsize=8)
    ax = axes[0, F]
    bins = np.histogram_bin_edges(np.r_[real.lengths, synth.lengths], bins=30)
    ax.hist(real.lengths, bins=bins, alpha=0.5, density=True, label="real")
    ax.hist(synth.lengths, bins=bins, alpha=0.5, density=True, label="synthetic")
    ax.set_title("sequence length", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, out_dir / "distributions.png")
    plt.close(fig)
    written.append("distributions.png")
    return written
