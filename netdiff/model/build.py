"""Networks and schedulers built from a ModelConfig, with nothing downloaded."""
from __future__ import annotations

from netdiff.errors import NetdiffError
from netdiff.model.config import ModelConfig, TrainConfig

SCHEDULERS = ("dpmpp-2m-karras", "euler-a", "ddim", "ddpm")     # Gaussian samplers; masked models use "masked"


def latent_size(cfg: ModelConfig, height: int | None = None, width: int | None = None) -> tuple[int, int]:
    f = cfg.image.factor
    return (height or cfg.image.height) // f, (width or cfg.image.width) // f


def block_types(cfg: ModelConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """No attention at the highest resolution: 128 x 136 latents would make 17,408-token
    self-attention; the lower blocks and the mid block carry the text conditioning."""
    n = len(cfg.unet.block_out_channels)
    down = cfg.unet.down_block_types or ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1)
    up = cfg.unet.up_block_types or ("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",)
    if len(down) != n or len(up) != n:
        raise NetdiffError(f"unet: {n} block_out_channels need {n} down and {n} up block types")
    return tuple(down), tuple(up)


def build_unet(cfg: ModelConfig):
    from diffusers import UNet2DConditionModel

    channels = cfg.image.factor ** 2          # 1 ternary channel folded by pixel_unshuffle
    if cfg.image.space == "masked":
        from netdiff.model.masked import STATES

        channels *= STATES                    # one-hot of each visible pixel in, 3 logits per pixel out
    down, up = block_types(cfg)
    u = cfg.unet
    return UNet2DConditionModel(
        sample_size=list(latent_size(cfg)),
        in_channels=channels + u.position_channels,
        out_channels=channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=tuple(u.block_out_channels),
        layers_per_block=u.layers_per_block,
        attention_head_dim=u.attention_head_dim,
        cross_attention_dim=u.cross_attention_dim,
        norm_num_groups=u.norm_num_groups,
        **({"addition_embed_type": "text", "addition_embed_type_num_heads": u.attention_head_dim}
           if u.text_time_embedding else {}),
    )


def extra_input_channels(unet) -> int:
    """Position channels a UNet expects beyond its latent (0 for Stable Diffusion's)."""
    return int(unet.config.in_channels) - int(unet.config.out_channels)


