"""Typed configuration for the diffusion layer, loaded from ``configs/model/*.yaml``.

One YAML file holds four sections (``image``, ``unet``, ``text``, ``train``) plus ``lora``,
``controlnet`` and ``sample``. Every key has a default here, so a config file only states what it
changes; unknown keys are an error (a typo must not be silently ignored).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from netdiff.errors import NetdiffError

CAPTION_TEMPLATE = "pixelated network data, type-{cls}"   # NetDiffusion's prompt
POSITION_ENCODINGS = ("octave", "onehot")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
SPACES = ("ternary", "masked", "vae")
FOLDED_SPACES = ("ternary", "masked")      # the lossless pixel_unshuffle map, no learned autoencoder


@dataclass
class ImageConfig:
    """What the model sees. ``space`` is ``ternary`` (the lossless pixel_unshuffle autoencoder on
    the 1-channel {-1,0,1} map, Gaussian diffusion), ``masked`` (the same map, masked diffusion with a
    categorical output per pixel: netdiff.model.masked) or ``vae`` (the base model's own AutoencoderKL on the RGB image, as
    NetDiffusion did with SD 1.5; it loses bits, see docs/diffusion.md)."""

    layout: str = "netdiffusion"
    height: int = 1024            # packets (rows) per training image; taller images are cut, shorter padded
    width: int = 1088             # columns: must equal the layout's width, never cropped
    space: str = "ternary"
    factor: int = 8               # pixel_unshuffle factor of the ternary autoencoder
    rows: str = "first"           # "first": first `height` rows of each image; "tile": every window with packets
    train_height: int | None = None   # vae space only: resize (nearest) to this size for training,
    train_width: int | None = None    # NetDiffusion's 768 x 816; None = native size


@dataclass
class UNetConfig:
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    attention_head_dim: int = 8
    cross_attention_dim: int = 512
    # Cross-attention only in the low-resolution blocks keeps the full-width rows cheap.
    down_block_types: tuple[str, ...] | None = None
    up_block_types: tuple[str, ...] | None = None
    norm_num_groups: int = 32
    # Fixed sin/cos features of the column position, appended to the UNet input. A column's
    # meaning (which header field, which bit) is its absolute position, and a convolution alone
    # only learns position near the image borders.
    position_channels: int = 0
    # "onehot": one channel per latent column (position_channels = width / factor), so the UNet's
    # first convolution holds a learned embedding of every column (docs/diffusion.md, "Column
    # position"). "octave": sin/cos at octave frequencies (models saved before onehot existed).
    position_encoding: str = "octave"
    # The caption, attention-pooled, is added to the timestep embedding (diffusers'
    # addition_embed_type "text"): every ResNet block at every level sees the class, not only the
    # cross-attention blocks of the low levels.
    text_time_embedding: bool = False


@dataclass
class TextConfig:
    hidden_size: int = 512
    intermediate_size: int = 1024
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    vocab_size: int = 1024        # the tokenizer trained on the captions must fit in this
    max_length: int = 16


@dataclass
class TrainConfig:
    steps: int = 10000
    batch_size: int = 8
    gradient_accumulation: int = 1
    learning_rate: float = 1e-4
    lr_warmup_steps: int = 500
    lr_scheduler: str = "constant_with_warmup"
    adam_weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    caption_dropout: float = 0.1  # share of captions replaced by "" so guidance (cfg) works
    train_text_encoder: bool = True
    mixed_precision: str = "bf16"   # used only on a GPU; CPU runs in fp32
    checkpoint_every: int = 1000
    checkpoints_kept: int = 2
    seed: int = 0
    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"
    prediction_type: str = "epsilon"
    # Zero terminal SNR (Lin et al. 2024): the last training timestep is pure noise, as sampling's
    # first step is. Needs v_prediction or sample; see docs/diffusion.md for why it matters here.
    rescale_betas_zero_snr: bool = False
    timestep_spacing: str = "leading"     # "trailing" makes sampling start at the last timestep
    # Divide the schedule's signal-to-noise ratio at every timestep by snr_shift^2 (simple
    # diffusion's shift): 64 correlated pixels per latent position make a nominal noise level easy.
    snr_shift: float = 1.0


@dataclass
class LoraConfig:
    rank: int = 16
    alpha: int | None = None      # None = rank (scale 1)
    learning_rate: float = 1e-4
    steps: int = 2000
    batch_size: int = 4
    train_text_encoder: bool = False
    unet_target_modules: tuple[str, ...] = ("to_k", "to_q", "to_v", "to_out.0")
    text_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj")


@dataclass
class ControlNetConfig:
    kind: str = "mask"            # "mask" (protocol fields present) or "canny" (edges, NetDiffusion's)
    learning_rate: float = 1e-5
    steps: int = 2000
    batch_size: int = 4
    conditioning_scale: float = 1.0


@dataclass
class SampleConfig:
    steps: int = 20
    cfg: float = 7.0
    scheduler: str = "dpmpp-2m-karras"
    batch_size: int = 4
    hires_height: int | None = None   # --hires: second pass at this size (NetDiffusion: 1024 x 1088)
    hires_width: int | None = None
    hires_strength: float = 0.5
    # masked models: the order pixels are revealed in and the softmax temperature they are drawn at
    unmask_order: str = "random"
    temperature: float = 1.0


@dataclass
class ModelConfig:
    name: str = "custom"
    image: ImageConfig = field(default_factory=ImageConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    text: TextConfig = field(default_factory=TextConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    controlnet: ControlNetConfig = field(default_factory=ControlNetConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        im = self.image
        if im.space not in SPACES:
            raise NetdiffError(f"image.space must be one of {', '.join(SPACES)}, not {im.space!r}")
        if im.rows not in ("first", "tile"):
            raise NetdiffError(f"image.rows must be 'first' or 'tile', not {im.rows!r}")
        if im.height < 1 or im.width < 1:
            raise NetdiffError("image.height and image.width must be positive")
        u = self.unet
        if u.position_encoding not in POSITION_ENCODINGS:
            raise NetdiffError(f"unet.position_encoding must be one of {', '.join(POSITION_ENCODINGS)}, "
                               f"not {u.position_encoding!r}")
        if u.position_channels < 0 or (u.position_encoding == "octave" and u.position_channels % 2):
            raise NetdiffError("unet.position_channels must be an even number >= 0 (sin/cos pairs)")
        if u.position_encoding == "onehot" and u.position_channels and im.space in FOLDED_SPACES \
                and u.position_channels != im.width // im.factor:
            raise NetdiffError(f"unet.position_channels ({u.position_channels}) must equal the latent width "
                               f"{im.width // im.factor} (image.width / factor) for position_encoding onehot")
        if self.train.rescale_betas_zero_snr and self.train.prediction_type == "epsilon":
            raise NetdiffError("train.rescale_betas_zero_snr needs prediction_type v_prediction or sample: "
                               "at zero terminal SNR the noise alone says nothing about the image")
        if self.train.snr_shift <= 0:
            raise NetdiffError(f"train.snr_shift must be positive, not {self.train.snr_shift}")
        if self.train.timestep_spacing not in ("leading", "trailing", "linspace"):
            raise NetdiffError(f"train.timestep_spacing must be leading, trailing or linspace, not "
                               f"{self.train.timestep_spacing!r}")
        if self.train.prediction_type not in PREDICTION_TYPES:
            raise NetdiffError(f"train.prediction_type must be one of {', '.join(PREDICTION_TYPES)}, "
                               f"not {self.train.prediction_type!r}")
        if self.controlnet.kind not in ("mask", "canny"):
            raise NetdiffError(f"controlnet.kind must be 'mask' or 'canny', not {self.controlnet.kind!r}")
        if self.sample.unmask_order not in ("random", "confidence"):
            raise NetdiffError(f"sample.unmask_order must be random or confidence, not {self.sample.unmask_order!r}")
        if self.sample.temperature <= 0:
            raise NetdiffError(f"sample.temperature must be positive, not {self.sample.temperature}")
        if (im.space == "masked") != (self.sample.scheduler == "masked"):
            raise NetdiffError(f"sample.scheduler {self.sample.scheduler!r} does not fit image.space {im.space!r}: "
                               "masked-space models sample with 'masked', the others with a Gaussian sampler")
        if im.space in FOLDED_SPACES:
            # The UNet halves the latent (len(blocks) - 1) times; every side must stay an integer.
            div = im.factor * 2 ** (len(self.unet.block_out_channels) - 1)
            for side, n in (("height", im.height), ("width", im.width)):
                if n % div:
                    raise NetdiffError(
                        f"image.{side} {n} is not a multiple of {div} (factor {im.factor} x "
                        f"2^{len(self.unet.block_out_channels) - 1} UNet downsamples): choose another "
                        "height, factor or number of UNet blocks")
            latent = im.factor ** 2
            if self.unet.block_out_channels[0] < latent:
                # Every latent channel carries independent noise; a narrower first block cannot
                # pass it through, and the loss stalls near 0.7 (measured with 32 < 64).
                raise NetdiffError(
                    f"unet.block_out_channels[0] ({self.unet.block_out_channels[0]}) is narrower than "
                    f"the {latent} latent channels of factor {im.factor}: use a smaller factor or a "
                    "wider first block")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "ModelConfig":
        return _build(cls, d or {}, source)


def _build(klass, data: dict, where: str):
    if not isinstance(data, dict):
        raise NetdiffError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(klass)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise NetdiffError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        f = known[name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, f"{where}.{name}")
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    try:
        return klass(**kwargs)
    except TypeError as e:
        raise NetdiffError(f"{where}: {e}") from None


def load_config(path) -> ModelConfig:
    """A YAML file, or the name of one in ``configs/model/`` (``tiny``, ``compact``, ``sd15-lora``)."""
    import yaml

    p = Path(path)
    if not p.exists() and not p.suffix:
        # netdiff/configs: a link to the repository's configs/, or the copy a wheel ships
        repo_configs = Path(__file__).resolve().parents[1] / "configs" / "model" / f"{path}.yaml"
        if repo_configs.exists():
            p = repo_configs
    if not p.exists():
        raise NetdiffError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise NetdiffError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    cfg = ModelConfig.from_dict(data or {}, source=str(p))
    if cfg.name == "custom":
        cfg.name = p.stem
    return cfg


def config_from_json(text: str) -> ModelConfig:
    return ModelConfig.from_dict(json.loads(text), source="saved model config")
