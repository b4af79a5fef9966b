"""What a new user gets from a telemetry CSV with no YAML: the CLI's defaults and flags only.

For each model: `netdiff telemetry train` (default settings, the given column flags), then
`generate` with seeds 0..S-1 (as many sequences as the real data has after --window), then one
`evaluate` over the S files: M the tutorial's way (mean, min, max over the seeds), M
window-weighted, autocorrelation error and W1 of feature values (means over seeds), and the
discriminative (with its 95% interval) and predictive scores of seed 0. The floor: S bootstrap
resamples of the real sequences through the same `evaluate`. Every step is the CLI itself
(`netdiff.cli.main`), in one process, one torch thread.

The bootstrap floor resamples the very set it is scored against, so it is near 0. ``--holdout``
adds a held-out comparison in the same run: the file is split in two halves (by sequence: key
groups or --rows-per-sequence blocks shuffled with ``--holdout-seed``; ``--holdout-by time``, or
a file that is one series: each sequence's first half in time against its second half); each
model is trained again on half A and its output scored against half B, and the held-out floor
is half A itself scored against half B (its windows, written like a model's output).

    PYTHONPATH=. .venv/bin/python benchmarks/telemetry_noyaml.py --out /tmp/noyaml \\
        --data ../shared/data/telemetry/network_load_anomaly/device_data.csv \\
        --flags "--sequence-key hostname,ifname --time-column timeslot --attributes ifname --window 24 --stride 12" \\
        --models doppelganger,timegan,ar --seeds 5 [--holdout --holdout-by time]

Prints one JSON line per model and a markdown table at the end.
"""
from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path


def _cli(args: list[str]) -> None:
    from netdiff.cli import main

    code = main(args)
    if code:
        raise SystemExit(f"netdiff {' '.join(args[:2])} failed ({code})")


def _mean(values):
    v = [x for x in values if x is not None]
    return sum(v) / len(v) if v else None


def run_model(kind: str, data: str, flags: list[str], seeds: int, out: Path, extra: list[str],
              trained: str | None = None, score_against: str | None = None, tag: str = "") -> dict:
    """Train on ``data`` and score the output against ``score_against`` (default: ``data``)."""
    model = Path(trained) if trained else out / f"{kind}{tag}"
    t0 = time.perf_counter()
    if not trained:
        _cli(["telemetry", "train", "--model", kind, "--data", data, *flags, "--threads", "1", "--output", str(model),
              *extra])
    train_s = time.perf_counter() - t0
    meta = json.loads((model / "config.json").read_text())
    count = str(meta["training_sequences"])
    files = []
    t0 = time.perf_counter()
    for s in range(seeds):
        f = out / f"{kind}{tag}_seed{s}.csv"
        _cli(["telemetry", "generate", "--model", str(model), "--count", count, "--seed", str(s), "--output", str(f),
              "--threads", "1"])
        files.append(f)
    gen_s = (time.perf_counter() - t0) / seeds
    rep = _evaluate(score_against or data, files, out / f"eval_{kind}{tag}", ["--model", str(model)])
    hist = meta.get("history", {})
    return {"model": kind + (" (trained on half A, scored against half B)" if tag else ""),
            "train_s": round(train_s, 1) if not trained else None,
            "phase_s": [round(p, 1) for p in hist.get("phase_seconds", [])],
            "phase_steps": hist.get("phase_steps"), "generate_s": round(gen_s, 2), **rep}


def _evaluate(data: str, files, out: Path, roles: list[str]) -> dict:
    args = ["telemetry", "evaluate", "--real", data, "--out", str(out), "--no-plots", "--threads", "1", *roles]
    for f in files:
        args += ["--synthetic", str(f)]
    _cli(args)
    rep = json.loads((out / "metrics.json").read_text())
    sets = rep.get("synthetic_sets") or {}
    one = lambda k: {"mean": rep.get(k), "min": rep.get(k), "max": rep.get(k)}  # noqa: E731
    w1 = sets.get("w1_features_mean", {}).get("mean")
    if w1 is None:
        w1 = _mean(list(rep["w1"]["features"].values()))
    return {"m": sets.get("m") or one("m"), "m_window_weighted": (sets.get("m_window_weighted") or one("m_window_weighted"))["mean"],
            "autocorrelation_mse": (sets.get("autocorrelation_mse") or one("autocorrelation_mse"))["mean"],
            "w1_features": w1, "discriminative": rep.get("discriminative"),
            "predictive_score": rep.get("predictive_score"), "predictive_score_real": rep.get("predictive_score_real"),
            "counts": rep.get("counts")}


