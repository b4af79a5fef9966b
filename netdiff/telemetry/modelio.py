"""Saved telemetry models: one folder with ``model.safetensors`` (weights) and ``config.json``
(model kind, hyper-parameters, column roles, scaling). Nothing is unpickled on load."""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np

from netdiff.errors import NetdiffError
from netdiff.io.atomic import atomic_path, atomic_write_text

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FORMAT_VERSION = 1

# model kind -> "module:class"; each class has fit / generate / save / load
MODELS = {
    "doppelganger": "netdiff.telemetry.doppelganger:DoppelGANger",
    "timegan": "netdiff.telemetry.timegan:TimeGAN",
    "ar": "netdiff.telemetry.baselines:ARBaseline",
    "par": "netdiff.telemetry.baselines:PARBaseline",
    "tvae": "netdiff.telemetry.sdv_tabular:TVAEBaseline",
    "ctgan": "netdiff.telemetry.sdv_tabular:CTGANBaseline",
}


def model_class(kind: str):
    if kind not in MODELS:
        raise NetdiffError(f"unknown telemetry model {kind!r} (choose from {', '.join(MODELS)})")
    module, attr = MODELS[kind].split(":")
    return getattr(importlib.import_module(module), attr)


def save(directory, kind: str, tensors: dict, meta: dict) -> Path:
    """Write weights (a flat name -> tensor dict) and metadata; each file atomically."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(directory / WEIGHTS) as tmp:
        save_file(tensors, str(tmp))
    doc = {"format": FORMAT_VERSION, "kind": kind, **meta}
    atomic_write_text(directory / CONFIG, json.dumps(doc, indent=2, default=_json_default))
    return directory


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read(directory) -> tuple[dict, dict]:
    """(metadata, tensors) of a saved model folder."""
    from safetensors.torch import load_file

    directory = Path(directory)
    cfg, weights = directory / CONFIG, directory / WEIGHTS
    if not cfg.is_file() or not weights.is_file():
        raise NetdiffError(f"{directory}: not a telemetry model folder (needs {CONFIG} and {WEIGHTS})")
    try:
        meta = json.loads(cfg.read_text())
    except json.JSONDecodeError as e:
        raise NetdiffError(f"{cfg}: invalid JSON ({e})") from e
    if meta.get("format") != FORMAT_VERSION or meta.get("kind") not in MODELS:
        raise NetdiffError(f"{cfg}: unsupported model format or kind")
    try:
        tensors = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise NetdiffError(f"{weights}: cannot read weights ({e})") from e
    return meta, tensors


def load(directory):
    """Rebuild whichever model a folder holds."""
    meta, tensors = read(directory)
    return model_class(meta["kind"]).from_saved(meta, tensors)
