"""netdiff batch: stages are skipped when up to date, and a pipeline killed with SIGKILL at any
moment then run again gives the same outputs as one run straight through."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import yaml

from netdiff.pipeline.stages import FinalPaths, run_pipeline, tree_hash

REPO = Path(__file__).resolve().parents[2]


def write_pipeline(tmp: Path, stages: list[dict]) -> Path:
    p = tmp / "p.yaml"
    p.write_text(yaml.safe_dump({"name": "t", "out": "out", "vars": {"seed": 3}, "stages": stages}))
    return p


STAGES = [
    {"name": "samples", "run": "samples {output} --seed {seed}", "output": "captures"},
    {"name": "images", "run": "pcap2img {captures} {output} --height 64", "inputs": ["captures"], "output": "images"},
    {"name": "rebuilt", "run": "img2pcap {images} {output}", "inputs": ["images"], "output": "rebuilt"},
]


def outputs(out: Path) -> dict[str, str]:
    """Hashes of every output file, with the run's own folder name taken out of sidecars."""
    res = {}
    for f in sorted(out.rglob("*")):
        if not f.is_file() or f.name in ("manifest.json", "batch.log"):
            continue
        data = f.read_bytes()
        if f.suffix == ".png":       # pixels; text chunks name the run's own model folder
            import numpy as np
            from PIL import Image
            data = np.asarray(Image.open(f)).tobytes()
        if f.suffix == ".json":
            doc = json.loads(data)
            doc.get("source", {}).pop("path", None)
            data = json.dumps(doc, sort_keys=True).encode()
        res[str(f.relative_to(out))] = tree_hash_bytes(data)
    return res


def tree_hash_bytes(b: bytes) -> str:
    import hashlib
    return hashlib.sha256(b).hexdigest()


def test_up_to_date_stages_are_skipped_and_changes_rerun(tmp_path):
    p = write_pipeline(tmp_path, STAGES)
    logs = []
    run_pipeline(p, echo=logs.append)
    assert not any("skipped" in line for line in logs)
    logs.clear()
    run_pipeline(p, echo=logs.append)
    assert sum("up to date, skipped" in line for line in logs) == 3
    # a changed output is noticed and rebuilt
    victim = next((tmp_path / "out" / "rebuilt").rglob("*.pcap"))
    victim.write_bytes(b"damaged")
    logs.clear()
    run_pipeline(p, echo=logs.append)
    assert any(line.startswith("[rebuilt] netdiff") for line in logs)
    assert victim.read_bytes() != b"damaged"
    assert not list((tmp_path / "out").glob("*.partial"))


def test_bad_pipeline_files(tmp_path, cli):
    f = tmp_path / "bad.yaml"
    f.write_text("stages: [")
    code, _, err = cli("batch", f)
    assert code == 1 and "not valid YAML" in err
    f.write_text(yaml.safe_dump({"stages": [{"name": "x"}]}))
    code, _, err = cli("batch", f)
    assert code == 1 and "needs 'name' and 'run'" in err
    f.write_text(yaml.safe_dump({"stages": [{"name": "x", "run": "pcap2img {nothing} {output}", "output": "o"}]}))
    code, _, err = cli("batch", f)
    assert code == 1 and "unknown placeholder {nothing}" in err
    code, _, err = cli("batch", tmp_path / "missing.yaml")
    assert code == 1 and "no such pipeline file" in err


def test_stage_messages_name_final_paths(tmp_path, cli):
    """What stages print and the log name the folders as they are once the stage is done."""
    p = write_pipeline(tmp_path, STAGES[:2])
    code, out, err = cli("batch", p)
    assert code == 0, err
    final = tmp_path / "out"
    assert f"wrote 6 captures under {final / 'captures'}\n" in out
    assert f"-> {final / 'images'}\n" in out
    assert f"[images] netdiff pcap2img {final / 'captures'} {final / 'images'} --height 64" in out
    assert ".partial" not in out + err + (final / "batch.log").read_text()


def test_the_command_runner_is_the_callers(tmp_path):
    seen = []

    def runner(args):
        seen.append(args)
        Path(args[1]).mkdir(parents=True)
        print("made", args[1], end="")          # a last line without its newline is passed on too
        return 0

    p = write_pipeline(tmp_path, [{"name": "s", "run": "samples {output}", "output": "captures"}])
    printed = io.StringIO()
    with redirect_stdout(printed):
        run_pipeline(p, echo=lambda s: None, command=runner)
    assert seen == [["samples", str(tmp_path / "out" / "captures.partial")]]
    assert printed.getvalue() == f"made {tmp_path / 'out' / 'captures'}"
    assert (tmp_path / "out" / "captures").is_dir()


