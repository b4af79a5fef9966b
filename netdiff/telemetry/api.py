"""The three telemetry steps as functions (the CLI is a thin layer over these)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from netdiff.errors import NetdiffError
from netdiff.io.atomic import atomic_write_text
from netdiff.telemetry import modelio
from netdiff.telemetry.data import ColumnRoles, Loaded, TelemetryData, load_table, read_header, renamed, to_frame, write_frame
from netdiff.telemetry.settings import output_sequence_column, synthetic_roles


def _say(log, notes):
    for n in notes:
        if log is not None and n:
            log(n)


def train(kind: str, data_path, roles: ColumnRoles, config: dict, output, seed: int | None = None,
          epochs: int | None = None, progress: bool | None = None, log=None, options: dict | None = None):
    """Load ``data_path`` with ``roles``, fit model ``kind`` and save it to ``output``.
    ``log(line)`` hears what was inferred from the file (features, time format, names);
    ``options`` override the config's section for ``kind`` (None values are ignored)."""
    cls = modelio.model_class(kind)
    loaded = load_table(data_path, roles)
    data, roles = loaded.data, loaded.roles
    _say(log, loaded.notes)
    if data.n < 2 and getattr(cls, "needs_sequences", True):
        raise NetdiffError(f"{kind} needs several sequences and the data is {data.n}: "
                           + ("cut the one series with --window N [--stride S]" if not roles.sequence_key
                              else "give more data or cut it with --window N [--stride S]"))
    options = {**(config.get(kind) or {}), **{k: v for k, v in (options or {}).items() if v is not None}}
    if seed is not None:
        options["seed"] = seed
    if epochs is not None:
        options["epochs"] = epochs
    model = cls(options)
    model.log = log
    model.fit(data, progress=progress)
    model.meta = {"roles": roles.to_dict(), "data_file": Path(data_path).name, "training_sequences": data.n}
    if output is not None:
        model.save(output, extra=model.meta)
    return model, data


def saved_roles(meta: dict) -> ColumnRoles:
    """The column roles a model was trained with, from its saved metadata. Models saved before
    time formats were made concrete at training hold ``auto``; their time column was read as
    numbers when ``times.datetime`` is false, and ``auto`` now reads epoch-range numbers as
    dates, so such a model gets ``number`` back (its time interpretation must not change)."""
    roles = ColumnRoles.from_dict(meta["roles"])
    times = meta.get("times")
    if roles.time_column and roles.time_format == "auto" and times and not times.get("datetime"):
        roles = dataclasses.replace(roles, time_format="number")
    return roles


def write_samples(model, count: int, output, seed: int = 0) -> TelemetryData:
    """Sample a model in memory and write the sequences in long form (CSV or Parquet)."""
    synth = model.generate(count, seed=seed)
    roles = saved_roles(model.meta)
    write_frame(to_frame(synth, output_sequence_column(roles), roles.time_column), output)
    return synth


def generate(model_dir, count: int, output, seed: int = 0) -> TelemetryData:
    return write_samples(modelio.load(model_dir), count, output, seed)


def roles_of_model(model_dir) -> ColumnRoles:
    meta, _ = modelio.read(model_dir)
    return saved_roles(meta)


def load_synthetic(path, roles: ColumnRoles, time_is_datetime: bool, log=None) -> Loaded:
    """A synthetic file read against real data loaded with (resolved) ``roles``."""
    sroles, note = synthetic_roles(roles, time_is_datetime, read_header(path))
    if note:
        _say(log, [f"{Path(path).name}: {note}"])
    loaded = load_table(path, sroles)
    _say(log, [f"{Path(path).name}: {n}" for n in loaded.notes if n.startswith("matched")])
    # the synthetic file's names (maybe stripped of spaces) -> the real data's names
    back = dict(zip(loaded.roles.attributes + loaded.roles.features, sroles.attributes + sroles.features))
    back = {k: v.strip('"') if v.startswith('"') else v for k, v in back.items()}
    return dataclasses.replace(loaded, data=renamed(loaded.data, back), rows=renamed(loaded.rows, back))


def _spread(values: list) -> dict:
    v = [x for x in values if x is not None]
    if not v:
        return {"values": values}
    return {"mean": float(sum(v) / len(v)), "min": float(min(v)), "max": float(max(v)), "values": values}


def evaluate(real_path, synthetic_path, roles: ColumnRoles, out_dir, seed: int = 0, iterations: int = 300,
             plots: bool = True, max_lag: int | None = None, downstream: dict | None = None, log=None) -> dict:
    """Metrics JSON (``metrics.json``) and figures in ``out_dir``; returns the report.
    ``synthetic_path`` may be a list (e.g. one file per generation seed): the first gets every
    metric, and ``synthetic_sets`` gives mean / min / max of the distribution metrics over all."""
    from netdiff.telemetry import metrics

    paths = list(synthetic_path) if isinstance(synthetic_path, (list, tuple)) else [synthetic_path]
    real_l = load_table(real_path, roles)
    _say(log, real_l.notes)
    real = real_l.data
    sets = [load_synthetic(p, real_l.roles, real.time_is_datetime, log) for p in paths]
    synth = sets[0].data
    if synth.n < 1 or real.n < 1:
        raise NetdiffError("evaluation needs at least 1 sequence on each side")
    report = metrics.evaluate(real, synth, seed=seed, iterations=iterations, max_lag=max_lag,
                              real_rows=real_l.rows, synth_rows=sets[0].rows)
    if len(sets) > 1:
        fids = [metrics.fidelity(real, s.data, max_lag, real_rows=real_l.rows, synth_rows=s.rows) for s in sets]
        report["synthetic_sets"] = {"files": [str(p) for p in paths], **{
            k: _spread([f.get(k) for f in fids]) for k in ("m", "m_window_weighted", "autocorrelation_mse")},
            "w1_features_mean": _spread([float(sum(f["w1"]["features"].values()) / max(1, len(f["w1"]["features"])))
                                         for f in fids])}
    if downstream is not None:
        from netdiff.telemetry import downstream as tasks

        report["downstream"] = tasks.evaluate(real, synth, {"seed": seed, **downstream})
    report["inputs"] = {"real": str(real_path), "synthetic": [str(p) for p in paths] if len(paths) > 1
                        else str(paths[0]), "roles": real_l.roles.to_dict()}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if plots:
        from netdiff.telemetry.plots import write_plots

        report["plots"] = write_plots(real, synth, report, out_dir, seed=seed)
    atomic_write_text(out_dir / "metrics.json", json.dumps(report, indent=2))
    return report
