"""Masked (absorbing-state) diffusion over the ternary bit map: the model predicts a categorical
distribution per pixel and sampling draws from it.

Why: a denoiser trained with MSE to predict the clean image converges on each column's mean, and
rounding that mean turns every bit whose probability of 1 is below one half into a 0: IP IDs,
ports, sequence numbers and checksums come out as runs of zeros and every sample of a class is the
same packet (docs/diffusion.md, "Masked bits"). Here the forward process hides pixels (the
absorbing "mask" state) instead of adding Gaussian noise, the network outputs three logits per
pixel (absent / 0 / 1) trained with cross-entropy on the hidden ones, and the sampler reveals
pixels over a few steps, each revealed pixel *drawn* from its predicted distribution given
everything revealed before (D3PM's absorbing state, Austin et al. 2021; MaskGIT's schedule, Chang
et al. 2022; diffusers' aMUSEd scheduler does the same for VQ tokens).

Everything runs on the folded map the ternary autoencoder gives (``pixel_unshuffle`` by the
factor: (B, f^2, h, w) values in {-1, 0, 1}), so the UNet, LoRA and ControlNet are the same
diffusers modules as for the Gaussian models: the input is the one-hot of each visible pixel
(three channels per pixel, all zero where hidden), the output three logits per pixel.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

STATES = 3            # absent (-1), bit 0, bit 1


def one_hot_visible(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) ternary values + hidden mask -> (B, 3C, h, w) float: channel s*C + c is 1 where
    pixel c shows state s; hidden pixels are all zero (the same channel order pixel_unshuffle gives a
    3-channel image, so logits fold back the same way)."""
    states = (values.round().clamp(-1, 1) + 1).long()                       # 0, 1, 2
    oh = F.one_hot(states, STATES).movedim(-1, 1).to(torch.float32)         # (B, 3, C, h, w)
    oh = oh * (~mask).unsqueeze(1)
    b, _, c, h, w = oh.shape
    return oh.reshape(b, STATES * c, h, w)


