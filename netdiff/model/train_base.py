"""Train netdiff's compact base model from scratch: all classes, NetDiffusion's captions.

    netdiff train-base IMG_DIR --config configs/model/tiny.yaml --output MODEL_DIR
    accelerate launch -m netdiff.model.train_base IMG_DIR --config compact --output MODEL_DIR

The UNet and the text encoder are built from the config and trained together on
"pixelated network data, type-<class>" captions (a share of them blanked, for guidance); the
tokenizer is trained on the captions. The folder written is what finetune, train-controlnet
and generate load; it names the classes it knows.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch

from netdiff.model import training as T


@dataclass
class TrainBaseArgs:
    img_dir: str
    output: str
    config: str = "tiny"
    steps: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    gradient_accumulation: int | None = None
    mixed_precision: str | None = None
    seed: int | None = None
    checkpoint_every: int | None = None
    resume: str | None = None           # "latest" or a checkpoint folder
    max_minutes: float | None = None    # stop after this much wall time (at a step boundary), save as usual
    cpu: bool = False
    progress: bool = True


def parse_args(input_args=None) -> TrainBaseArgs:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("img_dir")
    p.add_argument("--output", required=True)
    p.add_argument("--config", default="tiny")
    for name, typ in (("steps", int), ("batch_size", int), ("learning_rate", float),
                      ("gradient_accumulation", int), ("seed", int), ("checkpoint_every", int)):
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=typ)
    p.add_argument("--mixed-precision", dest="mixed_precision", choices=["no", "fp16", "bf16"])
    p.add_argument("--resume")
    p.add_argument("--max-minutes", dest="max_minutes", type=float,
                   help="stop once this much wall time is spent (the model is saved as at the last step)")
    p.add_argument("--cpu", action="store_true")
    return TrainBaseArgs(**vars(p.parse_args(input_args)))


def main(args: TrainBaseArgs) -> T.TrainResult:
    from netdiff.model.build import build_text_encoder, build_train_scheduler, build_unet
    from netdiff.model.config import load_config
    from netdiff.model.data import ImageDataset
    from netdiff.model.store import ModelBundle, save_model
    from netdiff.model.ternary import TernaryAutoencoder
    from netdiff.model.tokenizer import tokenize, train_caption_tokenizer

    # 1. Config (command-line values override the file) and the accelerator
    cfg = load_config(args.config)
    tc = cfg.train
    for name in ("steps", "batch_size", "learning_rate", "gradient_accumulation", "mixed_precision",
                 "seed", "checkpoint_every"):
        if getattr(args, name) is not None:
            setattr(tc, name, getattr(args, name))
    if cfg.image.space not in ("ternary", "masked"):
        from netdiff.errors import NetdiffError

        raise NetdiffError(f"train-base builds a ternary- or masked-space model; config {cfg.name!r} has "
                           f"image.space {cfg.image.space!r} (use finetune on a Stable Diffusion base)")
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    accelerator = T.make_accelerator(output, tc.mixed_precision, tc.gradient_accumulation, args.cpu)
    timer = T.Timer()

    # 2. Data: every image of every class, rows cut or padded to the config's height
    dataset = ImageDataset(args.img_dir, cfg.image)
    captions = dataset.captions() + [""]

    # 3. Tokenizer trained on the captions; networks built from the config (seeded init)
    tokenizer = train_caption_tokenizer(captions, cfg.text.vocab_size, cfg.text.max_length)
    torch.manual_seed(tc.seed)
    unet = build_unet(cfg)
    text_encoder = build_text_encoder(cfg)
    autoencoder = TernaryAutoencoder(factor=cfg.image.factor)
    noise_scheduler = build_train_scheduler(tc, cfg.image.space)
    unet.train()
    text_encoder.train(tc.train_text_encoder)
    text_encoder.requires_grad_(tc.train_text_encoder)
    trainable = {"unet": unet} | ({"text_encoder": text_encoder} if tc.train_text_encoder else {})

    # 4. Optimizer and learning-rate schedule
    params = [p for m in trainable.values() for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tc.learning_rate, weight_decay=tc.adam_weight_decay)
    lr_scheduler = T.lr_scheduler_for(tc.lr_scheduler, optimizer, tc.lr_warmup_steps * accelerator.num_processes,
                                      tc.steps * accelerator.num_processes)
    loader, sampler = T.make_loader(dataset, tc.batch_size, tc.seed, collate_fn=T.stack_batch)

    # 5. Prepare everything with accelerate; resume from a checkpoint when asked
    unet, text_encoder, optimizer, loader, lr_scheduler = accelerator.prepare(
        unet, text_encoder, optimizer, loader, lr_scheduler)
    modules = {"unet": unet} | ({"text_encoder": text_encoder} if tc.train_text_encoder else {})
    ckpt_root = output / "checkpoints"
    step, losses, epoch, skip = T.resume_from(ckpt_root, args.resume, modules, accelerator, optimizer, lr_scheduler)
    resumed_from = step

    # 6. Training loop
    bar = T.progress_bar(tc.steps, step, not (args.progress and accelerator.is_local_main_process), "train-base")
    device = accelerator.device
    while step < tc.steps:
        sampler.epoch = epoch
        batches = accelerator.skip_first_batches(loader, skip) if skip else loader
        for i, batch in enumerate(batches, start=skip):
            with accelerator.accumulate(*modules.values()):
                gen = T.step_generator(tc.seed, epoch * 1_000_000 + i, accelerator.process_index, accelerator.device)
                # Map the {-1,0,1} images to the lossless latent
                latents = T.encode_latents(autoencoder, batch["pixels"].to(device), gen)
                # Blank some captions (unconditional branch for guidance), then embed them
                ids = tokenize(tokenizer, T.drop_captions(batch["caption"], tc.caption_dropout, gen)).to(device)
                hidden = text_encoder(ids)[0]
                loss = T.diffusion_loss(unet, noise_scheduler, latents, hidden, gen,
                                        position_channels=cfg.unet.position_channels,
                                        position_encoding=cfg.unet.position_encoding)
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
                    and step < tc.steps:
                T.save_checkpoint(ckpt_root, step, (epoch, i + 1), {k: accelerator.unwrap_model(m)
                                  for k, m in modules.items()}, optimizer, lr_scheduler, losses,
                                  tc.checkpoints_kept)
            if step >= tc.steps or timer.out_of(args.max_minutes):
                break
        else:
            epoch, skip = epoch + 1, 0
            continue
        break
    bar.close()
    if step < tc.steps:
        result_notes = [f"stopped at step {step} of {tc.steps}: --max-minutes {args.max_minutes} spent"]
    else:
        result_notes = []

    # 7. Save the model folder (safetensors), the loss curve and the log
    accelerator.wait_for_everyone()
    result = T.TrainResult(output=output, steps=step, losses=losses, seconds=timer(),
                           resumed_from=resumed_from, device=str(device), notes=result_notes)
    if accelerator.is_main_process:
        layouts = None
        if cfg.image.space == "masked":
            from netdiff.model.flow_chain import FlowChain

            # the structure stage of sampling: which rows are which flows and stacks, per class
            layouts = FlowChain.fit_dataset(dataset)
        bundle = ModelBundle(unet=accelerator.unwrap_model(unet).eval(),
                             text_encoder=accelerator.unwrap_model(text_encoder).eval(),
                             tokenizer=tokenizer, autoencoder=autoencoder, scheduler=noise_scheduler,
                             config=cfg, classes=dataset.classes, source=str(output.resolve()), layouts=layouts)
        save_model(bundle, output, images=args.img_dir)
        if losses:
            T.plot_losses(losses, output / "loss.png", f"train-base ({cfg.name})")
        T.write_log(output, losses, {"command": "train-base", "images": len(dataset), "classes": dataset.classes,
                                     "seconds": result.seconds, "resumed_from": resumed_from, "notes": result_notes,
                                     "device": str(device), "mixed_precision": accelerator.mixed_precision})
    accelerator.end_training()
    return result


if __name__ == "__main__":
    main(parse_args())
