"""Sample images from a trained model: load the folder, denoise, round to {-1,0,1}, write PNGs.

``NetdiffPipeline`` is a small diffusers pipeline: a text-conditioned UNet (optionally with a
ControlNet) over either the lossless ternary latent or an SD-style VAE latent. It inherits
``load_lora_weights`` from diffusers' StableDiffusionLoraLoaderMixin, so LoRA folders written by
``netdiff finetune`` (or any SD 1.5 LoRA for a SD 1.5 base) load the standard way.

Determinism: image k of a run uses a generator seeded with ``seed + k`` for its starting noise
and for any noise the sampler adds, so the same seed gives the same PNG bytes on one device type.
The generator lives on the device the model runs on (drawing a 1024-packet image's masks on the
CPU and copying them over would bound a GPU at a few images a second), so a GPU draws other
numbers than a CPU for the same seed; the row layouts are drawn on the CPU everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from diffusers.utils.torch_utils import randn_tensor

from netdiff.errors import NetdiffError
from netdiff.io.stale import remove_stale
from netdiff.model.build import extra_input_channels, with_positions
from netdiff.model.data import caption_for
from netdiff.model.tokenizer import tokenize


@dataclass
class NetdiffPipelineOutput:
    samples: torch.Tensor          # decoded, before rounding: (B, C, H, W)
    bits: np.ndarray               # (B, H, W) int8 in {-1, 0, 1}


@dataclass
class GenerateResult:
    bits: np.ndarray                               # (N, H, W) int8
    seeds: list[int]
    images: list[Path] = field(default_factory=list)
    pcaps: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    device: str = "cpu"


class NetdiffPipeline(DiffusionPipeline, StableDiffusionLoraLoaderMixin):
    _lora_loadable_modules = ["unet", "text_encoder"]
    model_cpu_offload_seq = "text_encoder->unet"

    def __init__(self, unet, text_encoder, tokenizer, autoencoder, scheduler, controlnet=None,
                 position_encoding: str = "octave"):
        super().__init__()
        self.register_modules(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer,
                              autoencoder=autoencoder, scheduler=scheduler, controlnet=controlnet)
        # How the UNet's extra input channels encode the column (netdiff models; SD has none).
        self.register_to_config(position_encoding=position_encoding)

    @property
    def scale_factor(self) -> int:
        vae = self.autoencoder
        if hasattr(vae.config, "factor"):
            return int(vae.config.factor)
        return 2 ** (len(vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str], device) -> torch.Tensor:
        ids = tokenize(self.tokenizer, prompts).to(device)
        return self.text_encoder(ids)[0]

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        vae = self.autoencoder
        dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
        return dist.mode() * vae.config.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.autoencoder
        return vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample

    def check_inputs(self, prompts, height: int, width: int, generators, control, strength: float) -> int:
        """Raise on arguments that cannot make a sample; returns the latent scale factor."""
        f = self.scale_factor
        if height % f or width % f:
            raise ValueError(f"height {height} and width {width} must be multiples of {f}")
        if len(generators) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(generators)} generators")
        if control is not None and self.controlnet is None:
            raise ValueError("a control image needs a ControlNet")
        if not 0 < strength <= 1:
            raise ValueError(f"strength must be in (0, 1], not {strength}")
        return f

    def prepare_control(self, control: torch.Tensor, batch: int, height: int, width: int, do_cfg: bool):
        """One control image per prompt (one given: repeated), twice over under guidance."""
        control = control.to(self.unet.device, self.unet.dtype)
        if control.shape[0] == 1:
            control = control.expand(batch, -1, -1, -1)
        if control.shape[-2:] != (height, width):
            raise ValueError(f"control image is {tuple(control.shape[-2:])}, the sample {(height, width)}")
        return torch.cat([control, control]) if do_cfg else control

    @torch.no_grad()
    def __call__(self, prompts: list[str], *, height: int, width: int, generators: list[torch.Generator],
                 num_inference_steps: int = 20, guidance_scale: float = 7.0,
                 control: torch.Tensor | None = None, controlnet_conditioning_scale: float = 1.0,
                 init_latents: torch.Tensor | None = None, strength: float = 1.0,
                 progress: bool = True) -> NetdiffPipelineOutput:
        # 1. Check inputs. Raise error if not correct
        f = self.check_inputs(prompts, height, width, generators, control, strength)
        device, dtype = self.unet.device, self.unet.dtype
        batch = len(prompts)
        extra = extra_input_channels(self.unet)     # column-position channels (netdiff models)
        do_cfg = guidance_scale > 1.0

        # 2. Encode the prompts (the empty prompt is the unconditional branch of guidance)
        cond = self.encode_prompt(prompts, device)
        if do_cfg:
            cond = torch.cat([self.encode_prompt([""] * batch, device), cond])

        # 3. Timesteps (img2img / hires: start part-way, at `strength`)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        if init_latents is not None and strength < 1.0:
            start = num_inference_steps - min(int(num_inference_steps * strength), num_inference_steps)
            timesteps = timesteps[start * self.scheduler.order:]
            if hasattr(self.scheduler, "set_begin_index"):
                self.scheduler.set_begin_index(start * self.scheduler.order)
            if len(timesteps) == 0:
                raise ValueError(f"strength {strength} leaves no denoising step of {num_inference_steps}")

        # 4. Starting latents: per-image generators make image k independent of the batch it is in
        shape = (batch, self.unet.config.out_channels, height // f, width // f)
        noise = randn_tensor(shape, generator=generators, device=generators[0].device, dtype=torch.float32)
        noise = noise.to(device, dtype)
        if init_latents is None:
            latents = noise * self.scheduler.init_noise_sigma
        else:
            latents = self.scheduler.add_noise(init_latents.to(device, dtype), noise, timesteps[:1].repeat(batch))

        # 5. Control image, one per prompt, duplicated for both halves of guidance
        if control is not None:
            control = self.prepare_control(control, batch, height, width, do_cfg)

        # 6. Denoising loop
        for t in self.progress_bar(timesteps) if progress else timesteps:
            model_in = torch.cat([latents] * 2) if do_cfg else latents
            model_in = with_positions(self.scheduler.scale_model_input(model_in, t), extra,
                                      self.config.position_encoding)
            down_res = mid_res = None
            if control is not None:
                down_res, mid_res = self.controlnet(
                    model_in, t, encoder_hidden_states=cond, controlnet_cond=control,
                    conditioning_scale=controlnet_conditioning_scale, return_dict=False)
            pred = self.unet(model_in, t, encoder_hidden_states=cond,
                             down_block_additional_residuals=down_res,
                             mid_block_additional_residual=mid_res).sample
            if do_cfg:
                uncond, text = pred.chunk(2)
                pred = uncond + guidance_scale * (text - uncond)
            latents = self.scheduler.step(pred, t, latents, generator=generators).prev_sample

        # 7. Decode and round to the three values
        samples = self.decode_latents(latents).float()
        from netdiff.model.ternary import tensor_to_bits

        return NetdiffPipelineOutput(samples=samples, bits=tensor_to_bits(samples))


def pixels_for(bits: np.ndarray, space: str) -> torch.Tensor:
    from netdiff.model.ternary import bits_to_rgb_tensor, bits_to_tensor

    return (bits_to_tensor if space in ("ternary", "masked") else bits_to_rgb_tensor)(bits)


def load_pipeline(model, *, lora=None, lora_scale: float = 1.0, controlnet=None, device=None,
                  config=None, scheduler: str | None = None, temperature: float | None = None,
                  unmask_order: str | None = None):
    """Model folder (+ LoRA folder, + ControlNet folder) -> (pipeline, bundle, controlnet kind)."""
    from netdiff.model.build import inference_dtype, make_scheduler, pick_device
    from netdiff.model.store import CONTROLNET_JSON, LORA_JSON, load_model, read_json

    device = pick_device(device) if not isinstance(device, torch.device) else device
    dtype = inference_dtype(device)
    # Loaded straight into the inference dtype (half precision on a GPU), then moved.
    kw = {} if dtype == torch.float32 else {"torch_dtype": dtype}
    bundle = load_model(model, config=config, **kw)
    control_kind = None
    cn = None
    if controlnet is not None:
        from diffusers import ControlNetModel

        doc = read_json(Path(controlnet) / CONTROLNET_JSON, "ControlNet")
        control_kind = doc["kind"]
        cn = ControlNetModel.from_pretrained(controlnet, use_safetensors=True, **kw)
    scheduler = scheduler or bundle.config.sample.scheduler
    if bundle.config.image.space == "masked":
        from netdiff.model.masked import MaskedBitScheduler
        from netdiff.model.masked_pipeline import NetdiffMaskedPipeline

        if scheduler != "masked":
            raise NetdiffError(f"--scheduler {scheduler}: this model is a masked-space model; its sampler is 'masked'")
        if unmask_order not in (None, "random", "confidence"):
            raise NetdiffError(f"unmask order must be random or confidence, not {unmask_order!r}")
        if temperature is not None and not temperature > 0:
            raise NetdiffError(f"temperature must be positive, not {temperature}")
        s = bundle.config.sample
        pipe_class, sampler = NetdiffMaskedPipeline, MaskedBitScheduler.from_config(
            bundle.scheduler.config, unmask_order=unmask_order or s.unmask_order,
            temperature=s.temperature if temperature is None else temperature)
    else:
        pipe_class = NetdiffPipeline
        sampler = make_scheduler(scheduler, bundle.scheduler.config, clip=bundle.config.image.space == "ternary")
    pipe = pipe_class(unet=bundle.unet, text_encoder=bundle.text_encoder, tokenizer=bundle.tokenizer,
                      autoencoder=bundle.autoencoder, scheduler=sampler,
                      controlnet=cn, position_encoding=bundle.config.unet.position_encoding)
    if lora is not None:
        from netdiff.model.dependencies import check_peft_stack

        check_peft_stack()
        # netdiff's LoRA folders name their classes; a plain diffusers LoRA folder loads as well.
        if (Path(lora) / LORA_JSON).is_file():
            doc = read_json(Path(lora) / LORA_JSON, "LoRA")
            bundle.classes = sorted(set(bundle.classes) | set(doc.get("classes", [])))
        elif not list(Path(lora).glob("*.safetensors")):
            raise NetdiffError(f"{lora}: no LoRA weights (*.safetensors) in this folder")
        pipe.load_lora_weights(str(lora), adapter_name="netdiff")
        pipe.set_adapters(["netdiff"], adapter_weights=[lora_scale])
    pipe.to(device)
    pipe.set_progress_bar_config(disable=None, leave=False)
    return pipe, bundle, control_kind


# Image k's structure stage draws from seed + k + STRUCTURE_SEED: a stream of its own, apart from
# the pixel draws at seed + k and the hires pass at seed + k + 1_000_003
STRUCTURE_SEED = 2_000_003


def generate(model, cls: str, count: int, seed: int, output=None, *, lora=None, lora_scale: float = 1.0,
             controlnet=None, control: str | None = None, steps: int | None = None, cfg: float | None = None,
             scheduler: str | None = None, batch_size: int | None = None, hires: bool = False,
             pcap: bool = False, device=None, config=None, progress: bool = True,
             shard: tuple[int, int] = (0, 1), skip_existing: bool = False, temperature: float | None = None,
             unmask_order: str | None = None, layouts: bool = True, height: int | None = None,
             timing=None, priors=None) -> GenerateResult:
    """``count`` images of class ``cls``: PNGs (and pcaps through the repair path) in ``output``.

    ``shard=(rank, world)`` makes image k this process's when k % world == rank (one process per
    GPU under ``accelerate launch``); ``skip_existing`` leaves images already in ``output`` alone
    (an interrupted run goes on). Image k depends only on seed + k, so neither changes a byte.
    ``layouts``: masked models first draw each image's row layouts from the class's layout chain
    (netdiff.model.layouts); False lets the model draw layouts pixel by pixel (for comparison).
    ``height``: packets per image, a multiple of the model's window (its config height). A taller
    image is sampled as consecutive windows in one batch; with row layouts, its layouts and flows
    are drawn over the whole height and a flow's ports are tied across windows, so flows run as
    long as in the training captures.

    ``pcap``: each image is also repaired into a pcap, with ``timing`` (inter-arrival model) and
    ``priors`` (class field priors), by default the ones the model folder keeps from its
    training images (``store.repair_files``)."""
    from netdiff.bits.layout import named_layout
    from netdiff.model.controls import load_control

    if count < 1:
        raise NetdiffError(f"--count must be at least 1, not {count}")
    if (controlnet is None) != (control is None):
        raise NetdiffError("--controlnet and --control go together")
    if pcap and output is None:
        raise NetdiffError("--pcap needs an output folder")
    rank, world = shard
    if not 0 <= rank < world:
        raise NetdiffError(f"shard {rank} of {world} does not exist")
    if skip_existing and output is None:
        raise NetdiffError("--skip-existing needs an output folder")
    seeds = [seed + k for k in range(rank, count, world)]
    if skip_existing:
        remove_stale(Path(output))
        # PNGs and pcaps are written atomically: one that exists is complete
        seeds = [sd for sd in seeds if not (_png_path(output, cls, sd).exists()
                                             and (not pcap or _png_path(output, cls, sd).with_suffix(".pcap").exists()))]
    if not seeds:       # all done already, or fewer images than processes
        return GenerateResult(bits=np.zeros((0, 0, 0), dtype=np.int8), seeds=[], device="none")
    repair_with = _repair_models(model, timing, priors) if pcap else {}

    # 1. Load the model (+ LoRA, + ControlNet)
    pipe, bundle, control_kind = load_pipeline(
        model, lora=lora, lora_scale=lora_scale, controlnet=controlnet, device=device, config=config,
        scheduler=scheduler or model_config_for(model, config).sample.scheduler, temperature=temperature,
        unmask_order=unmask_order)
    mcfg = bundle.config
    s = mcfg.sample
    steps, cfg_scale = steps or s.steps, s.cfg if cfg is None else cfg
    batch_size = batch_size or s.batch_size
    if bundle.classes and cls not in bundle.classes:
        raise NetdiffError(f"class {cls!r} is not one this model was trained on "
                           f"({', '.join(bundle.classes)}); fine-tune it with netdiff finetune")

    # 2. Sizes: the layout fixes the columns; --hires adds a second pass at the larger size
    layout = named_layout(mcfg.image.layout, height=mcfg.image.height)
    im = mcfg.image
    if hires:
        first = (im.train_height or im.height, im.train_width or im.width)
        final = (s.hires_height or im.height, s.hires_width or im.width)
        if first == final:
            raise NetdiffError(f"--hires: config {mcfg.name!r} has no hires size different from its base "
                               f"size {first}; set sample.hires_height / hires_width")
    else:
        first = final = (im.height, im.width)
    rows = height or final[0]
    if rows < 1 or rows % final[0]:
        raise NetdiffError(f"--height {rows}: must be a multiple of the model's {final[0]} packets per window")
    windows = rows // final[0]
    if windows > 1 and hires:
        raise NetdiffError("--height and --hires do not go together (--hires has its own size)")
    if final[1] != layout.width:
        raise NetdiffError(f"samples would be {final[1]} columns wide; the {layout.name} layout has "
                           f"{layout.width}")

    # 3. Control image (the same for every image of the run)
    control_t = None
    if control is not None:
        if windows > 1:
            raise NetdiffError("--height with a ControlNet is not supported: the control image is one window")
        ctrl = load_control(control, control_kind, layout, final[0])
        control_t = torch.from_numpy(ctrl)[None, None]
        if hires and first != final:
            raise NetdiffError("--hires with a ControlNet is not supported: the ControlNet was trained "
                               "at one size")

    # 4. Sample in batches of whole images, one generator per window (window 0 of image k: seed + k);
    #    each batch is written as soon as it is made
    use_layouts = (layouts and mcfg.image.space == "masked" and control_t is None
                   and bundle.layouts is not None and cls in bundle.layouts.classes)
    out_bits = []
    prompt = caption_for(cls)
    result = GenerateResult(bits=np.zeros((0, 0, 0), dtype=np.int8), seeds=seeds, device=str(pipe.unet.device))
    per_batch = max(1, batch_size // windows)
    for lo in range(0, len(seeds), per_batch):
        chunk = seeds[lo: lo + per_batch]
        gens = [torch.Generator(pipe.unet.device).manual_seed(window_seed(sd, j)) for sd in chunk for j in range(windows)]
        extra = {}
        if use_layouts:
            # structure first: each image's row layouts and flows from a stream of its own (seed + k,
            # offset so it is independent of the pixel draws at seed + k and the hires pass at
            # + 1_000_003), over the image's whole height
            from netdiff.model.layouts import tie_pairs

            chain, present, canon, member, chunk_flows = bundle.layouts, [], [], [], []
            for b, sd in enumerate(chunk):
                g = torch.Generator("cpu").manual_seed(sd + STRUCTURE_SEED)
                ids, flows = chain.sample_structure(cls, windows * first[0], g, layout)
                present.append(chain.vocab[ids].reshape(windows, first[0], -1))
                chunk_flows.append(flows)
                c, m = tie_pairs(chunk_flows[-1], layout)
                offset = b * windows * first[0] * layout.width     # image b's first pixel in the batch
                canon.append(c + offset)
                member.append(m + offset)
            extra["present"] = torch.from_numpy(np.concatenate(present))[:, None]
            extra["ties"] = (np.concatenate(canon), np.concatenate(member))
        drawn = list(range(len(gens)))
        if use_layouts and not hires:
            drawn, extra = _windows_with_packets(extra, first[0] * layout.width)
        bits = np.full((len(gens), first[0], first[1]), -1, dtype=np.int8)
        if drawn:
            res = pipe([prompt] * len(drawn), height=first[0], width=first[1],
                       generators=[gens[i] for i in drawn], num_inference_steps=steps,
                       guidance_scale=cfg_scale, control=control_t,
                       controlnet_conditioning_scale=mcfg.controlnet.conditioning_scale, progress=progress, **extra)
            bits[drawn] = res.bits
        if hires:
            # NetDiffusion's hires fix: enlarge the first pass, re-noise it part-way, denoise again.
            big = torch.stack([pixels_for(b, im.space) for b in bits])
            big = torch.nn.functional.interpolate(big, size=final, mode="nearest")
            init = pipe.encode_images(big)
            gens = [torch.Generator(pipe.unet.device).manual_seed(sd + 1_000_003) for sd in chunk]
            bits = pipe([prompt] * len(chunk), height=final[0], width=final[1], generators=gens,
                        num_inference_steps=steps, guidance_scale=cfg_scale, init_latents=init,
                        strength=s.hires_strength, progress=progress).bits
        bits = bits.reshape(len(chunk), rows, bits.shape[-1])     # windows back into images
        if use_layouts and not hires:       # hires redraws the image at another size, untied
            from netdiff.model.layouts import separate_flows

            bits = np.array(bits)
            for im, fl in zip(bits, chunk_flows):
                separate_flows(im, fl, layout)
        out_bits.append(bits)
        if output is not None:
            _write(result, bits, chunk, output, cls, pcap, repair_with, {
                "netdiff:model": str(bundle.source), "netdiff:lora": str(lora or ""),
                "netdiff:steps": str(steps), "netdiff:cfg": str(cfg_scale)})
    result.bits = np.concatenate(out_bits)
    return result


def planned_packets(model, cls: str, seeds, height: int | None = None, config=None) -> list[int]:
    """The packets each image of class ``cls`` made with ``seeds`` will hold: the rows its
    structure stage draws with a packet (the same walks ``generate`` draws, and no network), so
    that a caller can choose how many images give a number of packets (a class of short captures
    ends its images early; benchmarks/fidelity.py ``--mix packets``). A model without row layouts,
    or a class its structure stage does not know: every row."""
    from netdiff.bits.layout import named_layout
    from netdiff.model.flow_chain import load_structure

    mcfg = model_config_for(model, config)
    rows = height or mcfg.image.height
    if rows < 1 or rows % mcfg.image.height:
        raise NetdiffError(f"--height {rows}: must be a multiple of the model's {mcfg.image.height} packets per window")
    chain = load_structure(model) if mcfg.image.space == "masked" else None
    if chain is None or cls not in chain.classes:
        return [rows] * len(list(seeds))
    layout = named_layout(mcfg.image.layout, height=mcfg.image.height)
    out = []
    for sd in seeds:
        ids, _ = chain.sample_structure(cls, rows, torch.Generator("cpu").manual_seed(sd + STRUCTURE_SEED), layout)
        out.append(int(chain.vocab[ids].any(1).sum()))
    return out


def _windows_with_packets(extra: dict, window_pixels: int) -> tuple[list[int], dict]:
    """The windows of a batch whose drawn layouts hold a packet, and the pipeline's ``present``
    and ``ties`` for those alone. A window below a capture's end is every pixel absent from the
    start, so sampling it draws nothing: it is left out and stays absent (the short captures of
    a class such as tls_web are 6% packets in a 1,024-row image)."""
    present = extra["present"]
    drawn = np.flatnonzero(present.flatten(1).any(1).numpy())
    if len(drawn) == len(present):
        return list(range(len(present))), extra
    at = np.full(len(present), -1, dtype=np.int64)
    at[drawn] = np.arange(len(drawn))
    # tied pixels are ports of rows with packets: their windows are all drawn
    canon, member = (at[a // window_pixels] * window_pixels + a % window_pixels for a in extra["ties"])
    return drawn.tolist(), {**extra, "present": present[torch.from_numpy(drawn)], "ties": (canon, member)}


def window_seed(seed: int, window: int) -> int:
    """Seed of window ``window`` of the image made with ``seed``: window 0 is the image's own
    seed (an image of one window is what it always was), the others are hashed from both, so
    they do not fall on the seed of another image of the run."""
    if window == 0:
        return seed
    return int(np.random.SeedSequence([seed, window]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _png_path(output, cls: str, seed: int) -> Path:
    return Path(output) / f"{cls}_{seed:06d}.png"


def _repair_models(model, timing, priors) -> dict:
    """img2pcap's ``timing`` and ``priors`` for --pcap: the ones given, else the model folder's."""
    from netdiff.model.store import is_netdiff_model, repair_files
    from netdiff.packet_repair import FieldPriors, TimingModel

    timing_name, priors_name = repair_files()
    folder = Path(model) if is_netdiff_model(model) else None
    if timing is None and folder is not None and (folder / timing_name).is_file():
        timing = folder / timing_name
    if priors is None and folder is not None and (folder / priors_name).is_file():
        priors = folder / priors_name
    return {"timing": TimingModel.load(timing) if isinstance(timing, (str, Path)) else timing,
            "priors": FieldPriors.coerce(priors) if priors is not None else None}


def _write(result: GenerateResult, bits: np.ndarray, seeds: list[int], output, cls: str, pcap: bool,
           repair_with: dict, text: dict[str, str]) -> None:
    """PNGs (and pcaps through the repair path) of one batch, each written atomically."""
    from netdiff.image.codec import write_png

    Path(output).mkdir(parents=True, exist_ok=True)
    for b, sd in zip(bits, seeds):
        png = _png_path(output, cls, sd)
        write_png(png, b, text={"netdiff:class": cls, "netdiff:seed": str(sd), **text})
        result.images.append(png)
        if pcap:
            dest = png.with_suffix(".pcap")
            _img2pcap()(png, dest, seed=sd, **repair_with)
            result.pcaps.append(dest)


def model_config_for(model, config):
    """The config a model folder was trained with (or ``config`` when given; defaults otherwise)."""
    from netdiff.model.config import ModelConfig
    from netdiff.model.store import MODEL_JSON, is_netdiff_model

    if config is not None:
        return config
    if is_netdiff_model(model):
        import json

        return ModelConfig.from_dict(json.loads((Path(model) / MODEL_JSON).read_text())["config"])
    return ModelConfig()


def _img2pcap():
    try:
        from netdiff.pipeline.conversions import img2pcap
    except ImportError as e:
        raise NetdiffError(f"--pcap needs netdiff.pipeline.conversions.img2pcap, which is not available ({e})") from None
    return img2pcap
