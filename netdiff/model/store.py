"""Model folders: what train-base writes and what finetune / train-controlnet / generate load.

A netdiff model folder follows diffusers' one-subfolder-per-part convention (``unet/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``, ``autoencoder/``), every weight file in
safetensors, plus ``netdiff_model.json`` (class names, the netdiff config). The JSON is written last,
so a folder without it is an unfinished save. A diffusers Stable Diffusion folder (``model_index.json``,
e.g. a local SD 1.5) or a hub id the user names loads too; its VAE then maps RGB images to latents.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netdiff.errors import NetdiffError
from netdiff.io.atomic import atomic_write_bytes, atomic_write_text, replace_dir, stage_dir
from netdiff.model.config import ModelConfig
from netdiff.model.layouts import LAYOUTS_FILE

MODEL_JSON = "netdiff_model.json"
LORA_JSON = "netdiff_lora.json"
CONTROLNET_JSON = "netdiff_controlnet.json"
FORMAT_VERSION = 1


@dataclass
class ModelBundle:
    unet: Any
    text_encoder: Any
    tokenizer: Any
    autoencoder: Any          # TernaryAutoencoder or a diffusers AutoencoderKL
    scheduler: Any            # the training (DDPM) scheduler; its config seeds the samplers
    config: ModelConfig
    classes: list[str] = field(default_factory=list)   # empty: any class name (a foreign base)
    source: str = ""
    kind: str = "netdiff"     # "netdiff" or "diffusers"
    layouts: Any = None       # masked models: FlowChain / LayoutChain (row layouts and flows per class), else None


def write_json_atomic(path: Path, obj) -> None:
    """The model folders' JSON files: sorted keys and a final newline, so they diff cleanly."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def repair_files() -> tuple[str, ...]:
    """What pcap2img learns beside the images for repair (inter-arrival model, class field
    priors): class-level distributions, no packet or address. A model folder keeps a copy so that
    ``generate --pcap`` repairs with them."""
    from netdiff.pipeline.conversions import PRIORS_FILE, TIMING_FILE

    return TIMING_FILE, PRIORS_FILE


