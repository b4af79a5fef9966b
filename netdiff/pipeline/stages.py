"""Resumable pipelines: ``netdiff batch PIPELINE.yaml``.

A pipeline is a list of stages, each one netdiff command with its outputs named. A stage writes
into ``<output>.partial`` and the folder is renamed into place only when the command succeeded,
so an output that exists is complete. What a stage prints, and the log, name its output by the
path it has once the stage is done, never by the ``.partial`` folder that is gone by then.
``<out>/manifest.json`` records for each finished stage the command, a hash of its inputs and
every file it wrote (size and sha256); a stage is skipped only when its command and inputs are the
same and its output still holds exactly those files, and otherwise redone with a line saying why
(a file deleted, edited or added inside a finished stage's output included). One run at a time:
a run holds the lock of ``<out>`` (``netdiff.io.lock``), so a second run on the same folder is
refused at once, naming the first. Killed at any moment (kill -9)
and run again, a pipeline redoes only the stage that was interrupted: nothing is lost,
duplicated or half-written. A stage that declares ``resume`` (extra arguments with which its
command continues in the folder it had begun: ``--resume latest`` for training,
``--skip-existing`` for generation) keeps that folder when the same command on the same inputs
is run again, so an interrupted day of training or generation goes on from its last checkpoint
or image instead of starting over.

``launcher: accelerate`` runs a stage's command under ``accelerate launch`` (every GPU of the
machine by default; ``launch_args`` adds launcher options such as ``--num_processes 4``):
training stages spread their batches, generation stages split their images over the processes.

Every other stage goes to the command runner the engine is given: a callable that takes a
command's arguments (``["pcap2img", "captures", "images"]``) and returns its exit status. The
``netdiff batch`` command passes its own dispatcher, so stages run in its process; the default,
``run_in_subprocess``, runs each stage as ``python -m netdiff`` in a child process, so that this
library never imports its command-line interface.

Pipeline YAML::

    name: demo
    out: out/demo                 # relative to the YAML file's folder
    vars: {seed: 0}
    stages:
      - name: images
        run: pcap2img {captures} {output} --height 32
        inputs: [captures]        # names of earlier outputs or paths
        output: images            # the folder this stage makes, under out/
      - name: model
        run: train-base {images} --config compact --output {output}
        inputs: [images]
        output: model
        launcher: accelerate      # optional; launch_args: "--num_processes 2"
        resume: --resume latest   # optional
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from netdiff.errors import NetdiffError
from netdiff.io.atomic import atomic_write_text
from netdiff.io.lock import LOCK_NAME, output_lock, unfinished

MANIFEST = "manifest.json"

# A command's arguments (without "netdiff") -> its exit status.
CommandRunner = Callable[[list[str]], int]


@dataclass
class Stage:
    name: str
    run: str
    output: str | None = None
    inputs: list[str] = field(default_factory=list)
    launcher: str | None = None          # None: in process; "accelerate": accelerate launch
    launch_args: list[str] = field(default_factory=list)
    resume: list[str] = field(default_factory=list)   # arguments that continue a begun output


@dataclass
class Pipeline:
    name: str
    out: Path
    vars: dict
    stages: list[Stage]
    path: Path

    @classmethod
    def load(cls, path, out: str | None = None, overrides: dict | None = None) -> "Pipeline":
        import yaml

        path = Path(path)
        try:
            doc = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise NetdiffError(f"{path}: no such pipeline file") from None
        except yaml.YAMLError as e:
            raise NetdiffError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("stages"), list) or not doc["stages"]:
            raise NetdiffError(f"{path}: a pipeline needs a 'stages' list")
        stages, names = [], set()
        for i, s in enumerate(doc["stages"]):
            if not isinstance(s, dict) or "name" not in s or "run" not in s:
                raise NetdiffError(f"{path}: stage {i + 1} needs 'name' and 'run'")
            unknown = set(s) - {"name", "run", "output", "inputs", "launcher", "launch_args", "resume"}
            if unknown:
                raise NetdiffError(f"{path}: stage {s['name']!r} has unknown keys {sorted(unknown)}")
            if s["name"] in names:
                raise NetdiffError(f"{path}: two stages are named {s['name']!r}")
            names.add(s["name"])
            if s.get("launcher") not in (None, "accelerate"):
                raise NetdiffError(f"{path}: stage {s['name']!r}: launcher must be 'accelerate' or absent")
            if s.get("launch_args") and s.get("launcher") != "accelerate":
                raise NetdiffError(f"{path}: stage {s['name']!r}: launch_args need launcher: accelerate")
            if s.get("resume") and not s.get("output"):
                raise NetdiffError(f"{path}: stage {s['name']!r}: resume needs an output folder")
            stages.append(Stage(s["name"], str(s["run"]), s.get("output"), list(s.get("inputs", [])),
                                s.get("launcher"), _args(s.get("launch_args")), _args(s.get("resume"))))
        base = path.parent
        out_dir = Path(os.path.normpath(Path(out) if out else base / str(doc.get("out", f"out/{path.stem}"))))
        variables = {k: str(v) for k, v in (doc.get("vars") or {}).items()}
        variables.update({k: str(v) for k, v in (overrides or {}).items()})
        return cls(str(doc.get("name", path.stem)), out_dir, variables, stages, path)


def _args(value) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else shlex.split(str(value))


def scan_tree(path: Path) -> tuple[str, dict[str, list]]:
    """``(tree_hash, {relative path: [size, sha256]})`` of a file or folder, in one read.
    Lock files (``.netdiff.lock``) are left out: they come and go with their writers."""
    h = hashlib.sha256()
    path = Path(path)
    if path.is_file():
        files = [path]
        root = path.parent
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name != LOCK_NAME)
        root = path
    else:
        return "missing", {}
    listing = {}
    for f in files:
        rel = str(f.relative_to(root))
        h.update(rel.encode() + b"\0")
        one = hashlib.sha256()
        size = 0
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
                one.update(block)
                size += len(block)
        h.update(b"\0")
        listing[rel] = [size, one.hexdigest()]
    return h.hexdigest(), listing


def tree_hash(path: Path) -> str:
    """sha256 over a file, or over a folder's relative paths and file contents, in order."""
    return scan_tree(path)[0]


