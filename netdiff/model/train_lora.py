"""Fine-tune a base model with LoRA (peft) on the UNet, optionally the text encoder.

    netdiff finetune IMG_DIR --base-model MODEL_DIR --output LORA_DIR
    accelerate launch -m netdiff.model.train_lora IMG_DIR --base-model SD15_DIR \
        --config sd15-lora --output LORA_DIR          # NetDiffusion's recipe, multi-GPU

The base is a netdiff model folder or a Stable Diffusion folder (diffusers layout; a hub id only
when the user names one). Its weights stay frozen; only the low-rank adapters train. The output
folder holds ``pytorch_lora_weights.safetensors`` (diffusers' format: ``load_lora_weights`` reads
it), ``netdiff_lora.json`` (base, classes, rank), the loss curve and resumable checkpoints.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch

from netdiff.model import training as T


@dataclass
class FinetuneArgs:
    img_dir: str
    base_model: str
    output: str
    config: str | None = None          # defaults to the base's own config (netdiff) / sd15-lora (SD)
    classes: tuple[str, ...] | None = None
    rank: int | None = None
    steps: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    gradient_accumulation: int | None = None
    mixed_precision: str | None = None
    train_text_encoder: bool | None = None
    seed: int | None = None
    checkpoint_every: int | None = None
    resume: str | None = None
    cpu: bool = False
    progress: bool = True
    max_minutes: float | None = None    # stop after this much wall time (train-base has the CLI option)


def parse_args(input_args=None) -> FinetuneArgs:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("img_dir")
    p.add_argument("--base-model", dest="base_model", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--config")
    p.add_argument("--class", dest="classes", action="append")
    for name, typ in (("rank", int), ("steps", int), ("batch_size", int), ("learning_rate", float),
                      ("gradient_accumulation", int), ("seed", int), ("checkpoint_every", int)):
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=typ)
    p.add_argument("--mixed-precision", dest="mixed_precision", choices=["no", "fp16", "bf16"])
    p.add_argument("--train-text-encoder", dest="train_text_encoder", action="store_true", default=None)
    p.add_argument("--resume")
    p.add_argument("--cpu", action="store_true")
    ns = vars(p.parse_args(input_args))
    ns["classes"] = tuple(ns["classes"]) if ns["classes"] else None
    return FinetuneArgs(**ns)


def resolve_config(base_model: str, config: str | None):
    """The config to fine-tune with: the named one, else the base's own (netdiff) or sd15-lora."""
    from netdiff.model.config import load_config
    from netdiff.model.generate import model_config_for
    from netdiff.model.store import is_netdiff_model

    if config is not None:
        cfg = load_config(config)
        if is_netdiff_model(base_model):
            # The base fixes the image geometry; the file contributes LoRA, ControlNet, sampling.
            base = model_config_for(base_model, None)
            base.lora, base.controlnet, base.sample = cfg.lora, cfg.controlnet, cfg.sample
            return base
        return cfg
    return model_config_for(base_model, None) if is_netdiff_model(base_model) else load_config("sd15-lora")