def save_model(bundle: ModelBundle, out_dir, images=None) -> Path:
    """The model folder; ``images``: the training image folder, whose repair models
    (``repair_files``) are copied in."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MODEL_JSON).unlink(missing_ok=True)       # the folder is incomplete until the end
    parts = {"unet": bundle.unet, "text_encoder": bundle.text_encoder, "tokenizer": bundle.tokenizer,
             "scheduler": bundle.scheduler, "autoencoder": bundle.autoencoder}
    for name, part in parts.items():
        staged = stage_dir(out, name)
        if name in ("unet", "text_encoder"):
            part.save_pretrained(staged, safe_serialization=True)
        else:
            part.save_pretrained(staged)
        replace_dir(staged, out / name)
    if bundle.layouts is not None:
        bundle.layouts.save(out)              # written whole before the JSON marks the folder complete
    else:
        (out / LAYOUTS_FILE).unlink(missing_ok=True)   # a masked model saved here before
    for name in repair_files():
        src = Path(images) / name if images is not None else None
        if src is not None and src.is_file():
            atomic_write_bytes(out / name, src.read_bytes())
        else:
            (out / name).unlink(missing_ok=True)      # never another training set's
    write_json_atomic(out / MODEL_JSON, {
        "format": "netdiff-model", "version": FORMAT_VERSION, "classes": list(bundle.classes),
        "space": bundle.config.image.space, "config": bundle.config.to_dict()})
    return out


def known_classes(path) -> list[str]:
    """The classes a netdiff model folder was trained on (``--class all``)."""
    if not is_netdiff_model(path):
        raise NetdiffError(f"{path}: --class all needs a netdiff model folder ({MODEL_JSON} names its classes)")
    classes = json.loads((Path(path) / MODEL_JSON).read_text()).get("classes", [])
    if not classes:
        raise NetdiffError(f"{path}: the model names no classes")
    return list(classes)


def is_netdiff_model(path) -> bool:
    return (Path(path) / MODEL_JSON).is_file()


def _looks_like_hub_id(s: str) -> bool:
    parts = s.split("/")
    return len(parts) == 2 and all(parts) and not s.startswith((".", "/", "~"))


def load_model(source, config: ModelConfig | None = None, torch_dtype=None) -> ModelBundle:
    """A netdiff model folder, a local diffusers Stable Diffusion folder, or a hub id (downloaded
    only because the user named it). ``config`` supplies image/training settings for a foreign base."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    from netdiff.model.flow_chain import load_structure
    from netdiff.model.ternary import TernaryAutoencoder

    src = str(source)
    path = Path(src).expanduser()
    kw = {} if torch_dtype is None else {"torch_dtype": torch_dtype}
    if path.is_dir() and is_netdiff_model(path):
        doc = json.loads((path / MODEL_JSON).read_text())
        if doc.get("format") != "netdiff-model":
            raise NetdiffError(f"{path / MODEL_JSON}: not a netdiff model description")
        cfg = ModelConfig.from_dict(doc["config"], source=str(path / MODEL_JSON))
        return ModelBundle(
            unet=UNet2DConditionModel.from_pretrained(path / "unet", use_safetensors=True, **kw),
            text_encoder=CLIPTextModel.from_pretrained(path / "text_encoder", use_safetensors=True, **kw),
            tokenizer=AutoTokenizer.from_pretrained(path / "tokenizer"),
            autoencoder=TernaryAutoencoder.from_pretrained(path / "autoencoder"),
            scheduler=_scheduler_class(cfg).from_pretrained(path / "scheduler"),
            config=cfg, classes=list(doc.get("classes", [])), source=str(path.resolve()), kind="netdiff",
            layouts=load_structure(path))
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise NetdiffError(f"{path}: neither a netdiff model folder ({MODEL_JSON}) nor a diffusers "
                               "pipeline folder (model_index.json)")
        where, local = str(path), True
    elif path.exists():
        raise NetdiffError(f"{path}: a model must be a folder")
    elif _looks_like_hub_id(src):
        where, local = src, False
    else:
        raise NetdiffError(f"{src}: no such model folder (and not a hub id like org/name)")
    cfg = config or ModelConfig.from_dict({"image": {"space": "vae"}})
    if cfg.image.space != "vae":
        raise NetdiffError(f"{src} is a Stable Diffusion pipeline: its config needs image.space: vae "
                           "(e.g. --config configs/model/sd15-lora.yaml)")
    try:
        opts = dict(local_files_only=local, **kw)
        return ModelBundle(
            unet=UNet2DConditionModel.from_pretrained(where, subfolder="unet", **opts),
            text_encoder=CLIPTextModel.from_pretrained(where, subfolder="text_encoder", **opts),
            tokenizer=AutoTokenizer.from_pretrained(where, subfolder="tokenizer", local_files_only=local),
            autoencoder=AutoencoderKL.from_pretrained(where, subfolder="vae", **opts),
            scheduler=DDPMScheduler.from_pretrained(where, subfolder="scheduler", local_files_only=local),
            config=cfg, classes=[], source=where if not local else str(path.resolve()), kind="diffusers")
    except (OSError, ValueError) as e:
        raise NetdiffError(f"{src}: cannot load the Stable Diffusion parts ({str(e).splitlines()[0]})") from None


def _scheduler_class(cfg: ModelConfig):
    if cfg.image.space == "masked":
        from netdiff.model.masked import MaskedBitScheduler

        return MaskedBitScheduler
    from diffusers import DDPMScheduler

    return DDPMScheduler


def read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise NetdiffError(f"{Path(path).parent}: not a netdiff {what} folder (no {Path(path).name})") from None
    except ValueError as e:
        raise NetdiffError(f"{path}: unreadable ({e})") from None
