"""Inter-arrival times learnt per traffic class, used to stamp repaired packets.

The model keeps, per class, quantiles of log10(gap in seconds) (zero gaps counted apart, since
captures often hold packets with the same timestamp). Sampling is inverse-CDF with linear
interpolation between quantiles: cheap, deterministic with a seed, and the file is a small JSON
that travels with the dataset or model.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from netdiff.errors import NetdiffError

N_QUANTILES = 101
MIN_GAP = 1e-9
FORMAT = "netdiff-timing/1"


class TimingModel:
    def __init__(self, classes: dict[str, dict] | None = None):
        # class -> {"q": [N_QUANTILES log10 values], "p_zero": float, "count": int}
        self.classes: dict[str, dict] = classes or {}

    # --- learning -------------------------------------------------------------------------------
    @classmethod
    def learn(cls, gaps_by_class: dict[str, list[np.ndarray]]) -> "TimingModel":
        """``{class: [inter-arrival seconds of capture 1, of capture 2, ...]}`` -> model."""
        model = cls()
        for klass, arrays in gaps_by_class.items():
            gaps = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays]) \
                if arrays else np.zeros(0)
            gaps = gaps[np.isfinite(gaps) & (gaps >= 0)]
            if len(gaps) == 0:
                continue
            pos = gaps[gaps > 0]
            q = (np.quantile(np.log10(np.maximum(pos, MIN_GAP)), np.linspace(0, 1, N_QUANTILES))
                 if len(pos) else np.full(N_QUANTILES, -6.0))
            model.classes[str(klass)] = {"q": [round(float(x), 6) for x in q],
                                         "p_zero": float(1 - len(pos) / len(gaps)),
                                         "count": int(len(gaps))}
        if not model.classes:
            raise NetdiffError("timing model: no inter-arrival times to learn from")
        return model

    @classmethod
    def learn_from_sidecars(cls, paths) -> "TimingModel":
        """Learn from image sidecar JSON files ("class", "packets.ts_sec/ts_nsec")."""
        by_class: dict[str, list[np.ndarray]] = {}
        for p in paths:
            try:
                doc = json.loads(Path(p).read_text())
                klass = str(doc["class"])
                sec = np.asarray(doc["packets"]["ts_sec"], dtype=np.int64)
                nsec = np.asarray(doc["packets"]["ts_nsec"], dtype=np.int64)
            except FileNotFoundError:
                raise NetdiffError(f"{p}: no such sidecar file") from None
            except (ValueError, KeyError, TypeError) as e:
                raise NetdiffError(f"{p}: not a netdiff image sidecar (needs 'class' and "
                                   f"'packets.ts_sec/ts_nsec'; {e.__class__.__name__}: {e})") from None
            if len(sec) != len(nsec):
                raise NetdiffError(f"{p}: ts_sec and ts_nsec differ in length")
            if len(sec) > 1:
                t = sec * 1_000_000_000 + nsec
                by_class.setdefault(klass, []).append(np.diff(t) / 1e9)
        return cls.learn(by_class)

    # --- persistence ----------------------------------------------------------------------------
    def save(self, path) -> None:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            tmp.write_text(json.dumps({"format": FORMAT, "classes": self.classes}, indent=1))
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path) -> "TimingModel":
        try:
            doc = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise NetdiffError(f"{path}: no such timing model") from None
        except ValueError as e:
            raise NetdiffError(f"{path}: not a JSON timing model ({e})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise NetdiffError(f"{path}: not a netdiff timing model (format {FORMAT!r} expected)")
        for k, c in doc.get("classes", {}).items():
            if len(c.get("q", [])) != N_QUANTILES or not 0 <= c.get("p_zero", -1) <= 1:
                raise NetdiffError(f"{path}: class {k!r} is malformed")
        return cls(doc["classes"])

    # --- sampling -------------------------------------------------------------------------------
    def gaps(self, n: int, klass: str | None = None, seed: int = 0) -> np.ndarray:
        """``n`` inter-arrival times (seconds) for a class; the pooled model for an unknown or
        missing class."""
        rng = np.random.default_rng(seed)
        if klass is not None and klass in self.classes:
            c = self.classes[klass]
        else:
            c = self._pooled()
        q = np.asarray(c["q"], dtype=np.float64)
        u = rng.random(n) * (N_QUANTILES - 1)
        lo = np.floor(u).astype(np.int64)
        hi = np.minimum(lo + 1, N_QUANTILES - 1)
        logs = q[lo] + (u - lo) * (q[hi] - q[lo])
        out = 10.0 ** logs
        out[rng.random(n) < c["p_zero"]] = 0.0
        return out

    def _pooled(self) -> dict:
        if not self.classes:
            return DEFAULT_CLASS
        w = np.array([c["count"] for c in self.classes.values()], dtype=np.float64)
        qs = np.array([c["q"] for c in self.classes.values()])
        pz = np.array([c["p_zero"] for c in self.classes.values()])
        # Mixture approximated by weighted quantile averaging: adequate for stamping.
        return {"q": list((w[:, None] * qs).sum(0) / w.sum()), "p_zero": float((w * pz).sum() / w.sum())}


# Used when no model is given: log-uniform between 10 us and 100 ms (a neutral, documented
# default; learn a model from the training captures for realistic timing).
DEFAULT_CLASS = {"q": list(np.linspace(-5.0, -1.0, N_QUANTILES)), "p_zero": 0.0}


def timestamps(gaps: np.ndarray, start_ns: int = 1_700_000_000 * 10 ** 9) -> tuple[np.ndarray, np.ndarray]:
    """(ts_sec, ts_nsec) of packets whose first is at ``start_ns`` and whose gaps follow."""
    t = start_ns + np.concatenate([[0], np.cumsum(np.rint(np.asarray(gaps) * 1e9).astype(np.int64))])
    return t // 10 ** 9, t % 10 ** 9
