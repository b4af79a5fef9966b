"""``NetdiffMaskedPipeline``: sampling for masked-space models (netdiff.model.masked).

The same pieces as ``NetdiffPipeline`` (text encoder, UNet, optional ControlNet, the lossless
autoencoder, LoRA loading), with the masked sampler: start from an all-hidden map, and at each step
draw the hidden pixels from the guided logits and reveal a share of them.
"""
from __future__ import annotations

import numpy as np
import torch

from netdiff.model.build import extra_input_channels, with_positions
from netdiff.model.generate import NetdiffPipeline, NetdiffPipelineOutput
from netdiff.model.masked import one_hot_visible


def tie_pixels(values: torch.Tensor, mask: torch.Tensor, ties: tuple, factor: int):
    """Apply the batch's ties on the folded map: a hidden canonical pixel takes the value of its
    first revealed tied pixel, then every tied pixel shows its revealed canonical pixel. ``ties``
    index the batch's images stacked on rows, so a tie may join two images of the batch (the
    windows of one taller image)."""
    canon, member = ties
    if len(canon) == 0:
        return values, mask
    img = torch.nn.functional.pixel_shuffle(values, factor)
    hid = torch.nn.functional.pixel_shuffle(mask.float(), factor) > 0.5
    v, h = img.reshape(-1).clone(), hid.reshape(-1).clone()
    c, m = torch.from_numpy(canon).to(v.device), torch.from_numpy(member).to(v.device)
    # canonical pixels still hidden learn from the first of their tied pixels already drawn
    sel = (h[c] & ~h[m]).cpu().numpy()
    if sel.any():
        cs, first = np.unique(canon[sel], return_index=True)
        src = torch.from_numpy(member[sel][first]).to(v.device)
        cs = torch.from_numpy(cs).to(v.device)
        v[cs] = v[src]
        h[cs] = False
    known = ~h[c]
    v[m[known]] = v[c[known]]
    h[m[known]] = False
    shape = img.shape
    values = torch.nn.functional.pixel_unshuffle(v.view(shape), factor)
    mask = torch.nn.functional.pixel_unshuffle(h.view(shape).float(), factor) > 0.5
    return values, mask


class NetdiffMaskedPipeline(NetdiffPipeline):

    @torch.no_grad()
    def __call__(self, prompts: list[str], *, height: int, width: int, generators: list[torch.Generator],
                 num_inference_steps: int = 12, guidance_scale: float = 1.0,
                 control: torch.Tensor | None = None, controlnet_conditioning_scale: float = 1.0,
                 init_latents: torch.Tensor | None = None, strength: float = 1.0,
                 present: torch.Tensor | None = None, ties: list | None = None,
                 progress: bool = True) -> NetdiffPipelineOutput:
        """``present``: (B, 1, H, W) bool row layouts drawn beforehand (netdiff.model.layouts): absent
        pixels start revealed, present ones hidden and never drawn absent. ``ties``: (canonical,
        tied) flat pixel indices into the batch's images stacked on rows (``layouts.tie_pairs``,
        offset by each image's first row): a tied pixel always shows its canonical pixel's value
        (the ports of one flow's packets, across the windows of a taller image too)."""
        # 1. Check inputs (the same as the Gaussian pipeline's)
        f = self.check_inputs(prompts, height, width, generators, control, strength)
        device, dtype = self.unet.device, self.unet.dtype
        batch = len(prompts)
        extra = extra_input_channels(self.unet)
        do_cfg = guidance_scale != 1.0

        # 2. Encode the prompts (the empty prompt is the unconditional branch of guidance)
        cond = self.encode_prompt(prompts, device)
        if do_cfg:
            cond = torch.cat([self.encode_prompt([""] * batch, device), cond])

        # 3. Timesteps (img2img / hires: hide a share `strength` of the start image and go on from there)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        shape = (batch, f * f, height // f, width // f)
        if init_latents is not None and strength < 1.0:
            start = self.scheduler.start_index(strength)
            timesteps = timesteps[start:]
            if len(timesteps) == 0:
                raise ValueError(f"strength {strength} leaves no sampling step of {num_inference_steps}")

        # 4. Starting map: all hidden, or only the layout's present pixels hidden, or the start image
        #    with a random share hidden (per-image generators)
        present_f = hidden_total = None
        if present is not None and (init_latents is None or strength >= 1.0):
            if present.shape != (batch, 1, height, width):
                raise ValueError(f"present map is {tuple(present.shape)}, expected {(batch, 1, height, width)}")
            present_f = torch.nn.functional.pixel_unshuffle(present.to(torch.float32), f).bool().to(device)
            values = torch.where(present_f, 0.0, -1.0)
            mask = present_f.clone()
            hidden_total = [int(m.sum()) for m in mask]
        elif init_latents is None or strength >= 1.0:
            values = torch.zeros(shape, device=device)
            mask = torch.ones(shape, dtype=torch.bool, device=device)
        else:
            values = init_latents.to(device, torch.float32).round().clamp(-1, 1)
            ratio = float(self.scheduler.mask_ratio(timesteps[:1].cpu()))
            u = torch.stack([torch.rand(shape[1:], generator=g, device=g.device) for g in generators]).to(device)
            mask = u < ratio

        # 5. Control image, one per prompt, duplicated for both halves of guidance
        if control is not None:
            control = self.prepare_control(control, batch, height, width, do_cfg)

        # 6. Sampling loop: logits for every pixel, guided, then the scheduler draws and reveals
        for t in self.progress_bar(timesteps) if progress else timesteps:
            model_in = one_hot_visible(values, mask).to(dtype)
            model_in = torch.cat([model_in] * 2) if do_cfg else model_in
            model_in = with_positions(model_in, extra, self.config.position_encoding)
            tt = t.expand(model_in.shape[0])
            down_res = mid_res = None
            if control is not None:
                down_res, mid_res = self.controlnet(
                    model_in, tt, encoder_hidden_states=cond, controlnet_cond=control,
                    conditioning_scale=controlnet_conditioning_scale, return_dict=False)
            logits = self.unet(model_in, tt, encoder_hidden_states=cond,
                               down_block_additional_residuals=down_res,
                               mid_block_additional_residual=mid_res).sample.float()
            if do_cfg:
                uncond, text = logits.chunk(2)
                logits = uncond + guidance_scale * (text - uncond)
            out = self.scheduler.step(logits, t, values, mask, generator=generators, present=present_f,
                                      hidden_total=hidden_total)
            values, mask = out.prev_sample, out.mask
            if ties is not None:
                values, mask = tie_pixels(values, mask, ties, f)

        # 7. Unfold to the image; every pixel is drawn, so the values are exact ternary
        samples = self.decode_latents(values).float()
        from netdiff.model.ternary import tensor_to_bits

        return NetdiffPipelineOutput(samples=samples, bits=tensor_to_bits(samples))