def main(args: FinetuneArgs) -> T.TrainResult:
    from netdiff.model.dependencies import check_peft_stack

    check_peft_stack()          # before transformers fails inside add_adapter
    from diffusers.training_utils import cast_training_params
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from netdiff.io.atomic import stage_dir
    from netdiff.model.build import extra_input_channels
    from netdiff.model.data import ImageDataset
    from netdiff.model.generate import NetdiffPipeline
    from netdiff.model.store import LORA_JSON, load_model, write_json_atomic
    from netdiff.model.tokenizer import tokenize

    # 1. Config (command-line values override the file) and the accelerator
    cfg = resolve_config(args.base_model, args.config)
    lc, tc = cfg.lora, cfg.train
    for name in ("rank", "steps", "batch_size", "learning_rate", "train_text_encoder"):
        if getattr(args, name) is not None:
            setattr(lc, name, getattr(args, name))
    for name in ("gradient_accumulation", "mixed_precision", "seed", "checkpoint_every"):
        if getattr(args, name) is not None:
            setattr(tc, name, getattr(args, name))
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    accelerator = T.make_accelerator(output, tc.mixed_precision, tc.gradient_accumulation, args.cpu)
    timer = T.Timer()
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)

    # 2. Load the frozen base: scheduler, tokenizer and models
    base = load_model(args.base_model, config=cfg)
    unet, text_encoder, autoencoder, tokenizer = base.unet, base.text_encoder, base.autoencoder, base.tokenizer
    noise_scheduler = base.scheduler
    extra = extra_input_channels(unet)
    for m in (unet, text_encoder, autoencoder):
        m.requires_grad_(False)
    device = accelerator.device
    # Frozen weights in the half precision autocast uses: half the memory on a GPU.
    for m in (unet, text_encoder):
        m.to(device) if weight_dtype == torch.float32 else m.to(device, weight_dtype)
    autoencoder.to(device, torch.float32)

    # 3. Data of the classes to learn
    dataset = ImageDataset(args.img_dir, cfg.image, list(args.classes) if args.classes else None)

    # 4. Add the LoRA adapters; only they train (kept in fp32 for stable updates)
    torch.manual_seed(tc.seed)
    alpha = lc.alpha or lc.rank
    unet_lora = LoraConfig(r=lc.rank, lora_alpha=alpha, init_lora_weights="gaussian",
                           target_modules=list(lc.unet_target_modules))
    unet.add_adapter(unet_lora)
    trainable = {"unet": unet}
    text_lora = None
    if lc.train_text_encoder:
        text_lora = LoraConfig(r=lc.rank, lora_alpha=alpha, init_lora_weights="gaussian",
                               target_modules=list(lc.text_target_modules))
        text_encoder.add_adapter(text_lora)
        trainable["text_encoder"] = text_encoder
    cast_training_params(list(trainable.values()), dtype=torch.float32)
    params = [p for m in trainable.values() for p in m.parameters() if p.requires_grad]

    # 5. Optimizer, schedule, accelerate; resume from a checkpoint when asked
    optimizer = torch.optim.AdamW(params, lr=lc.learning_rate, weight_decay=tc.adam_weight_decay)
    lr_scheduler = T.lr_scheduler_for("constant", optimizer, 0, lc.steps)
    loader, sampler = T.make_loader(dataset, lc.batch_size, tc.seed, collate_fn=T.stack_batch)
    unet, text_encoder, optimizer, loader, lr_scheduler = accelerator.prepare(
        unet, text_encoder, optimizer, loader, lr_scheduler)
    modules = {"unet": unet} | ({"text_encoder": text_encoder} if lc.train_text_encoder else {})
    ckpt_root = output / "checkpoints"
    step, losses, epoch, skip = T.resume_from(ckpt_root, args.resume, modules, accelerator, optimizer, lr_scheduler)
    resumed_from = step

    # 6. Training loop
    unet.train()
    bar = T.progress_bar(lc.steps, step, not (args.progress and accelerator.is_local_main_process), "finetune")
    # Copied from netdiff.model.train_base.main with tc.steps->lc.steps
    while step < lc.steps:
        sampler.epoch = epoch
        batches = accelerator.skip_first_batches(loader, skip) if skip else loader
        for i, batch in enumerate(batches, start=skip):
            with accelerator.accumulate(*modules.values()):
                gen = T.step_generator(tc.seed, epoch * 1_000_000 + i, accelerator.process_index, accelerator.device)
                # End copy
                # Images to latents (exact for ternary, the base's VAE otherwise)
                latents = T.encode_latents(autoencoder, batch["pixels"].to(device), gen).to(weight_dtype)
                ids = tokenize(tokenizer, T.drop_captions(batch["caption"], tc.caption_dropout, gen)).to(device)
                with accelerator.autocast():
                    hidden = text_encoder(ids)[0]
                    loss = T.diffusion_loss(unet, noise_scheduler, latents, hidden, gen,
                                            position_channels=extra,
                                            position_encoding=base.config.unet.position_encoding)
                # Copied from netdiff.model.train_base.main with tc.steps->lc.steps
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
                    and step < lc.steps:
                T.save_checkpoint(ckpt_root, step, (epoch, i + 1), {k: accelerator.unwrap_model(m)
                                  for k, m in modules.items()}, optimizer, lr_scheduler, losses,
                                  tc.checkpoints_kept)
            if step >= lc.steps or timer.out_of(args.max_minutes):
                break
        else:
            epoch, skip = epoch + 1, 0
            continue
        break
    bar.close()
    # End copy

    # 7. Save the adapters in diffusers' LoRA format, plus what generate needs to know
    accelerator.wait_for_everyone()
    result = T.TrainResult(output=output, steps=step, losses=losses, seconds=timer(),
                           resumed_from=resumed_from, device=str(device))
    if accelerator.is_main_process:
        unet_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(accelerator.unwrap_model(unet)))
        text_layers = None
        if lc.train_text_encoder:
            text_layers = convert_state_dict_to_diffusers(
                get_peft_model_state_dict(accelerator.unwrap_model(text_encoder)))
        staged = stage_dir(output, "lora")
        NetdiffPipeline.save_lora_weights(
            save_directory=staged, unet_lora_layers=unet_layers, text_encoder_lora_layers=text_layers,
            safe_serialization=True, unet_lora_adapter_metadata=unet_lora.to_dict(),
            text_encoder_lora_adapter_metadata=text_lora.to_dict() if text_lora else None)
        for f in staged.iterdir():
            f.replace(output / f.name)
        staged.rmdir()
        if losses:
            T.plot_losses(losses, output / "loss.png", f"finetune (LoRA rank {lc.rank})")
        T.write_log(output, losses, {"command": "finetune", "images": len(dataset), "classes": dataset.classes,
                                     "seconds": result.seconds, "resumed_from": resumed_from,
                                     "device": str(device), "mixed_precision": accelerator.mixed_precision})
        write_json_atomic(output / LORA_JSON, {
            "format": "netdiff-lora", "base_model": base.source, "base_kind": base.kind,
            "classes": dataset.classes, "rank": lc.rank, "alpha": alpha,
            "text_encoder": lc.train_text_encoder, "config": cfg.to_dict()})
    accelerator.end_training()
    return result


if __name__ == "__main__":
    main(parse_args())
