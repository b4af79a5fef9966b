"""``netdiff evaluate``: how good is a synthetic trace, next to its calibration."""
from __future__ import annotations

from pathlib import Path

import click

from netdiff.cli.folders import checks_inputs, locks_output
from netdiff.errors import NetdiffError

_DIR = click.Path(file_okay=False, dir_okay=True, path_type=Path)


@click.command("evaluate", short_help="Score synthetic traffic against real traffic (report.json/.md).")
@click.option("--real", "real", type=_DIR, required=True,
              help="real traffic: pcaps (<class>/*.pcap) or PNG images (<class>/*.png)")
@click.option("--synthetic", "synthetic", type=_DIR, required=True,
              help="synthetic traffic, same kinds of folder")
@click.option("--out", "out", type=_DIR, required=True, help="folder for report.json, report.md, figures")
@click.option("--training", "training", type=_DIR, default=None,
              help="the generator's training set, for the memorisation audit "
                   "(default: half of --real stands in for it)")
@click.option("--seed", type=int, default=0, show_default=True, help="seed for splits, samplers, models")
@click.option("--no-figures", is_flag=True, help="skip the matplotlib figures")
@click.option("--no-compliance", is_flag=True, help="skip netdiff validate on the synthetic pcaps")
@checks_inputs("real", "synthetic", "training")
@locks_output("out")
def evaluate_cmd(real: Path, synthetic: Path, out: Path, training: Path | None, seed: int,
                 no_figures: bool, no_compliance: bool):
    """Fidelity (JSD/TVD/Hellinger per nPrint column, header fields, inter-arrival times, flows),
    utility (TSTR vs TRTR), classifier two-sample test, header-field mutual information,
    memorisation audit and compliance, each next to real-vs-real and column-marginal rows.

      netdiff evaluate --real real/ --synthetic synth/ --out report/
    """
    from netdiff.eval import evaluate, summary_line

    for name, p in (("--real", real), ("--synthetic", synthetic), ("--training", training)):
        if p is not None and not p.is_dir():
            raise NetdiffError(f"{name} {p}: no such folder")
    if out.exists() and not out.is_dir():
        raise NetdiffError(f"--out {out}: exists and is not a folder")
    report = evaluate(real, synthetic, out, training=training, seed=seed, figures=not no_figures,
                      compliance=not no_compliance)
    click.echo(summary_line(report))
    click.echo(f"report: {out / 'report.json'} and {out / 'report.md'}")
