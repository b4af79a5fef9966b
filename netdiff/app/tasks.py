"""The app's background tasks, each a few calls into netdiff's Python API.

A task takes the workspace, the job's JSON params and the worker's reporter, and returns a JSON
result. Every path in the params is resolved again through the workspace (a job spec is a file
a person could edit), config names are checked against the configs netdiff ships (its config
loaders also take a file path, which a browser must not choose), and each output folder is
written under netdiff's output lock, as the CLI's are.
"""
from __future__ import annotations

import os
import zipfile
from collections import Counter
from pathlib import Path

import netdiff
from netdiff.app.jobs import write_json
from netdiff.app.workspace import Workspace, safe_name
from netdiff.errors import NetdiffError
from netdiff.io.atomic import atomic_open
from netdiff.io.lock import output_lock

CONFIGS = Path(netdiff.__file__).resolve().parent / "configs"
SUMMARY = "summary.json"         # beside the images: conversion counts and protocols per class
VALIDATION = "validation.json"   # in a generation run: netdiff validate's report
ZIP = "pcaps.zip"


def config_names(kind: str) -> list[str]:
    """The configs netdiff ships for ``kind`` ("model" or "telemetry"), by name."""
    return sorted(p.stem for p in (CONFIGS / kind).glob("*.yaml"))


def shipped_config(kind: str, name: str) -> str:
    if name not in config_names(kind):
        raise NetdiffError(f"unknown {kind} config {name!r} (choose from {', '.join(config_names(kind))})")
    return str(CONFIGS / kind / f"{name}.yaml")


def protocol_counts(captures: list[tuple[Path, str]]) -> dict:
    """Per class: packets by IP version and transport, and those the encoder leaves out."""
    from netdiff.bits.codec import encode

    out: dict[str, Counter] = {}
    layout = netdiff.named_layout("nprint")
    for path, cls in captures:
        batch, _ = netdiff.read_capture(path)
        _, parsed = encode(batch, layout)
        c = out.setdefault(cls, Counter())
        ok = parsed.reason == 0
        c["packets"] += len(parsed.reason)
        c["left out"] += int((~ok).sum())
        for name, mask in (("IPv4", parsed.version == 4), ("IPv6", parsed.version == 6),
                           ("TCP", parsed.proto == 6), ("UDP", parsed.proto == 17), ("ICMP", parsed.proto == 1)):
            c[name] += int((mask & ok).sum())
    return {cls: dict(c) for cls, c in sorted(out.items())}


def convert(ws: Workspace, p: dict, report) -> dict:
    """Captures (a folder of <class>/*.pcap) -> nPrint images, plus protocol counts."""
    from netdiff.pipeline.conversions import find_captures     # the pairs pcap2img itself converts

    src, out = ws.path(p["captures"]), ws.path(p["images"])
    report.step("converting captures to images")
    with output_lock(out, "netdiff app convert"):
        summary = netdiff.pcap2img(src, out, layout=netdiff.named_layout("netdiffusion", height=int(p.get("height", 32))),
                                   progress=lambda name: report.step(f"converted {os.path.basename(name)}"))
        report.step("counting protocols")
        doc = {"convert": summary.to_dict(), "protocols": protocol_counts(find_captures(src))}
        write_json(out / SUMMARY, doc)
    if summary.images == 0:
        raise NetdiffError("no images were made: " + ("; ".join(summary.errors) or "the captures hold no IP packets"))
    return {"images": ws.rel(out), "count": summary.images, "errors": summary.errors}


def train(ws: Workspace, p: dict, report) -> dict:
    out = ws.path(p["model"])
    with output_lock(out, "netdiff app train-base"):
        report.step("training")
        result = netdiff.train_base(ws.path(p["images"]), out, config=shipped_config("model", p.get("config", "tiny")),
                                    steps=int(p["steps"]), seed=int(p.get("seed", 0)), progress=True)
    return {"model": ws.rel(out), "steps": result.steps, "losses": result.losses, "seconds": result.seconds}


