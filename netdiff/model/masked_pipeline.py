"""``NetdiffMaskedPipeline``: sampling for masked-space models (netdiff.model.masked).

The same pieces as ``NetdiffPipeline`` (text encoder, UNet, optional ControlNet, the lossless
autoencoder, LoRA loading), with the masked sampler: start from an all-hidden map, and at each step
draw the hidden pixels from the guided logits and reveal a share of them.
"""
from __future__ import annotations

import torch

from netdiff.model.build import extra_input_channels, with_positions
from netdiff.model.generate import NetdiffPipeline, NetdiffPipelineOutput
from netdiff.model.masked import one_hot_visible


class NetdiffMaskedPipeline(NetdiffPipeline):

    @torch.no_grad()
    def __call__(self, prompts: list[str], *, height: int, width: int, generators: list[torch.Generator],
                 num_inference_steps: int = 12, guidance_scale: float = 1.0,
                 control: torch.Tensor | None = None, controlnet_conditioning_scale: float = 1.0,
                 init_latents: torch.Tensor | None = None, strength: float = 1.0,
                 present: torch.Tensor | None = None, progress: bool = True) -> NetdiffPipelineOutput:
        """``present``: (B, 1, H, W) bool row layouts drawn beforehand (netdiff.model.layouts): absent
        pixels start revealed, present ones hidden and never drawn absent."""
        # 1. Check inputs. Raise error if not correct
        f = self.scale_factor
        if height % f or width % f:
            raise ValueError(f"height {height} and width {width} must be multiples of {f}")
        if len(generators) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(generators)} generators")
        if control is not None and self.controlnet is None:
            raise ValueError("a control image needs a ControlNet")
        if not 0 < strength <= 1:
            raise ValueError(f"strength must be in (0, 1], not {strength}")
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
            u = torch.stack([torch.rand(shape[1:], generator=g) for g in generators]).to(device)
            mask = u < ratio

        # 5. Control image, one per prompt, duplicated for both halves of guidance
        if control is not None:
            control = control.to(device, dtype)
            if control.shape[0] == 1:
                control = control.expand(batch, -1, -1, -1)
            if control.shape[-2:] != (height, width):
                raise ValueError(f"control image is {tuple(control.shape[-2:])}, the sample {(height, width)}")
            if do_cfg:
                control = torch.cat([control, control])

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

        # 7. Unfold to the image; every pixel is drawn, so the values are exact ternary
        samples = self.decode_latents(values).float()
        from netdiff.model.ternary import tensor_to_bits

        return NetdiffPipelineOutput(samples=samples, bits=tensor_to_bits(samples))