def with_positions(latents, n: int, encoding: str = "octave"):
    """Append ``n`` fixed column-position channels to a latent batch (the same for every row).

    ``onehot``: channel j is 1 in latent column j (n = latent width), so the weights the first
    convolution gives these channels are a learned embedding of each column: a column's meaning in
    nPrint (which field, which bit) is its absolute position. ``octave``: sin/cos of the column
    index at octave frequencies (n/2 of them); a linear layer can only form biases in the span of
    those n functions, not one per column."""
    import math

    import torch

    if n == 0:
        return latents
    b, _, h, w = latents.shape
    if encoding == "onehot":
        if n != w:
            raise NetdiffError(f"one-hot column positions need {w} channels for a latent {w} wide, not {n}")
        feats = torch.eye(w, device=latents.device, dtype=latents.dtype)          # (n, w)
    elif encoding == "octave":
        x = torch.arange(w, device=latents.device, dtype=torch.float32) / w
        freqs = 2.0 ** torch.arange(n // 2, device=latents.device, dtype=torch.float32)
        ang = 2 * math.pi * freqs[:, None] * x[None, :]                   # (n/2, w)
        feats = torch.cat([torch.sin(ang), torch.cos(ang)]).to(latents.dtype)   # (n, w)
    else:
        raise NetdiffError(f"unknown position encoding {encoding!r}")
    feats = feats[None, :, None, :].expand(b, n, h, w)
    return torch.cat([latents, feats], dim=1)


def build_text_encoder(cfg: ModelConfig):
    from transformers import CLIPTextConfig, CLIPTextModel

    t = cfg.text
    # Token ids follow netdiff.model.tokenizer.SPECIAL_TOKENS: [PAD]=0, [UNK]=1, [BOS]=2, [EOS]=3.
    config = CLIPTextConfig(
        vocab_size=t.vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_hidden_layers, num_attention_heads=t.num_attention_heads,
        max_position_embeddings=t.max_length, projection_dim=cfg.unet.cross_attention_dim,
        pad_token_id=0, bos_token_id=2, eos_token_id=3)
    if t.hidden_size != cfg.unet.cross_attention_dim:
        raise NetdiffError(f"text.hidden_size ({t.hidden_size}) must equal unet.cross_attention_dim "
                           f"({cfg.unet.cross_attention_dim})")
    return CLIPTextModel(config)


def shifted_betas(train: TrainConfig):
    """The config's beta schedule with its SNR divided by ``snr_shift``^2 at every timestep
    (logit(alpha_bar) - 2 log(shift)), as betas diffusers' schedulers take (``trained_betas``)."""
    import math

    import torch
    from diffusers import DDPMScheduler

    ab = DDPMScheduler(num_train_timesteps=train.num_train_timesteps, beta_schedule=train.beta_schedule,
                       beta_start=0.00085, beta_end=0.012).alphas_cumprod.double()
    ab = torch.sigmoid(torch.logit(ab) - 2 * math.log(train.snr_shift))
    alphas = ab / torch.cat([ab.new_ones(1), ab[:-1]])
    return (1 - alphas).tolist()


def build_train_scheduler(train: TrainConfig, space: str = "ternary"):
    from diffusers import DDPMScheduler

    if space == "masked":
        from netdiff.model.masked import MaskedBitScheduler

        return MaskedBitScheduler(num_train_timesteps=train.num_train_timesteps)

    # steps_offset=1 and clip_sample=False: what SD pipelines expect (they rewrite the config otherwise).
    return DDPMScheduler(num_train_timesteps=train.num_train_timesteps, beta_schedule=train.beta_schedule,
                         beta_start=0.00085, beta_end=0.012, prediction_type=train.prediction_type,
                         trained_betas=shifted_betas(train) if train.snr_shift != 1 else None,
                         clip_sample=False, steps_offset=1 if train.timestep_spacing == "leading" else 0,
                         timestep_spacing=train.timestep_spacing,
                         rescale_betas_zero_snr=train.rescale_betas_zero_snr)


def make_scheduler(name: str, base_config, clip: bool = False):
    """A sampling scheduler by name, sharing the training noise schedule (``base_config``).

    ``clip``: the latent is the image itself (ternary space, values in [-1, 1]), so each step's
    estimate of the clean image is clamped to that range (DDIM/DDPM ``clip_sample``, DPM-Solver++
    thresholding). Without it an early, poor estimate at high noise (x0 error = eps error /
    sqrt(alpha_bar), ~13x at the first step) sends samples far outside the range."""
    from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,
                           EulerAncestralDiscreteScheduler)

    if name == "dpmpp-2m-karras":
        return DPMSolverMultistepScheduler.from_config(
            base_config, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True,
            thresholding=clip, sample_max_value=1.0)
    if name == "euler-a":
        prediction = dict(base_config).get("prediction_type", "epsilon")
        if not clip and prediction != "sample":
            return EulerAncestralDiscreteScheduler.from_config(base_config)
        sched = _clean_estimate_euler_a().from_config(base_config, prediction_type="epsilon")
        sched.model_prediction, sched.clip = prediction, clip
        return sched
    if name == "ddim":
        return DDIMScheduler.from_config(base_config, clip_sample=clip, clip_sample_range=1.0,
                                         set_alpha_to_one=False)
    if name == "ddpm":
        return DDPMScheduler.from_config(base_config, clip_sample=clip, clip_sample_range=1.0)
    if name == "masked":
        raise NetdiffError("the masked sampler is for models trained with image.space: masked")
    raise NetdiffError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")


def _clean_estimate_euler_a():
    """diffusers' Euler a, fed through the clean-image estimate: it then also samples models that
    predict the clean sample (``prediction_type: sample``, which diffusers' Euler a refuses) and,
    for ternary models, clamps the estimate to [-1, 1] like the other samplers."""
    from diffusers import EulerAncestralDiscreteScheduler

    class CleanEstimateEulerAncestral(EulerAncestralDiscreteScheduler):
        model_prediction = "epsilon"
        clip = False

        def step(self, model_output, timestep, sample, generator=None, return_dict=True):
            if self.step_index is None:
                self._init_step_index(timestep)
            sigma = self.sigmas[self.step_index]
            out, x = model_output.float(), sample.float()
            if self.model_prediction == "sample":
                x0 = out
            elif self.model_prediction == "v_prediction":
                x0 = out * (-sigma / (sigma ** 2 + 1) ** 0.5) + x / (sigma ** 2 + 1)
            else:
                x0 = x - sigma * out
            if self.clip:
                x0 = x0.clamp(-1.0, 1.0)
            eps = ((x - x0) / sigma).to(model_output.dtype)     # the noise that estimate implies
            return super().step(eps, timestep, sample, generator=generator, return_dict=return_dict)

    return CleanEstimateEulerAncestral


def pick_device(prefer: str | None = None):
    """cuda when present (or asked for), else mps, else cpu."""
    import torch

    if prefer:
        if prefer.startswith("cuda") and not torch.cuda.is_available():
            raise NetdiffError(f"--device {prefer}: no CUDA device here")
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def inference_dtype(device):
    """fp16 on CUDA (bf16 where supported, it does not overflow), fp32 elsewhere."""
    import torch

    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32
