"""Utility: do classifiers trained on synthetic traffic work on real traffic?

TSTR trains on synthetic and tests on held-out real; TRTR trains on the other real half and
tests on the same held-out real. Features are the ones nPrint users feed classifiers: packet bits
(every compared column except addresses, -1/0/1 as numbers) and per-flow statistics. Models are
scikit-learn's random forest and gradient boosting, kept small (50 trees) with rows subsampled
per class so ten classes train in seconds on two cores.
"""
from __future__ import annotations

import numpy as np
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.metrics import confusion_matrix, f1_score

from netdiff.bits.layout import ADDRESS_FIELDS

MAX_TRAIN_PER_CLASS = 600
MAX_TEST_PER_CLASS = 600
AUGMENT_KEEP = 20          # real training packets kept for the class made scarce


def packet_features(ts) -> np.ndarray:
    """Bit columns without the address fields (they name hosts, not traffic)."""
    keep = np.ones(ts.layout.width, dtype=bool)
    for name in ADDRESS_FIELDS:
        sl = ts.layout.fields.get(name)
        if sl is not None:
            keep[sl] = False
    return ts.bits[:, keep]


def feature_names(ts) -> list[str]:
    drop = set()
    for name in ADDRESS_FIELDS:
        sl = ts.layout.fields.get(name)
        if sl is not None:
            drop.update(range(sl.start, sl.stop))
    return [c for i, c in enumerate(ts.layout.columns) if i not in drop]


def cap_per_class(y: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    """Row indices with at most ``cap`` rows of every class (random, sorted)."""
    keep = []
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        keep.append(rows if len(rows) <= cap else rng.choice(rows, cap, replace=False))
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


def make_model(kind: str, seed: int):
    if kind == "random_forest":
        return RandomForestClassifier(n_estimators=50, min_samples_leaf=1, n_jobs=2, random_state=seed)
    if kind == "gradient_boosting":
        return GradientBoostingClassifier(n_estimators=50, max_depth=3, max_features="sqrt",
                                          subsample=0.8, random_state=seed)
    raise ValueError(kind)


def score(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    """Macro-F1 over the classes in the test set, F1 per class, and the confusion matrix."""
    present = np.unique(y_true)
    f1 = f1_score(y_true, y_pred, labels=present, average=None, zero_division=0)
    return {"macro_f1": float(np.mean(f1)) if len(f1) else 0.0,
            "per_class": {classes[c]: float(v) for c, v in zip(present, f1)},
            "confusion": confusion_matrix(y_true, y_pred, labels=present).tolist(),
            "labels": [classes[c] for c in present]}


def train_and_score(kind: str, x_train, y_train, x_test, y_test, classes, seed: int) -> dict:
    if len(np.unique(y_train)) < 2 or len(np.unique(y_test)) < 2:
        return {"skipped": "needs at least two classes in training and in test data"}
    model = make_model(kind, seed).fit(x_train, y_train)
    return score(y_test, model.predict(x_test), classes)


def classify(train_x, train_y, test_x, test_y, classes, rng, seed) -> dict:
    """Both models on one train/test pair, rows capped per class."""
    tr = cap_per_class(train_y, MAX_TRAIN_PER_CLASS, rng)
    te = cap_per_class(test_y, MAX_TEST_PER_CLASS, rng)
    return {kind: train_and_score(kind, train_x[tr], train_y[tr], test_x[te], test_y[te], classes, seed)
            for kind in ("random_forest", "gradient_boosting")}


def augmentation(real_train, synth, real_test, rng, seed) -> dict:
    """Make the class with fewest real training packets scarce (AUGMENT_KEEP packets), then
    compare a random forest trained on that real set alone and with the synthetic packets of the
    class added."""
    counts = np.bincount(real_train.label, minlength=len(real_train.classes))
    have_synth = np.bincount(synth.label, minlength=len(real_train.classes)) > 0
    have_test = np.bincount(real_test.label, minlength=len(real_train.classes)) > 0
    candidates = np.flatnonzero((counts > 0) & have_synth & have_test)
    if len(candidates) == 0 or len(np.unique(real_train.label)) < 2:
        return {"skipped": "needs two real classes and one class present in every set"}
    c = int(candidates[np.argmin(counts[candidates])])
    name = real_train.classes[c]
    xr, yr = packet_features(real_train), real_train.label
    keep = cap_per_class(yr, MAX_TRAIN_PER_CLASS, rng)
    rows_c = keep[yr[keep] == c]
    scarce = np.concatenate([keep[yr[keep] != c], rng.permutation(rows_c)[:AUGMENT_KEEP]])
    xs = packet_features(synth)[synth.label == c]
    xs = xs[rng.permutation(len(xs))[:MAX_TRAIN_PER_CLASS]]
    te = cap_per_class(real_test.label, MAX_TEST_PER_CLASS, rng)
    xt, yt = packet_features(real_test)[te], real_test.label[te]
    base = train_and_score("random_forest", xr[scarce], yr[scarce], xt, yt, real_train.classes, seed)
    aug = train_and_score("random_forest", np.concatenate([xr[scarce], xs]),
                          np.concatenate([yr[scarce], np.full(len(xs), c)]), xt, yt,
                          real_train.classes, seed)
    strip = lambda r: {k: v for k, v in r.items() if k in ("macro_f1", "per_class", "skipped")}  # noqa: E731
    return {"class": name, "real_packets_kept": int(min(AUGMENT_KEEP, len(rows_c))),
            "synthetic_packets_added": int(len(xs)),
            "real_only": {**strip(base), "class_f1": base.get("per_class", {}).get(name)},
            "augmented": {**strip(aug), "class_f1": aug.get("per_class", {}).get(name)}}