def _roles(flags: list[str]):
    from netdiff.telemetry.columns import split_names as _cols
    from netdiff.telemetry.data import ColumnRoles

    opts = dict(zip(flags[::2], flags[1::2]))
    return ColumnRoles.from_dict({k: v for k, v in {
        "sequence_key": _cols(opts.get("--sequence-key")) or [], "time_column": opts.get("--time-column"),
        "time_format": opts.get("--time-format"),
        "attributes": _cols(opts.get("--attributes")) or [], "features": _cols(opts.get("--features")) or [],
        "categorical": _cols(opts.get("--categorical")) or [],
        "window": int(opts["--window"]) if "--window" in opts else None,
        "stride": int(opts["--stride"]) if "--stride" in opts else None,
        "rows_per_sequence": int(opts["--rows-per-sequence"]) if "--rows-per-sequence" in opts else None,
    }.items() if v is not None})


def _as_sequences(data: str, flags: list[str], path: Path, sample=None, seed: int = 0) -> None:
    """The real file's (windowed) sequences written like a model's output; ``sample``: a
    bootstrap of that many sequences with ``seed`` instead of all of them."""
    from netdiff.telemetry.baselines import bootstrap
    from netdiff.telemetry.data import load_table, to_frame, write_frame

    loaded = load_table(data, _roles(flags))
    real = loaded.data if sample is None else bootstrap(loaded.data, sample(loaded.data), seed=seed)
    write_frame(to_frame(real, "sequence_id", loaded.roles.time_column), path)


def floor(data: str, flags: list[str], seeds: int, out: Path) -> dict:
    """Bootstrap resamples of the real (windowed) sequences, evaluated like a model's output."""
    files = []
    for s in range(seeds):
        f = out / f"bootstrap_seed{s}.csv"
        _as_sequences(data, flags, f, sample=lambda d: d.n, seed=s)
        files.append(f)
    return {"model": "bootstrap of real (floor)", **_evaluate(data, files, out / "eval_bootstrap", flags)}


