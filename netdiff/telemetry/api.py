"""The three telemetry steps as functions (the CLI is a thin layer over these)."""
from __future__ import annotations

import json
from pathlib import Path

from netdiff.errors import NetdiffError
from netdiff.io.atomic import atomic_write_text
from netdiff.telemetry import modelio
from netdiff.telemetry.data import ColumnRoles, TelemetryData, load, to_frame, write_frame
from netdiff.telemetry.settings import output_sequence_column, synthetic_roles


def train(kind: str, data_path, roles: ColumnRoles, config: dict, output, seed: int | None = None,
          epochs: int | None = None, progress: bool | None = None):
    """Load ``data_path`` with ``roles``, fit model ``kind`` and save it to ``output``."""
    cls = modelio.model_class(kind)
    data = load(data_path, roles)
    options = dict(config.get(kind) or {})
    if seed is not None:
        options["seed"] = seed
    if epochs is not None:
        options["epochs"] = epochs
    model = cls(options)
    model.fit(data, progress=progress)
    model.meta = {"roles": roles.to_dict(), "data_file": Path(data_path).name, "training_sequences": data.n}
    if output is not None:
        model.save(output, extra=model.meta)
    return model, data


def write_samples(model, count: int, output, seed: int = 0) -> TelemetryData:
    """Sample a model in memory and write the sequences in long form (CSV or Parquet)."""
    synth = model.generate(count, seed=seed)
    roles = ColumnRoles.from_dict(model.meta["roles"])
    write_frame(to_frame(synth, output_sequence_column(roles), roles.time_column), output)
    return synth


def generate(model_dir, count: int, output, seed: int = 0) -> TelemetryData:
    return write_samples(modelio.load(model_dir), count, output, seed)


def roles_of_model(model_dir) -> ColumnRoles:
    meta, _ = modelio.read(model_dir)
    return ColumnRoles.from_dict(meta["roles"])


def evaluate(real_path, synthetic_path, roles: ColumnRoles, out_dir, seed: int = 0, iterations: int = 300,
             plots: bool = True, max_lag: int | None = None, downstream: dict | None = None) -> dict:
    """Metrics JSON (``metrics.json``) and figures in ``out_dir``; returns the report."""
    from netdiff.telemetry import metrics

    real = load(real_path, roles)
    synth = load(synthetic_path, synthetic_roles(roles, real.time_is_datetime))
    if synth.n < 2 or real.n < 2:
        raise NetdiffError("evaluation needs at least 2 sequences on each side")
    report = metrics.evaluate(real, synth, seed=seed, iterations=iterations, max_lag=max_lag)
    if downstream is not None:
        from netdiff.telemetry import downstream as tasks

        report["downstream"] = tasks.evaluate(real, synth, {"seed": seed, **downstream})
    report["inputs"] = {"real": str(real_path), "synthetic": str(synthetic_path)}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if plots:
        from netdiff.telemetry.plots import write_plots

        report["plots"] = write_plots(real, synth, report, out_dir, seed=seed)
    atomic_write_text(out_dir / "metrics.json", json.dumps(report, indent=2))
    return report
