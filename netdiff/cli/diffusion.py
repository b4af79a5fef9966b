"""``netdiff train-base``, ``finetune``, ``train-controlnet``, ``generate``: the diffusion commands.

torch, diffusers and transformers load only when one of these commands runs. For several GPUs,
run the same training through accelerate: ``accelerate launch -m netdiff.model.train_lora ...``.
"""
from __future__ import annotations

import os

import click

from netdiff.cli.folders import checks_inputs, locks_output
from netdiff.errors import NetdiffError

_MP = click.Choice(["no", "fp16", "bf16"])


def _quiet_loaders() -> None:
    """The weight-loading bars of diffusers / transformers say nothing useful on the command line."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.disable_progress_bar()
    tlog.disable_progress_bar()


THREADS_HELP = ("CPU threads for torch (env NETDIFF_THREADS; default: torch's own, i.e. OMP_NUM_THREADS or one "
                "per core). On a machine busy with other jobs use 1: OpenMP threads spin waiting for a core, and "
                "2 threads ran 10-20x slower than 1 on a loaded 2-core box (docs/diffusion.md).")


def _threads_option(f):
    return click.option("--threads", type=click.IntRange(min=1), envvar="NETDIFF_THREADS",
                        show_envvar=True, help=THREADS_HELP)(f)


def set_threads(threads: int | None) -> None:
    """Set torch's intra-op threads (and inter-op threads, which torch allows only before any
    parallel work has started) before anything runs. None leaves torch's default."""
    if not threads:
        return
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:        # inter-op pool already started (e.g. a second call in one process)
        pass


def _training_options(f):
    for opt in reversed([
        click.option("--steps", type=click.IntRange(min=1), help="Optimizer steps (overrides the config)."),
        click.option("--batch-size", type=click.IntRange(min=1), help="Images per step and device."),
        click.option("--lr", "learning_rate", type=click.FloatRange(min=0, min_open=True), help="Learning rate."),
        click.option("--grad-accum", "gradient_accumulation", type=click.IntRange(min=1),
                     help="Gradient accumulation steps."),
        click.option("--mixed-precision", type=_MP, help="Autocast on a GPU (default: the config's; CPU is fp32)."),
        click.option("--seed", type=int, help="Seed (default: the config's)."),
        click.option("--checkpoint-every", type=click.IntRange(min=0), help="Steps between checkpoints (0: none)."),
        click.option("--resume", help="'latest' or a checkpoint folder under OUTPUT/checkpoints."),
        click.option("--cpu", is_flag=True, help="Train on the CPU even when a GPU is present."),
        click.option("--quiet", "-q", is_flag=True, help="No progress bar."),
        click.option("--threads", type=click.IntRange(min=1), envvar="NETDIFF_THREADS", show_envvar=True,
                     help=THREADS_HELP),
    ]):
        f = opt(f)
    return f


def _report(result, what: str) -> None:
    last = f", final loss {result.losses[-1]:.4f}" if result.losses else ""
    resumed = f" (resumed at step {result.resumed_from})" if result.resumed_from else ""
    click.echo(f"{what}: {result.steps} steps in {result.seconds:.1f} s on {result.device}{resumed}{last}; "
               f"wrote {result.output}")
    for note in result.notes:
        click.echo(f"{what}: {note}")


@click.command("train-base", short_help="Train the compact base model on images of all classes.")
@click.argument("img_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--config", default="tiny", show_default=True,
              help="Model config: a YAML file or tiny / compact (configs/model/).")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False), help="Model folder to write.")
@click.option("--max-minutes", type=click.FloatRange(min=0, min_open=True),
              help="Stop once this much wall time is spent and save the model as at that step.")
