"""LoRA (peft, diffusers' format) and ControlNet on the tiny base; a Stable Diffusion-style base."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from netdiff.model.generate import generate, load_pipeline

FAST = dict(steps=3, progress=False)


def _samples(pipe, control=None, seed=4):
    gens = [torch.Generator().manual_seed(seed)]
    return pipe(["pixelated network data, type-dns_udp"], height=32, width=1088, generators=gens,
                num_inference_steps=2, guidance_scale=3.0, control=control, progress=False).samples


@pytest.fixture(scope="module")
def lora_dir(tiny_model, img_dir, tmp_path_factory):
    from netdiff.model.train_lora import FinetuneArgs, main

    out = tmp_path_factory.mktemp("lora")
    res = main(FinetuneArgs(str(img_dir), str(tiny_model), str(out), classes=("dns_udp",), rank=4, steps=2,
                            batch_size=2, train_text_encoder=True, checkpoint_every=0, progress=False))
    assert res.steps == 2
    return out


def test_lora_changes_the_output_and_reloads_identically(tiny_model, lora_dir):
    weights = load_file(lora_dir / "pytorch_lora_weights.safetensors")
    assert any(k.startswith("unet.") for k in weights) and any(k.startswith("text_encoder.") for k in weights)
    assert all("lora" in k for k in weights)
    doc = json.loads((lora_dir / "netdiff_lora.json").read_text())
    assert doc["rank"] == 4 and doc["classes"] == ["dns_udp"]
    base, _, _ = load_pipeline(tiny_model)
    with_lora, _, _ = load_pipeline(tiny_model, lora=lora_dir)
    again, _, _ = load_pipeline(tiny_model, lora=lora_dir)
    s0, s1, s2 = _samples(base), _samples(with_lora), _samples(again)
    assert (s0 - s1).abs().max() > 1e-3
    assert torch.equal(s1, s2)
    # diffusers' own loader (the mixin's load_lora_weights) put adapters into both networks
    assert with_lora.unet.peft_config and with_lora.text_encoder.peft_config


def test_controlnet_conditioning_changes_the_output(tiny_model, img_dir, tmp_path):
    from netdiff.bits.layout import NETDIFFUSION
    from netdiff.model.controls import template_mask
    from netdiff.model.train_controlnet import ControlNetArgs, main

    out = tmp_path / "cn"
    res = main(ControlNetArgs(str(img_dir), str(tiny_model), str(out), kind="mask", steps=6, batch_size=2,
                              learning_rate=1e-2, checkpoint_every=0, progress=False))
    assert res.steps == 6 and (out / "diffusion_pytorch_model.safetensors").is_file()
    pipe, _, kind = load_pipeline(tiny_model, controlnet=out)
    assert kind == "mask"
    udp = torch.from_numpy(template_mask("udp-only", NETDIFFUSION, 32))[None, None]
    tcp = torch.from_numpy(template_mask("tcp-options", NETDIFFUSION, 32))[None, None]
    # The noise the UNet predicts, with the ControlNet's residuals for each control
    from netdiff.model.build import extra_input_channels, with_positions

    g = torch.Generator().manual_seed(0)
    # a half-hidden map, as the masked sampler feeds it
    from netdiff.model.masked import one_hot_visible

    values = torch.randint(-1, 2, (1, 64, 4, 136), generator=g).float()
    hidden = torch.rand(values.shape, generator=g) < 0.5
    z = with_positions(one_hot_visible(values, hidden), extra_input_channels(pipe.unet),
                       pipe.config.position_encoding)
    t = torch.tensor([500])
    with torch.no_grad():
        hidden = pipe.encode_prompt(["pixelated network data, type-dns_udp"], "cpu")
        preds = []
        for control in (udp, tcp):
            down, mid = pipe.controlnet(z, t, encoder_hidden_states=hidden, controlnet_cond=control,
                                        return_dict=False)
            preds.append(pipe.unet(z, t, hidden, down_block_additional_residuals=down,
                                   mid_block_additional_residual=mid).sample)
    rel = float((preds[0] - preds[1]).norm() / preds[0].norm())
    assert rel > 1e-3, rel
    gen = generate(tiny_model, "dns_udp", 1, 0, None, controlnet=out, control="udp-only:8", steps=2,
                   progress=False)
    assert gen.bits.shape == (1, 32, 1088)


def test_stable_diffusion_folder_as_base(img_dir, tmp_path):
    """A diffusers SD-style folder (saved locally, tiny): its VAE path, LoRA, generate."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from netdiff.model.tokenizer import train_caption_tokenizer
    from netdiff.model.train_lora import FinetuneArgs, main

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                norm_num_groups=8, attention_head_dim=4)
    vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        norm_num_groups=4, layers_per_block=1)
    tok = train_caption_tokenizer(["pixelated network data, type-x", ""], 128, 16)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, max_position_embeddings=16, eos_token_id=3))
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False)
    sd = tmp_path / "sd"
    StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched,
                            safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(sd)
    cfg = tmp_path / "sd-tiny.yaml"
    cfg.write_text("image: {space: vae, height: 32, width: 1088}\nlora: {rank: 4, steps: 2, batch_size: 2}\n"
                   "sample: {steps: 2, cfg: 2.0, hires_height: 64, hires_width: 1088}\n"
                   "train: {mixed_precision: 'no', checkpoint_every: 0}\n")
    lora = tmp_path / "lora"
    main(FinetuneArgs(str(img_dir), str(sd), str(lora), config=str(cfg), classes=("web_tcp",), progress=False))
    from netdiff.model.config import load_config

    out = generate(sd, "web_tcp", 1, 0, None, lora=lora, config=load_config(cfg), **FAST)
    assert out.bits.shape == (1, 32, 1088) and set(np.unique(out.bits)) <= {-1, 0, 1}