def generate(ws: Workspace, p: dict, report) -> dict:
    """Images of one class, repaired into pcaps, validated, zipped."""
    run = ws.path(p["output"])
    cls = safe_name(p["class"], "class")
    sampler = {"unmask_order": p["unmask_order"]} if p.get("unmask_order") else {}
    if p.get("scheduler"):
        sampler["scheduler"] = p["scheduler"]
    with output_lock(run, "netdiff app generate"):
        report.step("generating images")
        images = run / "images" / cls
        result = netdiff.generate(ws.path(p["model"]), cls, int(p["count"]), int(p.get("seed", 0)), output=images,
                                  steps=int(p["steps"]) if p.get("steps") else None, pcap=True, **sampler)
        # evaluate wants pcaps and PNGs in separate folders: move the repaired pcaps beside
        pcaps = run / "pcaps" / cls
        pcaps.mkdir(parents=True, exist_ok=True)
        moved = []
        for pc in result.pcaps:
            os.replace(pc, pcaps / Path(pc).name)
            moved.append(pcaps / Path(pc).name)
        report.step("validating the pcaps")
        validation = netdiff.validate([str(m) for m in moved], replay=False)
        write_json(run / VALIDATION, validation)
        with atomic_open(run / ZIP) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
            for m in moved:
                z.write(m, f"{cls}/{m.name}")
    return {"run": ws.rel(run), "class": cls, "images": [ws.rel(i) for i in result.images],
            "pcaps": [ws.rel(m) for m in moved], "ok": bool(validation["ok"])}


def evaluate(ws: Workspace, p: dict, report) -> dict:
    from netdiff.eval import summary_line

    out = ws.path(p["output"])
    with output_lock(out, "netdiff app evaluate"):
        report.step("evaluating")
        result = netdiff.evaluate(ws.path(p["real"]), ws.path(p["synthetic"]), out, seed=int(p.get("seed", 0)))
    return {"report": ws.rel(out), "summary": summary_line(result)}


def telemetry(ws: Workspace, p: dict, report) -> dict:
    """Train a telemetry model, sample it, evaluate (metrics, figures, downstream tasks)."""
    from netdiff.telemetry import api
    from netdiff.telemetry.settings import load_configs, output_sequence_column, roles_from

    config = load_configs([shipped_config("telemetry", p.get("config", "tiny"))])
    roles = roles_from(config, **p["roles"])
    data = ws.path(p["data"])
    out = ws.path(p["output"])
    kind = p.get("model", "doppelganger")
    with output_lock(out, "netdiff app telemetry"):
        # what the page needs to read the run back: the table, the roles, the synthetic key column
        write_json(out / "run.json", {"data": ws.rel(data), "model": kind, "roles": roles.to_dict(),
                                      "synthetic_key": output_sequence_column(roles)})
        report.step(f"training {kind}")
        model, real = api.train(kind, data, roles, config, out / "model" if kind != "par" else None,
                                seed=int(p.get("seed", 0)), epochs=int(p["epochs"]) if p.get("epochs") else None,
                                progress=True)
        report.step("sampling")
        synthetic = out / "synthetic.csv"
        api.write_samples(model, int(p.get("count") or real.n), synthetic, seed=int(p.get("seed", 0)))
        report.step("evaluating")
        ev = dict(config.get("evaluate") or {})
        metrics = api.evaluate(data, synthetic, roles, out, seed=int(p.get("seed", 0)),
                               iterations=int(ev.get("iterations", 300)), downstream=dict(config.get("downstream") or {}))
    return {"run": ws.rel(out), "synthetic": ws.rel(synthetic), "metrics": ws.rel(out / "metrics.json"),
            "plots": metrics.get("plots", [])}


TASKS = {"convert": convert, "train": train, "generate": generate, "evaluate": evaluate, "telemetry": telemetry}