def split_logits(out: torch.Tensor) -> torch.Tensor:
    """(B, 3C, h, w) network output -> (B, 3, C, h, w) logits per pixel."""
    b, sc, h, w = out.shape
    return out.reshape(b, STATES, sc // STATES, h, w)


@dataclass
class MaskedBitSchedulerOutput(BaseOutput):
    prev_sample: torch.Tensor        # (B, C, h, w) values in {-1, 0, 1} (hidden ones are 0)
    mask: torch.Tensor               # (B, C, h, w) bool: still hidden


class MaskedBitScheduler(SchedulerMixin, ConfigMixin):
    """Timestep t in [0, T) hides a share ``mask_ratio(t)`` of the pixels: T - 1 hides all of them
    (where sampling starts), 0 almost none. ``unmask_order``: ``random`` reveals a uniformly random
    subset each step (ancestral sampling of the absorbing process: samples follow the model's
    distribution), ``confidence`` the most confident pixels first (MaskGIT; sharper, less varied)."""

    config_name = "scheduler_config.json"
    order = 1

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, masking_schedule: str = "cosine",
                 unmask_order: str = "random", temperature: float = 1.0, layout_share: float = 0.5):
        if masking_schedule not in ("cosine", "linear"):
            raise ValueError(f"masking_schedule must be cosine or linear, not {masking_schedule!r}")
        if unmask_order not in ("random", "confidence"):
            raise ValueError(f"unmask_order must be random or confidence, not {unmask_order!r}")
        self.timesteps = None
        self.init_noise_sigma = 1.0
        self._begin = 0

    # -- the forward process ----------------------------------------------------------------------

    def mask_ratio(self, t: torch.Tensor) -> torch.Tensor:
        s = (t.float() + 1) / self.config.num_train_timesteps               # (0, 1]
        if self.config.masking_schedule == "cosine":
            return torch.sin(s * math.pi / 2)
        return s

    def add_noise(self, values: torch.Tensor, t: torch.Tensor, generator: torch.Generator):
        """Hide each pixel of image i with probability mask_ratio(t_i). In a share ``layout_share``
        of the images only present pixels are hidden (absent ones stay visible), as sampling does
        once the row layouts are drawn (netdiff.model.layouts). Returns (input, mask)."""
        ratio = self.mask_ratio(t).to(values.device)[:, None, None, None]
        u = torch.rand(values.shape, generator=generator, device=generator.device).to(values.device)
        by_layout = (torch.rand(values.shape[0], generator=generator, device=generator.device)
                     < self.config.layout_share)
        mask = (u < ratio) & ~(by_layout.to(values.device)[:, None, None, None] & (values.round() == -1))
        return one_hot_visible(values, mask), mask

    # -- sampling ---------------------------------------------------------------------------------

    def set_timesteps(self, num_inference_steps: int, device=None):
        T = self.config.num_train_timesteps
        steps = torch.linspace(T - 1, 0, num_inference_steps + 1)[:-1].round().long()
        self.timesteps = steps.to(device)
        self.num_inference_steps = num_inference_steps
        self._begin = 0

    def set_begin_index(self, begin_index: int = 0):
        self._begin = begin_index

    def start_index(self, strength: float) -> int:
        """The step whose mask ratio is nearest ``strength`` (img2img: hide that share, go on)."""
        ratios = self.mask_ratio(self.timesteps.cpu())
        return int((ratios - strength).abs().argmin())

    def step(self, logits: torch.Tensor, timestep, sample: torch.Tensor, mask: torch.Tensor,
             generator: list[torch.Generator], return_dict: bool = True, present: torch.Tensor | None = None,
             hidden_total: list[int] | None = None):
        """Draw every hidden pixel from softmax(logits / temperature), then keep hidden the share the
        next timestep asks for (the least confident, or a random subset). Randomness per image from
        its own generator, so image k does not depend on the batch it is in.

        ``present``: pixels known to hold a bit (their row layout says so): never drawn absent.
        ``hidden_total``: per image, how many pixels were hidden when sampling began (the schedule's
        shares are of those; default every pixel)."""
        steps = self.timesteps.tolist()
        i = steps.index(int(timestep))
        next_ratio = 0.0 if i + 1 >= len(steps) else float(self.mask_ratio(torch.tensor(steps[i + 1])))
        lg = split_logits(logits.float()) / max(self.config.temperature, 1e-6)  # (B, 3, C, h, w)
        if present is not None:
            lg[:, 0] = lg[:, 0].masked_fill(present, float("-inf"))
        b = lg.shape[0]
        dev = lg.device
        # One kernel per step for the whole batch, not one per image (on a GPU the per-image loop
        # and its host syncs cost more than the UNet); each image still draws from its own stream,
        # in the same order (states first, then the reveal order).
        u = torch.stack([torch.rand((STATES,) + tuple(mask.shape[1:]), generator=g, device=g.device)
                         for g in generator[:b]]).to(dev)
        gumbel = -torch.log((-torch.log(u.clamp_min(1e-20))).clamp_min(1e-20))
        drawn = (lg + gumbel).argmax(1)                                        # (B, C, h, w) in 0..2
        flat_mask = mask.flatten(1)
        hidden_now = flat_mask.sum(1).tolist()
        total = [flat_mask.shape[1]] * b if hidden_total is None else [int(x) for x in hidden_total]
        keep = [min(int(math.floor(next_ratio * n)), h - 1) if h else 0 for n, h in zip(total, hidden_now)]
        still = torch.zeros_like(mask)
        rows = [k for k in range(b) if keep[k] > 0]
        if rows:
            if self.config.unmask_order == "confidence":
                # MaskGIT: the drawn value's log-probability, with Gumbel noise that fades as the
                # map fills (aMUSEd's mask_by_random_topk), so the order is not fixed
                logp = torch.log_softmax(lg[rows], 1).gather(1, drawn[rows][:, None])[:, 0]
                v = torch.stack([torch.rand(logp.shape[1:], generator=generator[k], device=generator[k].device)
                                 for k in rows]).to(dev)
                score = logp + next_ratio * -torch.log((-torch.log(v.clamp_min(1e-20))).clamp_min(1e-20))
            else:
                score = torch.stack([torch.rand(mask.shape[1:], generator=generator[k], device=generator[k].device)
                                     for k in rows]).to(dev)
            score = score.masked_fill(~mask[rows], float("inf")).flatten(1)
            # the keep[k] lowest scores of image k stay hidden: rank every pixel, compare with keep
            order = score.argsort(dim=1, stable=True)
            rank = torch.empty_like(order)
            rank.scatter_(1, order, torch.arange(order.shape[1], device=dev).expand_as(order))
            limit = torch.tensor([keep[k] for k in rows], device=dev)[:, None]
            still[rows] = (rank < limit).view((len(rows),) + tuple(mask.shape[1:]))
        reveal = mask & ~still
        values = torch.where(reveal, (drawn - 1).to(sample.dtype), sample)
        if not return_dict:
            return values, still
        return MaskedBitSchedulerOutput(prev_sample=values, mask=still)

    def __len__(self):
        return self.config.num_train_timesteps


def masked_loss(unet, scheduler: MaskedBitScheduler, latents, encoder_hidden_states, gen: torch.Generator,
                controlnet=None, control=None, position_channels: int = 0,
                position_encoding: str = "onehot") -> torch.Tensor:
    """Cross-entropy of the hidden pixels' states, given the visible ones and the caption."""
    from netdiff.model.build import with_positions

    # Sample a random timestep (share of hidden pixels) for each image, hide that share
    t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=gen,
                      device=gen.device)
    inputs, mask = scheduler.add_noise(latents, t, gen)
    t = t.to(latents.device)
    model_in = with_positions(inputs.to(latents.dtype), position_channels, position_encoding)
    # Copied from netdiff.model.training.diffusion_loss (the UNet call with ControlNet residuals)
    down_res = mid_res = None
    if controlnet is not None:
        down_res, mid_res = controlnet(model_in, t, encoder_hidden_states=encoder_hidden_states,
                                       controlnet_cond=control, return_dict=False)
    out = unet(model_in, t, encoder_hidden_states, down_block_additional_residuals=down_res,
               mid_block_additional_residual=mid_res).sample
    logits = split_logits(out.float())                                      # (B, 3, C, h, w)
    target = (latents.round().clamp(-1, 1) + 1).long()
    ce = F.cross_entropy(logits, target, reduction="none")                  # (B, C, h, w)
    return (ce * mask).sum() / mask.sum().clamp_min(1)