def split_halves(data: str, flags: list[str], seed: int, out: Path, by: str = "sequence") -> tuple[Path, Path, str]:
    """Half A and half B of the real file (same columns and format). ``by="sequence"``: the file's
    sequences (key groups or --rows-per-sequence blocks) shuffled with ``seed`` and halved;
    ``by="time"`` (or a file that is one series): every sequence's first half in time against
    its second half, for files of a few long series that differ in kind (device_data: 10
    interfaces whose loads differ by orders of magnitude, so 5 of them say little about the
    other 5)."""
    import numpy as np

    from netdiff.errors import NetdiffError
    from netdiff.telemetry.columns import resolve
    from netdiff.telemetry.data import parse_times, read_table

    roles = _roles(flags)
    df = read_table(data, roles)
    if roles.rows_per_sequence:
        if by == "time":
            raise NetdiffError("--holdout-by time cannot halve --rows-per-sequence blocks: use --holdout-by sequence")
        group = np.arange(len(df)) // roles.rows_per_sequence
    elif roles.sequence_key:
        group = df.groupby([resolve(k, list(df.columns)) for k in roles.sequence_key], sort=True).ngroup().to_numpy()
    else:
        group = np.zeros(len(df), np.int64)
    ids = np.unique(group)
    if by == "sequence" and len(ids) >= 2:
        perm = np.random.default_rng(seed).permutation(ids)
        in_a = np.isin(group, perm[: (len(ids) + 1) // 2])
        how = f"by sequence: {(len(ids) + 1) // 2} / {len(ids) // 2} sequences"
    else:
        t = (parse_times(df[resolve(roles.time_column, list(df.columns))], roles.time_format)[0]
             if roles.time_column else np.arange(len(df), dtype=np.float64))
        order = np.lexsort((np.arange(len(df)), t, group))
        rank = np.empty(len(df), np.int64)
        starts = np.r_[0, np.flatnonzero(np.diff(group[order])) + 1]
        sizes = np.diff(np.r_[starts, len(df)])
        rank[order] = np.arange(len(df)) - np.repeat(starts, sizes)
        in_a = rank < np.repeat(sizes, sizes)[np.argsort(order)] // 2
        how = f"by time: first / second half of each of {len(ids)} sequence(s)"
    paths = out / "half_a.csv", out / "half_b.csv"
    df[in_a].to_csv(paths[0], index=False)
    df[~in_a].to_csv(paths[1], index=False)
    return paths[0], paths[1], how


def holdout_floor(half_a: Path, half_b: Path, flags: list[str], out: Path, how: str) -> dict:
    """Real half A, as sequences, scored against real half B."""
    f = out / "half_a_sequences.csv"
    _as_sequences(str(half_a), flags, f)
    return {"model": f"real half A vs half B (held-out floor; {how})",
            **_evaluate(str(half_b), [f], out / "eval_holdout_floor", flags)}


def table(rows: list[dict]) -> str:
    head = ("| model | train s (phases) | M tutorial, mean (min-max) over seeds | M window-weighted | ACF error | "
            "W1 features | discriminative (95% CI) | predictive (real) |\n|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        m, d = r["m"], r.get("discriminative") or {}
        disc = (f"{d['score']:.3f} ({d['score_ci95'][0]:.3f}-{d['score_ci95'][1]:.3f})" if d.get("score") is not None
                else "n/a")
        phases = f" ({' / '.join(f'{p:.0f}' for p in r['phase_s'])})" if r.get("phase_s") else ""
        train = (f"{r['train_s']:.0f}" if r.get("train_s") is not None else "-") + phases
        lines.append(f"| {r['model']} | {train} | {m['mean']:.4f} ({m['min']:.4f}-{m['max']:.4f}) | "
                     f"{r['m_window_weighted']:.4f} | {r['autocorrelation_mse']:.4f} | {r['w1_features']:.4f} | {disc} | "
                     f"{r['predictive_score']:.4f} ({r['predictive_score_real']:.4f}) |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--flags", default="", help="column flags, as given to netdiff telemetry train")
    ap.add_argument("--models", default="doppelganger,timegan,ar")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--out", required=True)
    ap.add_argument("--extra", default="", help="extra train options (e.g. --epochs 100)")
    ap.add_argument("--trained", action="append", default=[], metavar="KIND=DIR",
                    help="use a model folder trained before (its train time is not measured here)")
    ap.add_argument("--holdout", action="store_true",
                    help="also train each model on half A of the sequences and score it against half B, "
                         "next to the held-out floor (half A scored against half B)")
    ap.add_argument("--holdout-seed", type=int, default=0, help="seed of the half A / half B split")
    ap.add_argument("--holdout-by", choices=["sequence", "time"], default="sequence",
                    help="halve the file's sequences, or each sequence in time (see split_halves)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    flags = shlex.split(args.flags)
    rows = []
    trained = dict(t.split("=", 1) for t in args.trained)
    for kind in [k for k in args.models.split(",") if k]:
        rows.append(run_model(kind, args.data, flags, args.seeds, out, shlex.split(args.extra), trained.get(kind)))
        print(json.dumps(rows[-1]), flush=True)
    rows.append(floor(args.data, flags, args.seeds, out))
    print(json.dumps(rows[-1]), flush=True)
    if args.holdout:
        half_a, half_b, how = split_halves(args.data, flags, args.holdout_seed, out, args.holdout_by)
        for kind in [k for k in args.models.split(",") if k]:
            rows.append(run_model(kind, str(half_a), flags, args.seeds, out, shlex.split(args.extra),
                                  score_against=str(half_b), tag="_half_a"))
            print(json.dumps(rows[-1]), flush=True)
        rows.append(holdout_floor(half_a, half_b, flags, out, how))
        print(json.dumps(rows[-1]), flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
