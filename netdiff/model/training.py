"""Pieces the three training scripts share: accelerator, data order, the diffusion loss,
checkpoints that resume exactly, the loss curve.

The training loop itself stays in each script so that a script reads top to bottom, as
diffusers' examples do. train_lora and train_controlnet mark the parts of it they share with
train_base with ``# Copied from netdiff.model.train_base.main`` ... ``# End copy``, and
tests/test_structure.py fails when a copy drifts from its source.

Checkpoints hold the trainable weights in safetensors, the optimizer state as a tensor-only
``torch.save`` file read back with ``weights_only=True``, and the step counters and losses as
JSON, so resuming never unpickles arbitrary objects. All randomness of training step ``k``
(noise, timesteps, caption dropout) comes from a generator seeded with (seed, k, process), and
the data order of epoch ``e`` from (seed, e): a resumed run continues exactly as an uninterrupted one.
"""
from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from netdiff.errors import NetdiffError
from netdiff.io.atomic import atomic_path, replace_dir, stage_dir
from netdiff.io.stale import remove_stale


@dataclass
class TrainResult:
    output: Path
    steps: int
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from: int = 0
    device: str = "cpu"
    notes: list[str] = field(default_factory=list)


# --- accelerator ---------------------------------------------------------------------------------

def make_accelerator(output: Path, mixed_precision: str, gradient_accumulation: int, cpu: bool = False):
    """bf16/fp16 autocast on a GPU as configured; plain fp32 on CPU (CPU autocast is slower here)."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    use_cpu = cpu or not torch.cuda.is_available()
    mp = "no" if use_cpu else mixed_precision
    if mp == "bf16" and not use_cpu and not torch.cuda.is_bf16_supported():
        mp = "fp16"
    return Accelerator(
        cpu=use_cpu, mixed_precision=mp, gradient_accumulation_steps=gradient_accumulation,
        project_config=ProjectConfiguration(project_dir=str(output), logging_dir=str(output / "logs")))


def step_generator(seed: int, step: int, process: int = 0, device="cpu") -> torch.Generator:
    """The step's random stream, on the device the step runs on: drawing the masks of a batch of
    1024-packet images on the CPU and copying them over would cost more than the GPU step itself.
    On the CPU the draws are what they always were."""
    return torch.Generator(device).manual_seed((seed * 1_000_003 + step) * 4_099 + process)


# --- data ----------------------------------------------------------------------------------------

class EpochSampler(torch.utils.data.Sampler):
    """A fresh permutation per epoch from (seed, epoch). The attribute is ``epoch`` rather than
    ``set_epoch()`` so accelerate's own per-launch epoch counter cannot override it on resume."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        return iter(rng.permutation(self.n).tolist())


def make_loader(dataset, batch_size: int, seed: int, collate_fn=None):
    sampler = EpochSampler(len(dataset), seed)
    # drop_last only when there is more than one batch: a tiny dataset still trains.
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                                         drop_last=len(dataset) > batch_size, collate_fn=collate_fn,
                                         num_workers=0)
    return loader, sampler


def stack_batch(items: list[dict]) -> dict:
    out = {"pixels": torch.stack([it["pixels"] for it in items]),
           "caption": [it["caption"] for it in items],
           "index": torch.stack([it["index"] for it in items])}
    if "control" in items[0]:
        out["control"] = torch.stack([it["control"] for it in items])
    return out


def drop_captions(captions: list[str], p: float, gen: torch.Generator) -> list[str]:
    """Replace a share ``p`` of captions by "" so classifier-free guidance has an unconditional model."""
    if p <= 0:
        return list(captions)
    keep = torch.rand(len(captions), generator=gen, device=gen.device) >= p
    return [c if k else "" for c, k in zip(captions, keep.tolist())]


# --- the diffusion loss --------------------------------------------------------------------------

def diffusion_loss(unet, noise_scheduler, latents, encoder_hidden_states, gen: torch.Generator,
                   controlnet=None, control=None, position_channels: int = 0,
                   position_encoding: str = "octave") -> torch.Tensor:
    from netdiff.model.build import with_positions
    from netdiff.model.masked import MaskedBitScheduler, masked_loss

    if isinstance(noise_scheduler, MaskedBitScheduler):
        return masked_loss(unet, noise_scheduler, latents, encoder_hidden_states, gen, controlnet=controlnet,
                           control=control, position_channels=position_channels,
                           position_encoding=position_encoding)
    # Sample noise that we'll add to the latents
    noise = torch.randn(latents.shape, generator=gen, device=gen.device).to(latents.device, latents.dtype)
    # Sample a random timestep for each image
    t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=gen,
                      device=gen.device)
    t = t.to(latents.device)
    # Add noise to the latents according to the noise magnitude at each timestep (forward diffusion)
    noisy = with_positions(noise_scheduler.add_noise(latents, noise, t), position_channels,
                           position_encoding)
    down_res = mid_res = None
    if controlnet is not None:
        down_res, mid_res = controlnet(noisy, t, encoder_hidden_states=encoder_hidden_states,
                                       controlnet_cond=control, return_dict=False)
    pred = unet(noisy, t, encoder_hidden_states, down_block_additional_residuals=down_res,
                mid_block_additional_residual=mid_res).sample
    if noise_scheduler.config.prediction_type == "epsilon":
        target = noise
    elif noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, t)
    elif noise_scheduler.config.prediction_type == "sample":
        target = latents
    else:
        raise NetdiffError(f"unsupported prediction_type {noise_scheduler.config.prediction_type!r}")
    return F.mse_loss(pred.float(), target.float(), reduction="mean")


