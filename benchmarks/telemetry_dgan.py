"""DoppelGANger on fcc_mba: netdiff vs gretel-synthetics' DGAN, seconds per epoch and fidelity.

gretel-synthetics is never a netdiff dependency (its recent licence is not open source); run its
side from a separate venv, e.g.

    python3 -m venv /tmp/gretel-venv
    echo /work/main/.venv/lib/python3.11/site-packages > /tmp/gretel-venv/lib/python3.11/site-packages/main.pth
    /tmp/gretel-venv/bin/pip install --no-deps gretel-synthetics==0.22.20 category-encoders statsmodels patsy

    .venv/bin/python benchmarks/telemetry_dgan.py --impl netdiff --epochs 200
    PYTHONPATH=. /tmp/gretel-venv/bin/python benchmarks/telemetry_dgan.py --impl gretel --epochs 200

Both use the same set-up (max length 56, sample_len 7, batch 100, feature and per-example scaling,
Adam 1e-3, one critic step per generator step, gretel's default sizes: noise 10, MLPs 3x100, LSTM
1x100, critics 5x200) and the same metrics, computed by netdiff on 600
generated sequences: M, autocorrelation MSE of traffic_byte_counter (lags 1-55), W1 of the
per-sequence mean of traffic_byte_counter, TVD of isp. The discriminative score (GRU) is added
with --discriminative. Prints one JSON line per run. Timing: `cpu_s_per_epoch` is the process's
CPU time for the whole run (model set-up, the ~1.7 s first-use import behind torch.optim.Adam,
training, generating 600 sequences) divided by the epochs; `cpu_s_per_epoch_median` is the median
CPU time of one epoch. Pin to one core (taskset -c 0) and keep OMP_NUM_THREADS=1.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "telemetry" / "fcc_mba" / "fcc_mba.csv"
FEATURES = ["traffic_byte_counter", "ping_loss_rate"]
ATTRIBUTES = ["isp", "technology", "state"]


def load_real():
    from netdiff.telemetry.data import ColumnRoles, load

    roles = ColumnRoles(rows_per_sequence=56, attributes=ATTRIBUTES, features=FEATURES, categorical=ATTRIBUTES)
    return load(DATA, roles)


def run_netdiff(real, epochs: int, seed: int):
    from netdiff.telemetry.doppelganger import DoppelGANger

    # noise sizes as gretel's defaults (netdiff's own default is the paper's 5)
    model = DoppelGANger({"epochs": epochs, "batch_size": 100, "sample_len": 7, "seed": seed,
                          "attribute_noise_dim": 10, "feature_noise_dim": 10})
    t0 = time.perf_counter()
    model.fit(real, progress=False)
    total = time.perf_counter() - t0
    synth = model.generate(600, seed=seed)
    return total, model.history["epoch_seconds"], model.history["epoch_cpu_seconds"], synth


def run_gretel(real, epochs: int, seed: int):
    import torch
    from gretel_synthetics.timeseries_dgan.config import DGANConfig, OutputType
    from gretel_synthetics.timeseries_dgan.dgan import DGAN

    from netdiff.telemetry.data import TelemetryData

    torch.manual_seed(seed)
    np.random.seed(seed)
    cfg = DGANConfig(max_sequence_len=56, sample_len=7, batch_size=100, epochs=epochs,
                     apply_feature_scaling=True, apply_example_scaling=True)
    model = DGAN(cfg)
    stamps = []

    def progress(info):  # called per batch; keep the first time each epoch is seen
        if not stamps or stamps[-1][0] != info.epoch:
            stamps.append((info.epoch, time.perf_counter(), time.process_time()))

    feats = real.features.astype(np.float32)
    attrs = real.attributes[ATTRIBUTES].to_numpy()
    t0 = time.perf_counter()
    model.train_numpy(features=feats, attributes=attrs, attribute_types=[OutputType.DISCRETE] * 3,
                      feature_types=[OutputType.CONTINUOUS] * 2, progress_callback=progress)
    total = time.perf_counter() - t0
    # stamps are taken after each epoch's first batch: differences are whole epochs
    epoch_seconds = list(np.diff([t for _, t, _ in stamps])) if len(stamps) > 1 else [total / epochs]
    epoch_cpu = list(np.diff([c for _, _, c in stamps])) if len(stamps) > 1 else [np.nan]
    attr_out, feat_out = model.generate_numpy(600)
    import pandas as pd

    feat_out = np.stack(feat_out).astype(np.float64)
    synth = TelemetryData(
        attributes=pd.DataFrame(attr_out, columns=ATTRIBUTES), features=feat_out,
        lengths=np.full(len(feat_out), feat_out.shape[1]), keys=[str(i) for i in range(len(feat_out))],
        attribute_names=ATTRIBUTES, feature_names=FEATURES, attribute_kinds=real.attribute_kinds,
        feature_kinds=real.feature_kinds)
    return total, epoch_seconds, epoch_cpu, synth


def fidelity(real, synth, discriminative: bool, seed: int) -> dict:
    from netdiff.telemetry import metrics

    f = metrics.fidelity(real, synth)
    out = {"m": f["m"], "acf_mse_traffic": f["autocorrelation_mse_per_feature"]["traffic_byte_counter"],
           "w1_seq_mean_traffic": f["w1"]["features_sequence_mean"]["traffic_byte_counter"],
           "tvd_isp": f["tvd"]["attributes"]["isp"], "cross_correlation": f["cross_correlation"]}
    if discriminative:
        names, r, s = metrics._aligned(real, synth)
        out["discriminative_score"] = metrics.discriminative_score(r, real.lengths, s, synth.lengths, seed, 500)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--impl", choices=["netdiff", "gretel"], default="netdiff")
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--discriminative", action="store_true")
    ap.add_argument("--json", type=Path, help="append the result line to this file")
    args = ap.parse_args(argv)
    if not DATA.is_file():
        sys.exit(f"fcc_mba.csv not found at {DATA}")
    import torch

    torch.set_num_threads(args.threads)
    real = load_real()
    run = run_netdiff if args.impl == "netdiff" else run_gretel
    cpu0 = time.process_time()
    total, per_epoch, per_epoch_cpu, synth = run(real, args.epochs, args.seed)
    cpu = time.process_time() - cpu0  # includes set-up and generating 600 sequences
    per_epoch = np.asarray(per_epoch, dtype=np.float64)
    result = {"impl": args.impl, "epochs": args.epochs, "seed": args.seed, "threads": args.threads,
              "train_seconds": round(total, 2), "s_per_epoch_mean": round(total / args.epochs, 4),
              "s_per_epoch_median": round(float(np.median(per_epoch)), 4),
              "cpu_s_per_epoch": round(cpu / args.epochs, 4),
              "cpu_s_per_epoch_median": round(float(np.median(per_epoch_cpu)), 4),
              "s_per_epoch_p10_p90": [round(float(np.percentile(per_epoch, q)), 4) for q in (10, 90)],
              "cpu_count": os.cpu_count(), "loadavg_1min": round(os.getloadavg()[0], 2),
              **{k: (round(v, 5) if isinstance(v, float) else v)
                 for k, v in fidelity(real, synth, args.discriminative, args.seed).items()}}
    line = json.dumps(result)
    print(line)
    if args.json:
        with open(args.json, "a") as fh:
            fh.write(line + "\n")


if __name__ == "__main__":
    main()
