"""Train a ControlNet on (control, image) pairs so generation can be held to a structure.

    netdiff train-controlnet IMG_DIR --base-model MODEL_DIR --kind mask --output CN_DIR

The ControlNet starts as a copy of the base UNet's encoder (``ControlNetModel.from_unet``); the
base stays frozen. Controls are computed from each training image: ``mask`` (which sections and
fields each packet has: generate with ``--control tcp-options`` or ``--control udp-only``) or
``canny`` (edges of the image, as NetDiffusion did). Controls are 1-channel, full image size.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from netdiff.model import training as T


@dataclass
class ControlNetArgs:
    img_dir: str
    base_model: str
    output: str
    kind: str | None = None            # mask | canny (default: the config's)
    config: str | None = None
    classes: tuple[str, ...] | None = None
    steps: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    gradient_accumulation: int | None = None
    mixed_precision: str | None = None
    seed: int | None = None
    checkpoint_every: int | None = None
    resume: str | None = None
    cpu: bool = False
    progress: bool = True
    max_minutes: float | None = None    # stop after this much wall time (train-base has the CLI option)


def parse_args(input_args=None) -> ControlNetArgs:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("img_dir")
    p.add_argument("--base-model", dest="base_model", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--kind", choices=["mask", "canny"])
    p.add_argument("--config")
    p.add_argument("--class", dest="classes", action="append")
    for name, typ in (("steps", int), ("batch_size", int), ("learning_rate", float),
                      ("gradient_accumulation", int), ("seed", int), ("checkpoint_every", int)):
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=typ)
    p.add_argument("--mixed-precision", dest="mixed_precision", choices=["no", "fp16", "bf16"])
    p.add_argument("--resume")
    p.add_argument("--cpu", action="store_true")
    ns = vars(p.parse_args(input_args))
    ns["classes"] = tuple(ns["classes"]) if ns["classes"] else None
    return ControlNetArgs(**ns)


class ControlDataset(torch.utils.data.Dataset):
    """The image dataset with each example's control map added (computed once, kept in memory)."""

    def __init__(self, images, kind: str):
        import numpy as np

        from netdiff.model.controls import control_from_bits

        self.images = images
        self.controls = [np.ascontiguousarray(control_from_bits(ex.bits, kind)) for ex in images.examples]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        import torch.nn.functional as F

        item = self.images[i]
        control = torch.from_numpy(self.controls[i])[None]
        if control.shape[-2:] != item["pixels"].shape[-2:]:
            control = F.interpolate(control[None], size=item["pixels"].shape[-2:], mode="nearest")[0]
        item["control"] = control
        return item


def conditioning_channels_for(factor: int) -> tuple[int, ...]:
    """ControlNet's conditioning embedding downsamples once per entry after the first: it must
    reach the latent size (factor 8: (16, 32, 96, 256), diffusers' default; factor 4: three)."""
    n = int(round(math.log2(factor)))
    if 2 ** n != factor:
        raise ValueError(f"ControlNet needs a power-of-two latent factor, not {factor}")
    return (16, 32, 96, 256, 256, 256)[: n + 1]