@_training_options
@checks_inputs("img_dir")
@locks_output("output")
def train_base_cmd(img_dir, config, output, quiet, threads, **kw):
    """Train netdiff's compact base (UNet + text encoder built from --config) on IMG_DIR/<class>/*.png
    with captions "pixelated network data, type-<class>"."""
    from netdiff.model.train_base import TrainBaseArgs, main

    set_threads(threads)
    _quiet_loaders()

    result = main(TrainBaseArgs(img_dir=img_dir, output=output, config=config, progress=not quiet, **kw))
    _report(result, "train-base")


@click.command("finetune", short_help="LoRA fine-tuning of a base model on new images.")
@click.argument("img_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--base-model", required=True,
              help="A netdiff model folder, a local diffusers Stable Diffusion folder, or a hub id.")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False), help="LoRA folder to write.")
@click.option("--config", help="Config for LoRA settings (a foreign SD base defaults to sd15-lora).")
@click.option("--class", "classes", multiple=True, help="Only these classes (repeatable).")
@click.option("--rank", type=click.IntRange(min=1), help="LoRA rank.")
@click.option("--train-text-encoder", is_flag=True, default=None, help="LoRA on the text encoder too.")
@_training_options
@checks_inputs("img_dir", "base_model")
@locks_output("output")
def finetune_cmd(img_dir, base_model, output, config, classes, rank, train_text_encoder, quiet, threads, **kw):
    """Train LoRA adapters (peft) on the frozen base; OUTPUT loads with diffusers' load_lora_weights."""
    from netdiff.model.train_lora import FinetuneArgs, main

    set_threads(threads)
    _quiet_loaders()

    result = main(FinetuneArgs(img_dir=img_dir, base_model=base_model, output=output, config=config,
                               classes=tuple(classes) or None, rank=rank, train_text_encoder=train_text_encoder,
                               progress=not quiet, **kw))
    _report(result, "finetune")


@click.command("train-controlnet", short_help="Train a ControlNet (field masks or canny edges).")
@click.argument("img_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--base-model", required=True, help="The base model folder the ControlNet steers.")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False), help="ControlNet folder.")
@click.option("--kind", type=click.Choice(["mask", "canny"]),
              help="Control images: protocol-field masks or canny edges (default: the config's).")
@click.option("--config", help="Config for ControlNet settings.")
@click.option("--class", "classes", multiple=True, help="Only these classes (repeatable).")
@_training_options
@checks_inputs("img_dir", "base_model")
@locks_output("output")
def train_controlnet_cmd(img_dir, base_model, output, kind, config, classes, quiet, threads, **kw):
    """Train a ControlNet (ControlNetModel.from_unet) on (control, image) pairs made from IMG_DIR."""
    from netdiff.model.train_controlnet import ControlNetArgs, main

    set_threads(threads)
    _quiet_loaders()

    result = main(ControlNetArgs(img_dir=img_dir, base_model=base_model, output=output, kind=kind,
                                 config=config, classes=tuple(classes) or None, progress=not quiet, **kw))
    _report(result, "train-controlnet")


@click.command("generate", short_help="Sample images (and pcaps) from a trained model.")
@click.option("--model", required=True, help="Model folder (netdiff train-base, or a Stable Diffusion folder).")
@click.option("--lora", type=click.Path(exists=True, file_okay=False), help="LoRA folder from netdiff finetune.")
@click.option("--lora-scale", type=float, default=1.0, show_default=True, help="LoRA strength.")
@click.option("--controlnet", type=click.Path(exists=True, file_okay=False), help="ControlNet folder.")
@click.option("--control", help="Control: an image, or a template (tcp, tcp-options, udp-only, icmp, "
              "ipv6-tcp, ...; NAME:ROWS for fewer packets).")
@click.option("--class", "cls", required=True,
              help="Class to generate; 'all': every class the model knows, each in OUTPUT/<class>.")