def _some(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def output_changes(path: Path, record: dict) -> str | None:
    """Why the output ``path`` of a finished stage no longer is what its manifest ``record``
    says the stage wrote (missing, unfinished, files missing, changed or added), or None."""
    path = Path(path)
    if not path.exists():
        return f"its output {path} is missing"
    why = unfinished(path) if path.is_dir() else None
    if why:
        return f"its output {path} is unfinished ({why})"
    digest, files = scan_tree(path)
    recorded = record.get("files")
    if recorded is None:            # a manifest written before file lists were kept
        return None if digest == record.get("output") else f"its output {path} changed since it was made"
    missing = sorted(set(recorded) - set(files))
    added = sorted(set(files) - set(recorded))
    changed = sorted(f for f in set(recorded) & set(files) if files[f] != list(recorded[f]))
    parts = [f"{len(names)} file{'s' if len(names) > 1 else ''} {what} ({_some(names)})"
             for names, what in ((missing, "missing"), (changed, "changed"), (added, "added")) if names]
    if parts:
        return f"its output {path} changed since it was made: {'; '.join(parts)}"
    return None


class FinalPaths(io.TextIOBase):
    """A text stream that passes whole lines on to ``target`` with every ``.partial`` path of
    ``renames`` replaced by the path it is renamed to; stage output goes through it, so the
    lines a user reads after the stage name folders that exist."""

    def __init__(self, target, renames: dict[str, str]):
        self.target = target
        # longest first: an absolute path holds its relative spelling as its end
        self.renames = sorted(renames.items(), key=lambda kv: -len(kv[0]))
        self.pending = ""

    def _fix(self, text: str) -> str:
        for old, new in self.renames:
            text = text.replace(old, new)
        return text

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        head, sep, self.pending = (self.pending + text).rpartition("\n")
        if sep:       # a path is only rewritten whole, so only complete lines go on
            self.target.write(self._fix(head + sep))
        return len(text)

    def flush(self) -> None:
        self.target.flush()

    def close_line(self) -> None:
        """Pass on a last line that never got its newline."""
        if self.pending:
            self.target.write(self._fix(self.pending))
            self.pending = ""
        self.target.flush()

    def isatty(self) -> bool:       # commands decide on colours and progress bars as before
        return self.target.isatty()

    def writable(self) -> bool:
        return True

    @property
    def buffer(self):
        """Binary output (``netdiff nprint`` without -W: the CSV) goes straight on."""
        self.close_line()
        return self.target.buffer

    @property
    def encoding(self):
        return getattr(self.target, "encoding", "utf-8")

    @property
    def errors(self):
        return getattr(self.target, "errors", "strict")


def _die_with_parent() -> None:
    """Linux: the child is killed with the pipeline process, so a pipeline killed with kill -9
    leaves no stage writing on into a ``.partial`` folder that the next run starts over."""
    import ctypes
    import signal

    ctypes.CDLL(None).prctl(1, signal.SIGKILL)        # 1: PR_SET_PDEATHSIG


def run_relayed(cmd: list[str]) -> int:
    """Run ``cmd`` with its stdout relayed line by line through ``sys.stdout`` (stderr, where
    progress bars go, stays the terminal); the same ``netdiff`` package is imported in it."""
    package_root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True, errors="replace",
                          preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None) as proc:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
        return proc.wait()


