"""``netdiff telemetry``: train, generate and evaluate synthetic telemetry models."""
from __future__ import annotations

import json

import click

from netdiff.cli.folders import checks_inputs, locks_output

MODELS = ["doppelganger", "timegan", "ar", "par"]


def _cols(value: str | None):
    return [c.strip() for c in value.split(",") if c.strip()] if value else None


def _role_options(f):
    """Column-role options shared by train and evaluate; they override the config's data section."""
    opts = [
        click.option("--sequence-key", help="Column(s) naming a sequence, comma-separated."),
        click.option("--time-column", help="Time column (ISO, day-first, epoch or --time-format)."),
        click.option("--time-format", help="iso, dayfirst, epoch, epoch_ms or a strptime format."),
        click.option("--attributes", help="Per-sequence attribute columns, comma-separated."),
        click.option("--features", help="Time-varying feature columns, comma-separated."),
        click.option("--categorical", help="Columns to treat as categorical, comma-separated."),
        click.option("--config", "configs", multiple=True, type=click.Path(exists=True, dir_okay=False),
                     help="YAML config(s) (configs/telemetry/*.yaml); later files win."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _roles(cfg, sequence_key, time_column, time_format, attributes, features, categorical):
    from netdiff.telemetry.settings import roles_from

    return roles_from(cfg, sequence_key=_cols(sequence_key), time_column=time_column, time_format=time_format,
                      attributes=_cols(attributes), features=_cols(features), categorical=_cols(categorical))


@click.group("telemetry", short_help="Synthetic telemetry time series (DoppelGANger, TimeGAN).")
def telemetry_group():
    """Train, generate and evaluate synthetic multi-sequence telemetry."""


@telemetry_group.command("train", short_help="Train a telemetry model.")
@click.option("--model", "kind", type=click.Choice(MODELS), default="doppelganger", show_default=True)
@click.option("--data", "data_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="CSV, Parquet or zip of CSVs.")
@_role_options
@click.option("--output", type=click.Path(file_okay=False), help="Model folder to write.")
@click.option("--epochs", type=click.IntRange(min=0), help="Override the config's epoch count.")
@click.option("--seed", type=int, help="Random seed (default: the config's, else 0).")
@click.option("--threads", type=click.IntRange(min=1),
              help="CPU threads for torch (1 is often fastest for these small models on a shared box).")
@click.option("--sample-output", type=click.Path(dir_okay=False),
              help="Also write sampled sequences here right after training (needed for par).")
@click.option("--sample-count", type=click.IntRange(min=1), help="Sequences to sample (default: as many as trained on).")
@locks_output("output")
@locks_output("sample_output", folder=False)
def train_cmd(kind, data_path, sequence_key, time_column, time_format, attributes, features, categorical,
              configs, output, epochs, seed, threads, sample_output, sample_count):
    """Fit a model on DATA and save it (model.safetensors + config.json) in OUTPUT."""
    from netdiff.errors import NetdiffError
    from netdiff.telemetry import api
    from netdiff.telemetry.settings import load_configs

    if kind == "par" and not sample_output:
        raise NetdiffError("--model par needs --sample-output (SDV models are not saved: they only pickle)")
    if kind != "par" and not output:
        raise NetdiffError("--output (the model folder) is required")
    cfg = load_configs(configs)
    roles = _roles(cfg, sequence_key, time_column, time_format, attributes, features, categorical)
    if threads:
        import torch

        torch.set_num_threads(threads)
    model, data = api.train(kind, data_path, roles, cfg, None if kind == "par" else output, seed=seed, epochs=epochs)
    secs = model.history.get("epoch_seconds") or []
    per = f", {sum(secs) / len(secs):.3f} s/epoch" if secs else ""
    click.echo(f"trained {kind} on {data.n} sequences (max length {data.max_length}){per}"
               + (f" -> {output}" if kind != "par" else ""))
    if sample_output:
        synth = api.write_samples(model, sample_count or data.n, sample_output, seed=seed or 0)
        click.echo(f"wrote {synth.n} sequences -> {sample_output}")


@telemetry_group.command("generate", short_help="Sample sequences from a trained model.")
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--count", type=click.IntRange(min=1), required=True, help="Number of sequences.")
@click.option("--output", required=True, type=click.Path(dir_okay=False), help="CSV or Parquet file.")
@click.option("--seed", type=int, default=0, show_default=True)
@checks_inputs("model_dir")
@locks_output("output", folder=False)
def generate_cmd(model_dir, count, output, seed):
    """Write COUNT synthetic sequences (long form) to OUTPUT."""
    from netdiff.telemetry import api

    synth = api.generate(model_dir, count, output, seed=seed)
    click.echo(f"wrote {synth.n} sequences, {int(synth.lengths.sum())} rows -> {output}")


@telemetry_group.command("evaluate", short_help="Fidelity metrics of synthetic vs real telemetry.")
@click.option("--real", "real_path", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--synthetic", "synthetic_path", required=True, type=click.Path(exists=True, dir_okay=False))
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
                 attributes, features, categorical, configs, iterations, seed, plots, threads, downstream):
    """Write OUT/metrics.json (m, autocorrelation_mse, w1, cross_correlation, discriminative_score,
    predictive_score, ...) and plots."""
    from netdiff.telemetry import api
    from netdiff.telemetry.settings import load_configs

    cfg = load_configs(configs)
    if model_dir:
        cfg = {**cfg, "data": {**api.roles_of_model(model_dir).to_dict(), **(cfg.get("data") or {})}}
    roles = _roles(cfg, sequence_key, time_column, time_format, attributes, features, categorical)
    iterations = iterations or int((cfg.get("evaluate") or {}).get("iterations", 300))
    if threads:
        import torch

        torch.set_num_threads(threads)
    report = api.evaluate(real_path, synthetic_path, roles, out_dir, seed=seed, iterations=iterations, plots=plots,
                          downstream=dict(cfg.get("downstream") or {}) if downstream else None)
    keys = ("m", "autocorrelation_mse", "cross_correlation", "discriminative_score", "predictive_score")
    click.echo(json.dumps({k: report.get(k) for k in keys}))
