"""``netdiff telemetry``: train, generate and evaluate synthetic telemetry models."""
from __future__ import annotations

import json

import click

from netdiff.cli.folders import checks_inputs, locks_output

MODELS = ["doppelganger", "timegan", "ar", "par", "tvae", "ctgan"]
SDV_MODELS = ("par", "tvae", "ctgan")  # SDV models only pickle: trained and sampled in one go


def _cols(value: str | None):
    """Comma-separated column names; a name in double quotes is matched exactly (spaces kept)."""
    from netdiff.telemetry.columns import split_names

    return split_names(value)


def _say(line: str) -> None:
    click.echo(line, err=True)


def _threads(threads):
    if threads:
        import torch

        torch.set_num_threads(threads)


def _role_options(f):
    """Column-role options shared by train and evaluate; they override the config's data section."""
    opts = [
        click.option("--sequence-key", help="Column(s) naming a sequence, comma-separated "
                     "(none: the file is one series; cut it with --window)."),
        click.option("--time-column", help="Time column (auto-detected: ISO, day-/month-first dates, epoch s/ms)."),
        click.option("--time-format", help="auto, iso, dayfirst, monthfirst, epoch, epoch_ms, number or a strptime format."),
        click.option("--attributes", help="Per-sequence attribute columns, comma-separated."),
        click.option("--features", help="Time-varying feature columns, comma-separated "
                     "[default: every numeric column that is not key, time or attribute]. "
                     "'\"name \"' in double quotes matches exactly."),
        click.option("--window", type=click.IntRange(min=2),
                     help="Cut each series into windows of N steps (one long series -> many sequences)."),
        click.option("--stride", type=click.IntRange(min=1), help="Steps between window starts [default: --window]."),
        click.option("--rows-per-sequence", type=click.IntRange(min=1),
                     help="No key column: rows 0..N-1 are sequence 0, N..2N-1 sequence 1, ..."),
        click.option("--categorical", help="Columns to treat as categorical, comma-separated."),
        click.option("--config", "configs", multiple=True, type=click.Path(exists=True, dir_okay=False),
                     help="YAML config(s) (configs/telemetry/*.yaml); later files win."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _roles(cfg, sequence_key, time_column, time_format, attributes, features, categorical, window=None,
           stride=None, rows_per_sequence=None):
    from netdiff.telemetry.settings import roles_from

    return roles_from(cfg, sequence_key=_cols(sequence_key), time_column=time_column, time_format=time_format,
                      attributes=_cols(attributes), features=_cols(features), categorical=_cols(categorical),
                      window=window, stride=stride, rows_per_sequence=rows_per_sequence)


@click.group("telemetry", short_help="Synthetic telemetry time series (DoppelGANger, TimeGAN).")
def telemetry_group():
    """Train, generate and evaluate synthetic multi-sequence telemetry."""


@telemetry_group.command("train", short_help="Train a telemetry model.")
@click.option("--model", "kind", type=click.Choice(MODELS), default="doppelganger", show_default=True)
@click.option("--data", "data_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="CSV, Parquet or zip of CSVs.")
@_role_options
@click.option("--output", type=click.Path(file_okay=False), help="Model folder to write.")
@click.option("--epochs", type=click.IntRange(min=0),
              help="Override the config's epoch count (timegan: passes over the windows in each of its 3 phases).")
@click.option("--seed", type=int, help="Random seed (default: the config's, else 0).")
@click.option("--feature-scaling", type=click.Choice(["quantile", "minmax"]),
              help="doppelganger: scale continuous features by their distribution function mixed with min-max "
                   "(quantile; heavy tails, exact zeros) or by min-max alone (minmax, the behaviour before it) "
                   "[default: the config's, else quantile].")
@click.option("--threads", type=click.IntRange(min=1),
              help="CPU threads for torch (1 is often fastest for these small models on a shared box).")
@click.option("--sample-output", type=click.Path(dir_okay=False),
              help="Also write sampled sequences here right after training (needed for par).")
@click.option("--sample-count", type=click.IntRange(min=1), help="Sequences to sample (default: as many as trained on).")
@locks_output("output")
@locks_output("sample_output", folder=False)
def train_cmd(kind, data_path, sequence_key, time_column, time_format, attributes, features, categorical,
              window, stride, rows_per_sequence, configs, output, epochs, seed, feature_scaling, threads, sample_output,
              sample_count):
    """Fit a model on DATA and save it (model.safetensors + config.json) in OUTPUT."""
    from netdiff.errors import NetdiffError
    from netdiff.telemetry import api
    from netdiff.telemetry.settings import load_configs

    sdv = kind in SDV_MODELS
    if sdv and not sample_output:
        raise NetdiffError(f"--model {kind} needs --sample-output (SDV models are not saved: they only pickle)")
    if not sdv and not output:
        raise NetdiffError("--output (the model folder) is required")
    if feature_scaling and kind != "doppelganger":
        raise NetdiffError(f"--feature-scaling applies to --model doppelganger, not {kind}")
    cfg = load_configs(configs)
    roles = _roles(cfg, sequence_key, time_column, time_format, attributes, features, categorical, window, stride,
                   rows_per_sequence)
    _threads(threads)
    model, data = api.train(kind, data_path, roles, cfg, None if sdv else output, seed=seed, epochs=epochs, log=_say,
                            options={"feature_scaling": feature_scaling})
    secs = model.history.get("epoch_seconds") or []
    per = f", {sum(secs) / len(secs):.3f} s/epoch" if secs else ""
    phases = model.history.get("phase_seconds") or []
    if phases:
        per += ", phases " + " / ".join(f"{p:.0f} s" for p in phases)
    click.echo(f"trained {kind} on {data.n} sequences (max length {data.max_length}){per}"
               + (f" -> {output}" if not sdv else ""))
    if sample_output:
        synth = api.write_samples(model, sample_count or data.n, sample_output, seed=seed or 0)
        click.echo(f"wrote {synth.n} sequences -> {sample_output}")


@telemetry_group.command("generate", short_help="Sample sequences from a trained model.")
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--count", type=click.IntRange(min=1), required=True, help="Number of sequences.")
@click.option("--output", required=True, type=click.Path(dir_okay=False), help="CSV or Parquet file.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=click.IntRange(min=1),
              help="CPU threads for torch (the output does not depend on it: see docs/telemetry.md).")
@checks_inputs("model_dir")
@locks_output("output", folder=False)
def generate_cmd(model_dir, count, output, seed, threads):
    """Write COUNT synthetic sequences (long form) to OUTPUT."""
    from netdiff.telemetry import api

    _threads(threads)
    synth = api.generate(model_dir, count, output, seed=seed)
    click.echo(f"wrote {synth.n} sequences, {int(synth.lengths.sum())} rows -> {output}")


@telemetry_group.command("evaluate", short_help="Fidelity metrics of synthetic vs real telemetry.")
@click.option("--real", "real_path", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--synthetic", "synthetic_path", required=True, multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Synthetic CSV/Parquet; repeat it (e.g. one file per generation seed) for the mean and "
                   "range of m, autocorrelation and W1. A file without the sequence column is one series.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False),
              help="Take the column roles from a trained model folder.")
@_role_options
@click.option("--iterations", type=click.IntRange(min=1),
              help="Training steps of the post-hoc GRU classifier and predictor [config, else 300].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--plots/--no-plots", default=True, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads for torch.")
@click.option("--downstream", is_flag=True,
              help="Also run the train-on-synthetic/test-on-real forecasting and anomaly tasks.")
@checks_inputs("model_dir")
@locks_output("out_dir")
def evaluate_cmd(real_path, synthetic_path, out_dir, model_dir, sequence_key, time_column, time_format,
                 attributes, features, categorical, window, stride, rows_per_sequence, configs, iterations, seed,
                 plots, threads, downstream):
    """Write OUT/metrics.json (m, autocorrelation_mse, w1, cross_correlation, discriminative_score,
    predictive_score, ...) and plots."""
    from netdiff.telemetry import api
    from netdiff.telemetry.settings import load_configs

    cfg = load_configs(configs)
    if model_dir:
        cfg = {**cfg, "data": {**api.roles_of_model(model_dir).to_dict(), **(cfg.get("data") or {})}}
    roles = _roles(cfg, sequence_key, time_column, time_format, attributes, features, categorical, window, stride,
                   rows_per_sequence)
    iterations = iterations or int((cfg.get("evaluate") or {}).get("iterations", 300))
    _threads(threads)
    report = api.evaluate(real_path, list(synthetic_path), roles, out_dir, seed=seed, iterations=iterations,
                          plots=plots, downstream=dict(cfg.get("downstream") or {}) if downstream else None, log=_say)
    disc = report.get("discriminative") or {}
    if disc.get("note"):
        _say(f"discriminative score: {disc['note']}")
    keys = ("m", "m_window_weighted", "autocorrelation_mse", "cross_correlation", "discriminative_score",
            "predictive_score")
    summary = {k: report.get(k) for k in keys}
    if disc.get("score_ci95"):
        summary["discriminative_score_ci95"] = disc["score_ci95"]
    if "synthetic_sets" in report:
        sets = report["synthetic_sets"]
        summary["m_over_sets"] = {k: sets["m"].get(k) for k in ("mean", "min", "max")}
    click.echo(json.dumps(summary))
