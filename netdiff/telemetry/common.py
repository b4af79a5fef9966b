"""Pieces shared by the telemetry models: device and seeding, MLPs, per-group output
activations, time stamps for generated sequences, and config merging."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from netdiff.errors import NetdiffError
from netdiff.telemetry.data import TelemetryData


def pick_device(name: str | None = None) -> torch.device:
    if name and name != "auto":
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seeded(seed: int, device: torch.device) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def mlp(inp: int, hidden: int, layers: int, out: int, batch_norm: bool = False) -> nn.Sequential:
    mods, d = [], inp
    for _ in range(layers):
        mods += [nn.Linear(d, hidden)] + ([nn.BatchNorm1d(hidden)] if batch_norm else []) + [nn.ReLU()]
        d = hidden
    mods.append(nn.Linear(d, out))
    return nn.Sequential(*mods)


class GroupActivation(nn.Module):
    """Softmax over each categorical one-hot block, sigmoid on continuous slots."""

    def __init__(self, groups: list[tuple[str, int, int]]):
        super().__init__()
        merged: list[tuple[str, int, int]] = []
        for k, s, e in groups:  # consecutive continuous slots share one sigmoid call
            if k == "continuous" and merged and merged[-1][0] == "continuous" and merged[-1][2] == s:
                merged[-1] = ("continuous", merged[-1][1], e)
            else:
                merged.append((k, s, e))
        self.groups = merged

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.groups) == 1 and self.groups[0][0] == "continuous":
            return torch.sigmoid(x)
        return torch.cat([torch.sigmoid(x[..., s:e]) if k == "continuous" else torch.softmax(x[..., s:e], dim=-1)
                          for k, s, e in self.groups], dim=-1)


def merge_config(cls, values: dict | None):
    """Dataclass ``cls`` from a dict, naming unknown keys."""
    values = dict(values or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise NetdiffError(f"unknown {cls.__name__} option(s): {', '.join(sorted(unknown))}")
    try:
        return cls(**values)
    except TypeError as e:
        raise NetdiffError(f"bad {cls.__name__} options: {e}") from e


def time_info(data: TelemetryData) -> dict | None:
    """Typical start and step of the time column, to stamp generated sequences."""
    if data.times is None:
        return None
    t = data.times
    steps = np.diff(t, axis=1)
    steps = steps[~np.isnan(steps)]
    return {"start": float(np.nanmedian(t[:, 0])),
            "step": float(np.median(steps)) if len(steps) else 1.0,
            "datetime": bool(data.time_is_datetime)}


def stamp_times(data: TelemetryData, info: dict | None) -> TelemetryData:
    if not info:
        return data
    T = data.max_length
    times = np.broadcast_to(info["start"] + info["step"] * np.arange(T), (data.n, T)).copy()
    times[~data.mask()] = np.nan
    return dataclasses.replace(data, times=times, time_is_datetime=info["datetime"])


class AttributeSampler:
    """Independent marginals of the attributes (category frequencies, continuous quantiles):
    used by models that do not learn attributes (TimeGAN, AR). Holds no real rows."""

    def __init__(self, marginals: dict):
        self.marginals = marginals

    @classmethod
    def fit(cls, data: TelemetryData, quantiles: int = 101):
        m = {}
        for a in data.attribute_names:
            col = data.attributes[a]
            if data.attribute_kinds[a] == "categorical":
                vc = col.astype(str).value_counts(sort=False).sort_index()
                m[a] = {"kind": "categorical", "values": vc.index.tolist(),
                        "p": (vc.to_numpy() / vc.sum()).tolist()}
            else:
                q = np.quantile(col.to_numpy(np.float64), np.linspace(0, 1, quantiles))
                m[a] = {"kind": "continuous", "q": q.tolist()}
        return cls(m)

    def sample(self, n: int, rng: np.random.Generator):
        import pandas as pd

        cols = {}
        for a, m in self.marginals.items():
            if m["kind"] == "categorical":
                cols[a] = np.asarray(m["values"], dtype=object)[rng.choice(len(m["values"]), size=n, p=m["p"])]
            else:
                q = np.asarray(m["q"])
                cols[a] = np.interp(rng.random(n), np.linspace(0, 1, len(q)), q)
        return pd.DataFrame(cols, index=range(n))
