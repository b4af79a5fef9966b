"""The lossless "autoencoder": pixel_unshuffle of the 1-channel ternary map.

A learned AutoencoderKL blurs the one-pixel bit columns (docs/diffusion.md, "The autoencoder
problem"); this one folds each ``factor x factor`` block of the {-1, 0, 1} map into channels, so a
1024 x 1088 image becomes a 64 x 128 x 136 latent and decoding (pixel_shuffle, then rounding) gives
every bit back. It has the AutoencoderKL interface (``encode(x).latent_dist.sample()``,
``decode(z).sample``, ``config.scaling_factor``) so training and sampling code serve both kinds.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.models.modeling_outputs import AutoencoderKLOutput

from netdiff.image.codec import PALETTE, nearest_bits


class _Deterministic:
    """Stands in for DiagonalGaussianDistribution: the latent is exact, sampling is the identity."""

    def __init__(self, z: torch.Tensor):
        self.z = z

    def sample(self, generator=None) -> torch.Tensor:
        return self.z

    def mode(self) -> torch.Tensor:
        return self.z


class TernaryAutoencoder(torch.nn.Module, ConfigMixin):
    config_name = "config.json"

    @register_to_config
    def __init__(self, factor: int = 8, in_channels: int = 1, scaling_factor: float = 1.0):
        super().__init__()
        if factor < 1:
            raise ValueError("factor must be >= 1")
        # No weights; an empty buffer lets .to(), .device and .dtype behave like a model's.
        self.register_buffer("_probe", torch.zeros(0), persistent=False)

    @property
    def device(self) -> torch.device:
        return self._probe.device

    @property
    def dtype(self) -> torch.dtype:
        return self._probe.dtype

    @property
    def latent_channels(self) -> int:
        return self.config.in_channels * self.config.factor ** 2

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        f = self.config.factor
        if x.shape[-2] % f or x.shape[-1] % f:
            raise ValueError(f"image sides {tuple(x.shape[-2:])} must be multiples of {f}")
        z = F.pixel_unshuffle(x, f)
        out = _Deterministic(z)
        return AutoencoderKLOutput(latent_dist=out) if return_dict else (out,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator=None):
        x = F.pixel_shuffle(z, self.config.factor)
        return DecoderOutput(sample=x) if return_dict else (x,)

    def save_pretrained(self, directory) -> None:
        self.save_config(directory)

    @classmethod
    def from_pretrained(cls, directory, **_) -> "TernaryAutoencoder":
        return cls.from_config(cls.load_config(directory))


# --- image tensors <-> ternary maps -------------------------------------------------------------

def bits_to_tensor(bits: np.ndarray) -> torch.Tensor:
    """(H, W) int8 in {-1,0,1} -> (1, H, W) float32: the ternary values are the model's pixel range."""
    return torch.from_numpy(np.ascontiguousarray(bits, dtype=np.float32))[None]


def bits_to_rgb_tensor(bits: np.ndarray) -> torch.Tensor:
    """(H, W) ternary -> (3, H, W) palette RGB in [-1, 1], the input an SD-style VAE expects."""
    rgb = PALETTE[bits.astype(np.intp) + 1].astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


def tensor_to_bits(x: torch.Tensor) -> np.ndarray:
    """Decoded samples back to {-1,0,1}: (B, 1, H, W) rounds; (B, 3, H, W) RGB takes the nearest
    palette colour. Returns (B, H, W) int8."""
    x = x.detach().float().cpu()
    if x.shape[1] == 1:
        return x[:, 0].clamp(-1, 1).round().to(torch.int8).numpy()
    if x.shape[1] == 3:
        # The quantiser every image reader uses (same nearest colour, same ties), on floats so
        # that no rounding to uint8 makes ties the sample did not have.
        rgb = ((x.clamp(-1, 1) + 1) * 127.5).permute(0, 2, 3, 1).numpy()     # (B, H, W, 3)
        return nearest_bits(rgb)
    raise ValueError(f"cannot turn a {x.shape[1]}-channel sample into bits")