def run_in_subprocess(args: list[str]) -> int:
    """The default command runner: ``python -m netdiff ARGS`` in a child process."""
    return run_relayed([sys.executable, "-m", "netdiff", *args])


class Runner:
    def __init__(self, pipe: Pipeline, echo: Callable[[str], None] = print, force: bool = False,
                 command: CommandRunner | None = None):
        self.pipe = pipe
        self.echo = echo
        self.force = force
        self.command = command if command is not None else run_in_subprocess
        self.out = pipe.out
        self.manifest_path = self.out / MANIFEST
        self.log_path = self.out / "batch.log"

    # --- manifest ----------------------------------------------------------------------------
    def _load_manifest(self) -> dict:
        try:
            return json.loads(self.manifest_path.read_text())
        except FileNotFoundError:
            return {"pipeline": self.pipe.name, "stages": {}}
        except json.JSONDecodeError:
            raise NetdiffError(f"{self.manifest_path}: damaged manifest (delete it to start over)") from None

    def _save_manifest(self, m: dict) -> None:
        atomic_write_text(self.manifest_path, json.dumps(m, indent=1))

    def _log(self, msg: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}"
        with open(self.log_path, "a") as f:
            f.write(line + "\n")
        self.echo(msg)

    # --- paths and commands ---------------------------------------------------------------
    def _paths(self) -> dict[str, str]:
        return {s.output: str(self.out / s.output) for s in self.pipe.stages if s.output}

    def _resolve(self, name: str) -> Path:
        paths = self._paths()
        if name in paths:
            return Path(paths[name])
        if any(o == name or o.startswith(name.rstrip("/") + "/") for o in paths):
            return self.out / name          # a folder that several stages' outputs make up
        p = Path(self._format(name))
        return p if p.is_absolute() else (self.pipe.path.parent / p)

    def _format(self, text: str, **extra) -> str:
        values = {**self.pipe.vars, **self._paths(), "out": str(self.out),
                  "pipeline_dir": str(self.pipe.path.parent), **extra}
        try:
            return text.format(**values)
        except KeyError as e:
            raise NetdiffError(f"{self.pipe.path}: unknown placeholder {{{e.args[0]}}} in {text!r}") from None

    # --- running ---------------------------------------------------------------------------
    def run(self) -> dict:
        # one run per folder: a second is refused before it touches anything
        with output_lock(self.out, f"netdiff batch {self.pipe.path.name}", echo=self._log):
            manifest = self._load_manifest()
            from tqdm import tqdm

            self._log(f"pipeline {self.pipe.name}: {len(self.pipe.stages)} stages -> {self.out}")
            bar = tqdm(self.pipe.stages, desc=self.pipe.name, unit="stage", disable=not sys.stderr.isatty())
            for stage in bar:
                bar.set_postfix_str(stage.name)
                self._run_stage(stage, manifest)
            self._log(f"pipeline {self.pipe.name}: done")
            return manifest

    def _redo_reason(self, rec: dict | None, command: str, inputs: dict, final: Path | None) -> str | None:
        """Why a stage with a record must run again (None: it is up to date)."""
        if rec is None:
            return "not run yet"
        if self.force:
            return "--force"
        if rec["command"] != command:
            return "its command changed"
        changed = [n for n in inputs if rec["inputs"].get(n) != inputs[n]] + \
                  [n for n in rec["inputs"] if n not in inputs]
        if changed:
            return f"input {_some(changed)} changed"
        if final is None:
            return None
        return output_changes(final, rec)

    def _run_stage(self, stage: Stage, manifest: dict) -> None:
        inputs = {name: tree_hash(self._resolve(name)) for name in stage.inputs}
        missing = [n for n, h in inputs.items() if h == "missing"]
        if missing:
            raise NetdiffError(f"stage {stage.name}: input(s) missing: {', '.join(missing)}")
        made_here = self._paths()
        for name in stage.inputs:
            folder = self._resolve(name)
            if name in made_here or not folder.is_dir() or folder.resolve() == self.out.resolve():
                continue        # this run's own outputs are verified stage by stage
            why = unfinished(folder)
            if why:             # a folder from outside this pipeline that its writer left half done
                raise NetdiffError(f"stage {stage.name}: input {folder} is unfinished ({why}); "
                                   "run what writes it again first")
        final = self.out / stage.output if stage.output else None
        command = self._format(stage.run, output=str(final) if final else "")
        rec = manifest["stages"].get(stage.name)
        why = self._redo_reason(rec, command, inputs, final)
        if why is None:
            self._log(f"[{stage.name}] up to date, skipped")
            return
        if rec is not None and not self.force:
            self._log(f"[{stage.name}] redoing: {why}")
        partial = final.with_name(final.name + ".partial") if final else None
        attempt = {"command": command, "inputs": inputs}
        running = manifest.setdefault("running", {})
        resume = (partial is not None and stage.resume and not self.force
                  and running.get(stage.name) == attempt and partial.is_dir())
        if partial is not None and not resume:
            shutil.rmtree(partial, ignore_errors=True)
            if partial.exists():
                partial.unlink()
        running[stage.name] = attempt
        self._save_manifest(manifest)
        work_cmd = self._format(stage.run, output=str(partial) if partial else "")
        extra = stage.resume if resume else []
        args = shlex.split(work_cmd) + extra
        launch = (shlex.join(["accelerate", "launch", *stage.launch_args]) + " -m "
                  if stage.launcher == "accelerate" else "")
        # the command as the manifest records it: with the output folder the stage leaves behind
        self._log(f"[{stage.name}] {'resuming: ' if resume else ''}{launch}netdiff "
                  f"{shlex.join(shlex.split(command) + extra)}")
        t0 = time.perf_counter()
        renames = {str(partial): str(final), str(partial.resolve()): str(final.resolve())} if final else {}
        code = self._execute(stage, args, renames)
        if code != 0:
            if partial is not None and not stage.resume:
                shutil.rmtree(partial, ignore_errors=True)
            raise NetdiffError(f"stage {stage.name} failed (exit {code}); see {self.log_path}")
        if final is not None:
            final.parent.mkdir(parents=True, exist_ok=True)
            if not partial.exists():
                raise NetdiffError(f"stage {stage.name} wrote nothing to {{output}}")
            if final.exists():
                shutil.rmtree(final) if final.is_dir() else final.unlink()
            os.replace(partial, final)
        running.pop(stage.name, None)
        digest, files = scan_tree(final) if final else (None, None)
        manifest["stages"][stage.name] = {"command": command, "inputs": inputs, "output": digest,
                                          "files": files, "seconds": round(time.perf_counter() - t0, 2)}
        self._save_manifest(manifest)
        self._log(f"[{stage.name}] done in {time.perf_counter() - t0:.1f} s")

    def _execute(self, stage: Stage, args: list[str], renames: dict[str, str]) -> int:
        stream = FinalPaths(sys.stdout, renames)
        try:
            with redirect_stdout(stream):
                if stage.launcher == "accelerate":
                    # the launcher of this interpreter's environment, whether or not its bin/ is on PATH
                    return run_relayed([sys.executable, "-m", "accelerate.commands.launch",
                                        *stage.launch_args, "-m", "netdiff.cli", *args])
                return self.command(args)
        finally:
            stream.close_line()


def run_pipeline(path, out: str | None = None, overrides: dict | None = None, force: bool = False,
                 echo: Callable[[str], None] = print, command: CommandRunner | None = None) -> dict:
    """Run a pipeline YAML (``netdiff batch``); ``command`` runs each stage's netdiff command
    (default: ``run_in_subprocess``, one child process per stage)."""
    return Runner(Pipeline.load(path, out, overrides), echo=echo, force=force, command=command).run()