def main(args: ControlNetArgs) -> T.TrainResult:
    from diffusers import ControlNetModel

    from netdiff.io.atomic import stage_dir
    from netdiff.model.build import extra_input_channels
    from netdiff.model.data import ImageDataset
    from netdiff.model.store import CONTROLNET_JSON, load_model, write_json_atomic
    from netdiff.model.tokenizer import tokenize
    from netdiff.model.train_lora import resolve_config

    # 1. Config (command-line values override the file) and the accelerator
    cfg = resolve_config(args.base_model, args.config)
    cc, tc = cfg.controlnet, cfg.train
    for name in ("kind", "steps", "batch_size", "learning_rate"):
        if getattr(args, name) is not None:
            setattr(cc, name, getattr(args, name))
    for name in ("gradient_accumulation", "mixed_precision", "seed", "checkpoint_every"):
        if getattr(args, name) is not None:
            setattr(tc, name, getattr(args, name))
    cfg.validate()
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    accelerator = T.make_accelerator(output, tc.mixed_precision, tc.gradient_accumulation, args.cpu)
    timer = T.Timer()
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    device = accelerator.device

    # 2. Load the frozen base; the ControlNet starts as a copy of its UNet's encoder
    base = load_model(args.base_model, config=cfg)
    unet, text_encoder, autoencoder, tokenizer = base.unet, base.text_encoder, base.autoencoder, base.tokenizer
    noise_scheduler = base.scheduler
    extra = extra_input_channels(unet)
    factor = cfg.image.factor if cfg.image.space in ("ternary", "masked") else 2 ** (len(autoencoder.config.block_out_channels) - 1)
    controlnet = ControlNetModel.from_unet(unet, conditioning_channels=1,
                                           conditioning_embedding_out_channels=conditioning_channels_for(factor))
    for m in (unet, text_encoder, autoencoder):
        m.requires_grad_(False)
    for m in (unet, text_encoder):
        m.to(device) if weight_dtype == torch.float32 else m.to(device, weight_dtype)
    autoencoder.to(device, torch.float32)
    controlnet.train()

    # 3. (control, image) pairs from the training images
    images = ImageDataset(args.img_dir, cfg.image, list(args.classes) if args.classes else None)
    dataset = ControlDataset(images, cc.kind)

    # 4. Optimizer, schedule, accelerate; resume from a checkpoint when asked
    params = [p for p in controlnet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cc.learning_rate, weight_decay=tc.adam_weight_decay)
    lr_scheduler = T.lr_scheduler_for("constant", optimizer, 0, cc.steps)
    loader, sampler = T.make_loader(dataset, cc.batch_size, tc.seed, collate_fn=T.stack_batch)
    controlnet, optimizer, loader, lr_scheduler = accelerator.prepare(controlnet, optimizer, loader, lr_scheduler)
    modules = {"controlnet": controlnet}
    ckpt_root = output / "checkpoints"
    step, losses, epoch, skip = T.resume_from(ckpt_root, args.resume, modules, accelerator, optimizer, lr_scheduler)
    resumed_from = step

    # 5. Training loop
    bar = T.progress_bar(cc.steps, step, not (args.progress and accelerator.is_local_main_process),
                         "train-controlnet")
    # Copied from netdiff.model.train_base.main with tc.steps->cc.steps
    while step < cc.steps:
        sampler.epoch = epoch
        batches = accelerator.skip_first_batches(loader, skip) if skip else loader
        for i, batch in enumerate(batches, start=skip):
            with accelerator.accumulate(*modules.values()):
                gen = T.step_generator(tc.seed, epoch * 1_000_000 + i, accelerator.process_index, accelerator.device)
                # End copy
                latents = T.encode_latents(autoencoder, batch["pixels"].to(device), gen).to(weight_dtype)
                ids = tokenize(tokenizer, T.drop_captions(batch["caption"], tc.caption_dropout, gen)).to(device)
                with accelerator.autocast():
                    hidden = text_encoder(ids)[0]
                    # The frozen UNet predicts the noise with the ControlNet's residuals added
                    loss = T.diffusion_loss(unet, noise_scheduler, latents, hidden, gen, controlnet=controlnet,
                                            control=batch["control"].to(device, weight_dtype),
                                            position_channels=extra,
                                            position_encoding=base.config.unet.position_encoding)
                # Copied from netdiff.model.train_base.main with tc.steps->cc.steps
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, tc.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            step += 1
            losses.append(float(accelerator.gather(loss.detach()).mean()))
            T.check_finite(loss, step)
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if accelerator.is_main_process and tc.checkpoint_every and step % tc.checkpoint_every == 0 \
                    and step < cc.steps:
                T.save_checkpoint(ckpt_root, step, (epoch, i + 1), {k: accelerator.unwrap_model(m)
                                  for k, m in modules.items()}, optimizer, lr_scheduler, losses,
                                  tc.checkpoints_kept)
            if step >= cc.steps or timer.out_of(args.max_minutes):
                break
        else:
            epoch, skip = epoch + 1, 0
            continue
        break
    bar.close()
    # End copy

    # 6. Save the ControlNet (safetensors) and what generate needs to know about it
    accelerator.wait_for_everyone()
    result = T.TrainResult(output=output, steps=step, losses=losses, seconds=timer(),
                           resumed_from=resumed_from, device=str(device))
    if accelerator.is_main_process:
        staged = stage_dir(output, "controlnet")
        accelerator.unwrap_model(controlnet).save_pretrained(staged, safe_serialization=True)
        for f in staged.iterdir():
            f.replace(output / f.name)
        staged.rmdir()
        if losses:
            T.plot_losses(losses, output / "loss.png", f"train-controlnet ({cc.kind})")
        T.write_log(output, losses, {"command": "train-controlnet", "kind": cc.kind, "images": len(dataset),
                                     "classes": images.classes, "seconds": result.seconds,
                                     "resumed_from": resumed_from, "device": str(device)})
        write_json_atomic(output / CONTROLNET_JSON, {
            "format": "netdiff-controlnet", "kind": cc.kind, "base_model": base.source,
            "classes": images.classes, "conditioning_channels": 1})
    accelerator.end_training()
    return result


if __name__ == "__main__":
    main(parse_args())
