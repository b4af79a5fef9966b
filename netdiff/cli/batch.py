"""netdiff batch: run a resumable pipeline (pipelines/*.yaml)."""
from __future__ import annotations

import json
from pathlib import Path

import click

from netdiff.errors import NetdiffError


def _summary(out: Path, echo) -> None:
    """The lines a user looks for at the end: where the pcaps are, validity, fidelity."""
    pcaps = out / "synthetic_pcaps"
    if pcaps.is_dir():
        n = len(list(pcaps.rglob("*.pcap")))
        echo(f"synthetic pcaps: {n} files in {pcaps}")
    for name in ("validation", "evaluation"):
        rep = out / name / "report.json"
        if not rep.exists():
            continue
        doc = json.loads(rep.read_text())
        if name == "validation":
            t = doc.get("total", {})
            rep = t.get("replay")
            replay = rep if isinstance(rep, str) else f"replayed {rep.get('sent')} sent, {rep.get('failed')} failed"
            echo(f"validation: {'PASS, every packet valid' if doc.get('ok') else 'FAIL'} "
                 f"({t.get('packets')} packets in {t.get('files')} files; malformed {t.get('malformed')}, "
                 f"checksum errors {t.get('checksum_errors')}, rule failures {t.get('rule_failed_packets')}; "
                 f"{replay})")
        else:
            try:
                from netdiff.eval import summary_line
                echo(f"fidelity: {summary_line(doc)}")
            except Exception:   # an older report format: show the headline keys
                echo(f"fidelity: see {rep}")


@click.command("batch", short_help="Run a resumable pipeline (pipelines/*.yaml).")
@click.argument("pipeline", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="output folder (default: the pipeline's 'out')")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="override a pipeline variable")
@click.option("--force", is_flag=True, help="rerun every stage even when up to date")
def batch_cmd(pipeline, out_dir, sets, force):
    """Run PIPELINE's stages in order; finished stages are skipped, an interrupted one redone.

    Killed at any moment (even kill -9) and run again, it finishes with nothing lost,
    duplicated or half-written. Progress goes to the terminal and to OUT/batch.log."""
    from netdiff.pipeline.stages import Pipeline, Runner
    from netdiff.cli import main

    overrides = {}
    for s in sets:
        if "=" not in s:
            raise NetdiffError(f"--set needs KEY=VALUE (got {s!r})")
        k, v = s.split("=", 1)
        overrides[k] = v
    pipe = Pipeline.load(pipeline, out_dir, overrides)
    # stages run in this process, through the same dispatcher as a command typed at the prompt
    Runner(pipe, echo=click.echo, force=force, command=main).run()
    _summary(pipe.out, click.echo)