def test_final_paths_rewrites_whole_lines_only():
    target = io.StringIO()
    s = FinalPaths(target, {"/o/x.partial": "/o/x", "o/x.partial": "o/x"})
    s.write("to /o/x.par")
    assert target.getvalue() == ""              # half a path is held back, not half rewritten
    s.write("tial/r.json\nand o/x.partial\n")
    s.write("tail o/x.partial")
    s.close_line()
    assert target.getvalue() == "to /o/x/r.json\nand o/x\ntail o/x"


def test_the_engine_never_imports_the_cli(tmp_path):
    """The library runs stages in child processes by default; netdiff batch passes its own."""
    p = write_pipeline(tmp_path, STAGES[:1])
    code = ("import sys\n"
            "import netdiff.pipeline.stages\n"
            "cli = lambda: sorted(m for m in sys.modules if m.split('.')[:2] == ['netdiff', 'cli'])\n"
            "assert not cli(), cli()\n"
            f"netdiff.pipeline.stages.run_pipeline({str(p)!r}, echo=lambda s: None)\n"
            "assert not cli(), cli()\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "wrote 6 captures under" in proc.stdout
    assert list((tmp_path / "out" / "captures").rglob("*.pcap"))


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    d = tmp_path_factory.mktemp("straight")
    run_pipeline(write_pipeline(d, STAGES), echo=lambda s: None)
    return d


@pytest.mark.parametrize("kill_after", [1.0, 3.0])
def test_killed_and_resumed_equals_straight_through(tmp_path, straight, kill_after):
    resumed = tmp_path / "b"
    resumed.mkdir()
    p = write_pipeline(resumed, STAGES)
    proc = subprocess.Popen([sys.executable, "-m", "netdiff.cli", "batch", str(p)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(kill_after)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    run_pipeline(p, echo=lambda s: None)
    assert outputs(straight / "out") == outputs(resumed / "out")
    assert not list((resumed / "out").glob("*.partial"))


PIPELINES = sorted((REPO / "pipelines").glob("*.yaml"))


@pytest.mark.parametrize("path", PIPELINES, ids=[p.stem for p in PIPELINES])
def test_shipped_pipelines_name_real_commands_and_options(path):
    """Every stage of pipelines/*.yaml is a netdiff command, with options that command has."""
    import click

    from netdiff.pipeline.stages import Pipeline
    from netdiff.cli import cli

    pipe = Pipeline.load(path)
    ctx = click.Context(cli)
    for stage in pipe.stages:
        words = stage.run.split()
        cmd = cli.get_command(ctx, words[0])
        assert cmd is not None, f"{stage.name}: unknown command {words[0]}"
        known = {o for p in cmd.params for o in getattr(p, "opts", []) + getattr(p, "secondary_opts", [])}
        for w in words[1:] + stage.resume:
            if w.startswith("-"):
                assert w in known, f"{path.name}: stage {stage.name}: {words[0]} has no option {w}"


DEMO_SET = ["train_steps=6", "count=1", "sample_steps=3"]


def demo_overrides():
    return dict(s.split("=") for s in DEMO_SET)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The demo pipeline through the Python API: (out folder, echoed lines, what stages printed)."""
    out = tmp_path_factory.mktemp("demo") / "out"
    logs, printed = [], io.StringIO()
    with redirect_stdout(printed):
        run_pipeline(REPO / "pipelines" / "demo.yaml", out=str(out), overrides=demo_overrides(), echo=logs.append)
    return out, logs, printed.getvalue()


@pytest.fixture(scope="module")
def demo_straight(demo_run):
    return demo_run[0]


def test_demo_names_its_report_where_it_is(demo_run):
    """The evaluate stage writes into evaluation.partial; its last line names evaluation/."""
    out, logs, printed = demo_run
    report = out / "evaluation" / "report.json"
    assert f"report: {report} and {report.with_suffix('.md')}" in printed
    assert report.is_file()
    assert ".partial" not in printed + "\n".join(logs) + (out / "batch.log").read_text()


def test_demo_pipeline_end_to_end(demo_straight):
    """The README's main job (with fewer steps): generated pcaps exist, all valid, evaluated."""
    pcaps = sorted((demo_straight / "synthetic_pcaps").rglob("*.pcap"))
    assert {p.parent.name for p in pcaps} == {"web_tcp", "dns_udp", "icmp_echo"}
    val = json.loads((demo_straight / "validation" / "report.json").read_text())
    assert val["ok"] and val["total"]["packets"] > 0
    rep = json.loads((demo_straight / "evaluation" / "report.json").read_text())
    assert {"jsd", "tstr", "trtr", "c2st_auc"} <= set(rep)


def test_demo_killed_during_training_resumes_to_the_same_outputs(tmp_path, demo_straight):
    out = tmp_path / "out"
    args = [sys.executable, "-m", "netdiff.cli", "batch", str(REPO / "pipelines" / "demo.yaml"), "--out", str(out)]
    for s in DEMO_SET:
        args += ["--set", s]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "model.partial").exists():
        time.sleep(0.2)
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    run_pipeline(REPO / "pipelines" / "demo.yaml", out=str(out), overrides=demo_overrides(), echo=lambda s: None)
    def comparable(tree):   # reports and training logs hold timings; everything else must match
        return {k: v for k, v in outputs(tree).items()
                if not k.startswith(("evaluation/", "validation/", "model/train_log.json", "model/loss.png"))}

    a, b = comparable(demo_straight), comparable(out)
    assert any(k.startswith("model/") for k in a) and any(k.startswith("synthetic_pcaps/") for k in a)
    assert a == b
    assert json.loads((out / "validation" / "report.json").read_text())["ok"]


def gen_pipeline(tmp: Path, model: Path, count: int = 12, **extra) -> Path:
    """One generation stage on an existing model, resumable."""
    stage = {"name": "gen", "inputs": ["{model_dir}"], "output": "gen", "resume": "--skip-existing",
             "run": f"generate --model {{model_dir}} --class web_tcp --count {count} --seed 0 --steps 3 "
                    "--batch-size 1 --output {output} --quiet", **extra}
    p = tmp / "g.yaml"
    p.write_text(yaml.safe_dump({"name": "g", "out": "out", "vars": {"model_dir": str(model)}, "stages": [stage]}))
    return p


def png_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


@pytest.fixture(scope="module")
def gen_straight(tmp_path_factory, demo_straight):
    d = tmp_path_factory.mktemp("gen")
    run_pipeline(gen_pipeline(d, demo_straight / "model"), echo=lambda s: None)
    return d / "out" / "gen"


def test_generation_killed_midway_goes_on_from_its_last_image(tmp_path, demo_straight, gen_straight):
    p = gen_pipeline(tmp_path, demo_straight / "model")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "netdiff.cli", "batch", str(p)], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = tmp_path / "out" / "gen.partial"
    deadline = time.time() + 180
    while time.time() < deadline and len(list(partial.glob("*.png"))) < 3 and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    made = {f.name: f.stat().st_mtime_ns for f in partial.glob("*.png")}
    assert 3 <= len(made) < 12, "the stage should have been killed midway"
    logs = []
    run_pipeline(p, echo=logs.append)
    assert any(line.startswith("[gen] resuming: netdiff generate") for line in logs)
    final = tmp_path / "out" / "gen"
    assert all((final / n).stat().st_mtime_ns == t for n, t in made.items())    # not redone
    assert png_bytes(final) == png_bytes(gen_straight)
    assert sorted(f.name for f in final.iterdir()) == sorted(png_bytes(gen_straight))  # no stray files
    assert not (tmp_path / "out" / "gen.partial").exists()


def test_changed_command_does_not_resume_a_stale_folder(tmp_path, demo_straight):
    """A .partial left by another command (or other inputs) is started over, not continued."""
    p = gen_pipeline(tmp_path, demo_straight / "model", count=2)
    partial = tmp_path / "out" / "gen.partial"
    partial.mkdir(parents=True)
    (partial / "web_tcp_000000.png").write_bytes(b"left by something else")
    logs = []
    run_pipeline(p, echo=logs.append)
    assert not any("resuming" in line for line in logs)
    assert (tmp_path / "out" / "gen" / "web_tcp_000000.png").read_bytes() != b"left by something else"


def test_generation_stage_under_accelerate_launch(tmp_path, demo_straight, gen_straight, monkeypatch, capfd):
    """launcher: accelerate splits a stage's images over processes (CPU stand-ins for GPUs)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    p = gen_pipeline(tmp_path, demo_straight / "model", launcher="accelerate",
                     launch_args="--multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no "
                                 "--dynamo_backend no")
    logs = []
    run_pipeline(p, echo=logs.append)
    assert png_bytes(tmp_path / "out" / "gen") == png_bytes(gen_straight)
    assert "[gen] accelerate launch --multi_gpu --num_processes 2" in (tmp_path / "out" / "batch.log").read_text()
    out = capfd.readouterr().out
    assert "generate (process 1 of 2): 6 images" in out and "generate (process 2 of 2): 6 images" in out
