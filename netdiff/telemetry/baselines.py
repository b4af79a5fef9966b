"""Calibration baselines.

* ``ARBaseline``: a vector autoregressive model AR(p) on the scaled features (least squares,
  Gaussian residuals), lengths from the real length histogram, attributes from their marginals.
  It holds coefficients and summary statistics, no real rows; what a GAN must beat.
* ``bootstrap``: real sequences resampled with replacement, the fidelity floor of the metrics
  (it copies real data, so it is a yardstick, never a release).
* ``PARBaseline``: SDV's PARSynthesizer (optional extra ``netdiff[sdv]``, imported lazily).
  SDV models can only be pickled, and netdiff never unpickles, so PAR is trained and sampled in
  one go (``netdiff telemetry train --model par --sample-output FILE``) and not saved.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from netdiff.errors import NetdiffError
from netdiff.telemetry import modelio
from netdiff.telemetry.common import AttributeSampler, merge_config, stamp_times, time_info
from netdiff.telemetry.data import TelemetryData
from netdiff.telemetry.scaling import Encoder


def bootstrap(data: TelemetryData, count: int, seed: int = 0) -> TelemetryData:
    idx = np.random.default_rng(seed).integers(0, data.n, size=count)
    out = data.subset(idx)
    return dataclasses.replace(out, keys=[f"boot{i}" for i in range(count)])


@dataclass
class ARConfig:
    order: int = 3
    ridge: float = 1e-4
    log_columns: list = field(default_factory=list)
    seed: int = 0
    epochs: int | None = None  # unused (closed-form fit); accepted for CLI symmetry


class ARBaseline:
    kind = "ar"

    def __init__(self, config: ARConfig | dict | None = None):
        self.config = config if isinstance(config, ARConfig) else merge_config(ARConfig, config)
        self.history: dict = {}

    def fit(self, data: TelemetryData, progress: bool | None = None):
        p = self.config.order
        if p < 1:
            raise NetdiffError("ar.order must be >= 1")
        if data.lengths.max() <= p:
            raise NetdiffError(f"sequences are too short for ar.order={p}")
        self.encoder = Encoder.fit(data, self.config.log_columns)
        self.sampler = AttributeSampler.fit(data)
        self.times = time_info(data)
        X = self.encoder.encode_features(data).astype(np.float64)  # (n, T, D)
        n, T, D = X.shape
        # rows: (sequence, t) with t >= p inside the sequence; design = [1, x_{t-1}, ..., x_{t-p}]
        seq, t = np.nonzero(data.mask() & (np.arange(T)[None, :] >= p))
        lags = np.concatenate([X[seq, t - k] for k in range(1, p + 1)], axis=1)
        A = np.concatenate([np.ones((len(seq), 1)), lags], axis=1)
        Y = X[seq, t]
        coef = np.linalg.solve(A.T @ A + self.config.ridge * np.eye(A.shape[1]), A.T @ Y)
        resid = Y - A @ coef
        cov = np.cov(resid, rowvar=False).reshape(D, D) + 1e-9 * np.eye(D)
        head = X[:, :p].reshape(n, p * D)  # first p steps: a Gaussian, not copies of real rows
        head_cov = np.cov(head, rowvar=False).reshape(p * D, p * D) + 1e-9 * np.eye(p * D)
        lengths, counts = np.unique(data.lengths, return_counts=True)
        self.params = {"coef": coef, "noise_chol": np.linalg.cholesky(cov), "head_mean": head.mean(0),
                       "head_chol": np.linalg.cholesky(head_cov), "lengths": lengths.astype(np.float64),
                       "length_p": counts / counts.sum()}
        self.max_length = T
        return self

    def generate(self, count: int, seed: int = 0) -> TelemetryData:
        if count < 1:
            raise NetdiffError("count must be >= 1")
        rng = np.random.default_rng(seed)
        P, p, T = self.params, self.config.order, self.max_length
        D = P["noise_chol"].shape[0]
        X = np.zeros((count, T, D))
        X[:, :p] = (P["head_mean"] + rng.standard_normal((count, p * D)) @ P["head_chol"].T).reshape(count, p, D)
        for t in range(p, T):  # sequential by nature; vectorised over sequences and features
            lags = X[:, t - p:t][:, ::-1].reshape(count, p * D)
            X[:, t] = (np.concatenate([np.ones((count, 1)), lags], 1) @ P["coef"]
                       + rng.standard_normal((count, D)) @ P["noise_chol"].T)
            X[:, t] = np.clip(X[:, t], 0.0, 1.0)
        X = np.clip(X, 0.0, 1.0)
        lengths = rng.choice(P["lengths"].astype(np.int64), size=count, p=P["length_p"])
        attrs = self.sampler.sample(count, rng)
        out = self.encoder.make_data(attrs, self.encoder.decode_features(X), lengths)
        return stamp_times(out, self.times)

    def save(self, directory, extra: dict | None = None):
        import torch

        meta = {"config": dataclasses.asdict(self.config), "encoder": self.encoder.to_dict(),
                "attributes": self.sampler.marginals, "times": self.times, "max_length": self.max_length,
                **(extra or {})}
        return modelio.save(directory, self.kind, {k: torch.from_numpy(np.asarray(v, np.float64))
                                                   for k, v in self.params.items()}, meta)

    @classmethod
    def from_saved(cls, meta: dict, tensors: dict):
        self = cls(meta["config"])
        self.encoder = Encoder.from_dict(meta["encoder"])
        self.sampler = AttributeSampler(meta["attributes"])
        self.times, self.max_length, self.meta = meta["times"], meta["max_length"], meta
        self.params = {k: v.numpy() for k, v in tensors.items()}
        return self


@dataclass
class PARConfig:
    epochs: int = 128
    seed: int = 0
    verbose: bool = False


class PARBaseline:
    """SDV PARSynthesizer with the sequence key, attributes as context columns and features."""

    kind = "par"

    def __init__(self, config: PARConfig | dict | None = None):
        self.config = config if isinstance(config, PARConfig) else merge_config(PARConfig, config)
        self.history: dict = {}

    def fit(self, data: TelemetryData, progress: bool | None = None):
        try:
            from sdv.metadata import Metadata
            from sdv.sequential import PARSynthesizer
        except ImportError as e:
            raise NetdiffError("the PAR baseline needs SDV: pip install 'netdiff[sdv]'") from e
        from netdiff.telemetry.data import to_frame

        self.template = data
        frame = to_frame(data, "sequence_id")
        frame.insert(1, "step", frame.groupby("sequence_id", sort=False).cumcount())
        cols = {"sequence_id": {"sdtype": "id"}, "step": {"sdtype": "numerical"}}
        for name, kinds in ((data.attribute_names, data.attribute_kinds), (data.feature_names, data.feature_kinds)):
            for c in name:
                cols[c] = {"sdtype": "categorical" if kinds[c] == "categorical" else "numerical"}
        meta = Metadata.load_from_dict({"tables": {"table": {"columns": cols, "sequence_key": "sequence_id",
                                                              "sequence_index": "step"}}})
        np.random.seed(self.config.seed)
        import torch

        torch.manual_seed(self.config.seed)
        self.model = PARSynthesizer(meta, context_columns=list(data.attribute_names), epochs=self.config.epochs,
                                    verbose=self.config.verbose, cuda=torch.cuda.is_available())
        self.model.fit({"table": frame})  # SDV 2 takes a dict of tables
        self.times = time_info(data)
        return self

    def generate(self, count: int, seed: int = 0) -> TelemetryData:
        import torch

        from netdiff.telemetry.data import ColumnRoles, from_long

        np.random.seed(seed)
        torch.manual_seed(seed)
        frame = self.model.sample_sequences(num_sequences=count)
        if isinstance(frame, dict):
            frame = next(iter(frame.values()))
        d = self.template
        roles = ColumnRoles(sequence_key=["sequence_id"], time_column="step", attributes=d.attribute_names,
                            features=d.feature_names,
                            categorical=[c for c in d.feature_names + d.attribute_names
                                         if {**d.attribute_kinds, **d.feature_kinds}[c] == "categorical"])
        out = from_long(frame, roles)
        return stamp_times(dataclasses.replace(out, times=None, time_is_datetime=False), self.times)

    def save(self, directory, extra=None):
        raise NetdiffError("SDV PAR models can only be pickled and netdiff never unpickles: "
                           "use --sample-output to sample right after training")