@click.option("--count", "-n", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Image k uses seed + k.")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False))
@click.option("--pcap", is_flag=True, help="Also write a pcap per image through the repair path (with the "
              "inter-arrival model and class field priors the model folder keeps from its training images).")
@click.option("--timing", type=click.Path(exists=True, dir_okay=False),
              help="With --pcap: this inter-arrival model instead of the model folder's timing.json.")
@click.option("--priors", type=click.Path(exists=True, dir_okay=False),
              help="With --pcap: these class field priors instead of the model folder's field_priors.json.")
@click.option("--steps", type=click.IntRange(min=1), help="Denoising steps (default: the config's).")
@click.option("--cfg", type=click.FloatRange(min=0), help="Guidance scale (default: the config's).")
@click.option("--scheduler", type=click.Choice(["dpmpp-2m-karras", "euler-a", "ddim", "ddpm", "masked"]),
              help="Sampler (default: the config's).")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True),
              help="Masked models: softmax temperature bits are drawn at (default: the config's).")
@click.option("--unmask-order", type=click.Choice(["random", "confidence"]),
              help="Masked models: reveal pixels in random order or most confident first (default: the config's).")
@click.option("--free-layout", is_flag=True,
              help="Masked models: let the model draw row layouts pixel by pixel instead of from the class's "
                   "layout chain first (for comparison).")
@click.option("--batch-size", type=click.IntRange(min=1), help="Windows (images of the model's height) per batch.")
@click.option("--height", type=click.IntRange(min=1),
              help="Packets per image, a multiple of the model's (default: the model's). Masked models "
                   "draw row layouts and flows over the whole height, so flows can outlast one window.")
@click.option("--hires", is_flag=True, help="Second pass at the config's hires size (NetDiffusion's hires fix).")
@click.option("--config", help="Config for a Stable Diffusion base (e.g. sd15-lora).")
@click.option("--device", help="cuda, cuda:1, cpu, ... (default: a GPU when present).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--skip-existing", is_flag=True,
              help="Leave images already in OUTPUT alone (go on with an interrupted run).")
@_threads_option
@checks_inputs("model", "lora", "controlnet")
@locks_output("output")
def generate_cmd(model, lora, lora_scale, controlnet, control, cls, count, seed, output, pcap, timing, priors, steps, cfg,
                 scheduler, temperature, unmask_order, free_layout, batch_size, height, hires, config, device, quiet, skip_existing,
                 threads):
    """Generate COUNT images of class CLASS as palette PNGs in OUTPUT (same seed, same bytes)."""
    from netdiff.model.config import load_config
    from netdiff.model.generate import generate

    set_threads(threads)
    _quiet_loaders()

    if (controlnet is None) != (control is None):
        raise NetdiffError("--controlnet and --control go together")
    if (timing or priors) and not pcap:
        raise NetdiffError("--timing and --priors shape the repaired pcaps: add --pcap")
    # Under accelerate launch / torchrun: one process per GPU, each making every world-th image.
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and device is None:
        import torch

        if torch.cuda.is_available():
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}"
    if cls == "all":
        from netdiff.model.store import known_classes

        jobs = [(c, os.path.join(output, c)) for c in known_classes(model)]
    else:
        jobs = [(cls, output)]
    for name, folder in jobs:
        result = generate(model, name, count, seed, folder, lora=lora, lora_scale=lora_scale,
                          controlnet=controlnet, control=control, steps=steps, cfg=cfg, scheduler=scheduler,
                          batch_size=batch_size, hires=hires, pcap=pcap, device=device,
                          config=load_config(config) if config else None, progress=not quiet and rank == 0,
                          shard=(rank, world), skip_existing=skip_existing, temperature=temperature,
                          unmask_order=unmask_order, layouts=not free_layout, height=height,
                          timing=timing, priors=priors)
        extra = f" and {len(result.pcaps)} pcaps" if result.pcaps else ""
        who = f" (process {rank + 1} of {world})" if world > 1 else ""
        done = f"; {len(range(rank, count, world)) - len(result.images)} were there already" if skip_existing else ""
        click.echo(f"generate{who}: {len(result.images)} images{extra} of class {name} on {result.device} in "
                   f"{folder}{done}")
