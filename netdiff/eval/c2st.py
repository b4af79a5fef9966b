"""Classifier two-sample test: can a classifier tell real from synthetic?

A gradient-boosting classifier is trained on a balanced half of real + synthetic rows and scored
on the other half; the held-out ROC AUC is 0.5 when the two sets cannot be told apart and 1.0
when every row gives itself away. Feature importances, summed per nPrint field, say which fields
give the synthetic rows away.
"""
from __future__ import annotations

import numpy as np
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.metrics import roc_auc_score

MAX_PER_SIDE = 1500
MIN_PER_SIDE = 10
TOP_FIELDS = 10


def field_of(column: str) -> str:
    """nPrint column name -> its field (``ipv4_ttl_3`` -> ``ipv4_ttl``)."""
    head, _, tail = column.rpartition("_")
    return head if tail.isdigit() else column


def c2st(real_x: np.ndarray, synth_x: np.ndarray, rng: np.random.Generator, seed: int,
         names: list[str] | None = None, by_field: bool = True) -> dict | None:
    """Held-out AUC of real-vs-synthetic; None when either side has too few rows."""
    n = min(len(real_x), len(synth_x), MAX_PER_SIDE)
    if n < MIN_PER_SIDE:
        return None
    ri = rng.choice(len(real_x), n, replace=False)
    si = rng.choice(len(synth_x), n, replace=False)
    x = np.concatenate([real_x[ri], synth_x[si]]).astype(np.float32)
    y = np.r_[np.zeros(n, dtype=np.int64), np.ones(n, dtype=np.int64)]
    # Balanced halves: half of each side trains, the other half tests.
    pr, ps = rng.permutation(n), n + rng.permutation(n)
    h = n // 2
    train = np.concatenate([pr[:h], ps[:h]])
    test = np.concatenate([pr[h:], ps[h:]])
    model = GradientBoostingClassifier(n_estimators=50, max_depth=3, max_features="sqrt",
                                       subsample=0.8, random_state=seed)
    model.fit(x[train], y[train])
    auc = float(roc_auc_score(y[test], model.predict_proba(x[test])[:, 1]))
    out = {"auc": auc, "rows_per_side": int(n)}
    if names is not None:
        imp = model.feature_importances_
        if by_field:
            fields: dict[str, float] = {}
            for name, v in zip(names, imp):
                f = field_of(name)
                fields[f] = fields.get(f, 0.0) + float(v)
        else:
            fields = {name: float(v) for name, v in zip(names, imp)}
        top = sorted(fields.items(), key=lambda kv: -kv[1])[:TOP_FIELDS]
        out["top_fields"] = [{"field": k, "importance": v} for k, v in top if v > 0]
    return out