def encode_latents(autoencoder, pixels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    with torch.no_grad():
        dist = autoencoder.encode(pixels).latent_dist
        z = dist.sample(generator=gen) if hasattr(dist, "std") else dist.sample()
        return z * autoencoder.config.scaling_factor


# --- checkpoints ---------------------------------------------------------------------------------

def trainable_state(modules: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    out = {}
    for name, mod in modules.items():
        for k, p in mod.named_parameters():
            if p.requires_grad:
                out[f"{name}::{k}"] = p.detach().float().cpu().contiguous()
    return out


def save_checkpoint(ckpt_root: Path, step: int, epoch_step: tuple[int, int], modules: dict, optimizer,
                    lr_scheduler, losses: list[float], keep: int) -> Path:
    from safetensors.torch import save_file

    ckpt_root.mkdir(parents=True, exist_ok=True)
    staged = stage_dir(ckpt_root, f"step-{step:07d}")
    save_file(trainable_state(modules), staged / "trainable.safetensors")
    torch.save(optimizer.state_dict(), staged / "optimizer.pt")
    (staged / "state.json").write_text(json.dumps({
        "step": step, "epoch": epoch_step[0], "batch_in_epoch": epoch_step[1],
        "lr_scheduler": lr_scheduler.state_dict(), "losses": losses}))
    final = ckpt_root / f"step-{step:07d}"
    replace_dir(staged, final)
    for old in sorted(ckpt_root.glob("step-*"))[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(ckpt_root: Path, resume: str) -> Path | None:
    if ckpt_root.is_dir():
        remove_stale(ckpt_root)          # a checkpoint half-written when the last run was killed
    if resume == "latest":
        found = sorted(ckpt_root.glob("step-*"))
        return found[-1] if found else None
    p = Path(resume)
    if not (p / "state.json").is_file():
        raise NetdiffError(f"--resume {resume}: not a checkpoint folder (no state.json)")
    return p


def load_checkpoint(path: Path, modules: dict, optimizer, lr_scheduler) -> dict:
    from safetensors.torch import load_file

    tensors = load_file(path / "trainable.safetensors")
    for name, mod in modules.items():
        prefix = f"{name}::"
        sub = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        params = dict(mod.named_parameters())
        missing = [k for k, p in params.items() if p.requires_grad and k not in sub]
        if missing or any(k not in params for k in sub):
            raise NetdiffError(f"{path}: checkpoint does not match the {name} being trained "
                               f"({len(missing)} missing tensors)")
        with torch.no_grad():
            for k, v in sub.items():
                params[k].copy_(v.to(params[k].dtype))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    state = json.loads((path / "state.json").read_text())
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    return state


def resume_from(ckpt_root: Path, resume: str | None, modules: dict, accelerator, optimizer,
                lr_scheduler) -> tuple[int, list[float], int, int]:
    """(step, losses, epoch, batch in epoch) to start the loop at: those of the checkpoint
    ``resume`` names ("latest" or a folder; its weights and optimizer state are loaded into the
    prepared ``modules``, ``optimizer`` and ``lr_scheduler``), or a fresh start."""
    if resume:
        ckpt = find_checkpoint(ckpt_root, resume)
        if ckpt is not None:
            state = load_checkpoint(ckpt, {k: accelerator.unwrap_model(m) for k, m in modules.items()},
                                    optimizer, lr_scheduler)
            return state["step"], state["losses"], state["epoch"], state["batch_in_epoch"]
    return 0, [], 0, 0


# --- reporting -----------------------------------------------------------------------------------

def plot_losses(losses: list[float], path: Path, title: str) -> None:
    """Loss per step and its running mean, written atomically as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y = np.asarray(losses, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(np.arange(1, len(y) + 1), y, lw=0.8, alpha=0.5, label="loss")
    w = max(1, len(y) // 20)
    if len(y) >= w > 1:
        ax.plot(np.arange(w, len(y) + 1), np.convolve(y, np.ones(w) / w, mode="valid"), lw=1.5,
                label=f"mean of {w}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (MSE; cross-entropy for masked models)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path, keep_suffix=True) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


def write_log(output: Path, losses: list[float], extra: dict) -> None:
    from netdiff.model.store import write_json_atomic

    write_json_atomic(output / "train_log.json", {"losses": losses, **extra})


def progress_bar(total: int, initial: int, disable: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=disable or not sys.stderr.isatty(),
                dynamic_ncols=True)


def lr_scheduler_for(name: str, optimizer, warmup: int, total: int):
    from diffusers.optimization import get_scheduler

    return get_scheduler(name, optimizer=optimizer, num_warmup_steps=warmup, num_training_steps=total)


def check_finite(loss: torch.Tensor, step: int) -> None:
    if not math.isfinite(float(loss.detach())):
        raise NetdiffError(f"training diverged at step {step} (loss {float(loss.detach())}): lower the learning rate")


class Timer:
    def __init__(self):
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.t0

    def out_of(self, minutes: float | None) -> bool:
        """True once ``minutes`` of wall time have passed (never, for None)."""
        return minutes is not None and self() >= 60 * minutes
