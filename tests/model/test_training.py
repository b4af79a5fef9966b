"""train-base: the loss really goes down, the folder round-trips, a resumed run is exact."""
from __future__ import annotations

import json
import shutil

import torch
from safetensors.torch import load_file

from netdiff.model import training as T
from netdiff.model.build import build_text_encoder, build_train_scheduler, build_unet, extra_input_channels
from netdiff.model.data import ImageDataset
from netdiff.model.generate import generate
from netdiff.model.store import MODEL_JSON, load_model, save_model
from netdiff.model.ternary import TernaryAutoencoder
from netdiff.model.tokenizer import tokenize


def fixed_batch_loss(unet, text_encoder, tokenizer, ds) -> float:
    """Loss on all training images with fixed noise and timesteps: comparable across models."""
    batch = T.stack_batch([ds[i] for i in range(len(ds))])
    ae = TernaryAutoencoder(factor=ds_cfg.image.factor)
    sched = build_train_scheduler(ds_cfg.train, ds_cfg.image.space)
    extra = extra_input_channels(unet)
    total = 0.0
    with torch.no_grad():
        for k in range(2):
            gen = torch.Generator().manual_seed(1000 + k)
            latents = T.encode_latents(ae, batch["pixels"], gen)
            hidden = text_encoder(tokenize(tokenizer, batch["caption"]))[0]
            total += float(T.diffusion_loss(unet, sched, latents, hidden, gen, position_channels=extra))
    return total / 2


ds_cfg = None


def test_training_lowers_the_loss_on_fixed_noise(tiny_model, img_dir):
    global ds_cfg
    trained = load_model(tiny_model)
    ds_cfg = trained.config
    ds = ImageDataset(img_dir, trained.config.image)
    torch.manual_seed(trained.config.train.seed)           # the initial weights train-base started from
    init_unet, init_text = build_unet(trained.config), build_text_encoder(trained.config)
    before = fixed_batch_loss(init_unet, init_text, trained.tokenizer, ds)
    after = fixed_batch_loss(trained.unet, trained.text_encoder, trained.tokenizer, ds)
    assert after < 0.97 * before, (before, after)
    log = json.loads((tiny_model / "train_log.json").read_text())
    assert len(log["losses"]) == 8 and log["classes"] == ["dns_udp", "web_tcp"]
    assert (tiny_model / "loss.png").stat().st_size > 1000


def test_model_folder_round_trip(tiny_model, tmp_path):
    doc = json.loads((tiny_model / MODEL_JSON).read_text())
    assert doc["classes"] == ["dns_udp", "web_tcp"] and doc["config"]["name"] == "tiny"
    for part in ("unet", "text_encoder"):
        assert list((tiny_model / part).glob("*.safetensors")) and not list((tiny_model / part).glob("*.bin"))
    again = tmp_path / "again"
    save_model(load_model(tiny_model), again)
    a = load_file(tiny_model / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(again / "unet" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    kw = dict(steps=2, progress=False)
    g1 = generate(tiny_model, "web_tcp", 1, 3, tmp_path / "g1", **kw)
    g2 = generate(again, "web_tcp", 1, 3, tmp_path / "g2", **kw)
    assert (g1.bits == g2.bits).all()      # (the PNGs differ only in the model path they record)


def test_resume_continues_exactly(img_dir, tmp_path):
    from netdiff.model.train_base import TrainBaseArgs, main

    common = dict(config="tiny", steps=3, batch_size=2, checkpoint_every=2, progress=False)
    straight = main(TrainBaseArgs(str(img_dir), str(tmp_path / "a"), **common))
    ckpt = tmp_path / "a" / "checkpoints" / "step-0000002"
    assert (ckpt / "trainable.safetensors").is_file()
    shutil.copytree(ckpt, tmp_path / "b" / "checkpoints" / ckpt.name)
    resumed = main(TrainBaseArgs(str(img_dir), str(tmp_path / "b"), resume="latest", **common))
    assert resumed.resumed_from == 2 and resumed.steps == 3
    assert resumed.losses == straight.losses
    a = load_file(tmp_path / "a" / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "b" / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_max_minutes_stops_at_a_step_and_saves(img_dir, tmp_path):
    from netdiff.model.store import load_model
    from netdiff.model.train_base import TrainBaseArgs, main

    # a budget already spent when the first step ends: one step, then the usual save
    res = main(TrainBaseArgs(str(img_dir), str(tmp_path / "m"), config="tiny", steps=50, batch_size=2,
                             max_minutes=1e-6, progress=False))
    assert res.steps == 1 and len(res.losses) == 1
    assert res.notes and "step 1 of 50" in res.notes[0]
    assert load_model(tmp_path / "m").classes
