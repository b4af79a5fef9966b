"""Config, data, the lossless ternary autoencoder, tokenizer, controls: no training here."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from netdiff.bits.layout import NETDIFFUSION
from netdiff.errors import ImageError, NetdiffError
from netdiff.image.codec import write_png
from netdiff.model import controls as C
from netdiff.model.config import ModelConfig, load_config
from netdiff.model.data import ImageDataset, class_of, fit_rows
from netdiff.model.ternary import TernaryAutoencoder, bits_to_rgb_tensor, bits_to_tensor, tensor_to_bits

from model_helpers import real_bits


@pytest.mark.parametrize("name", ["tiny", "compact", "sd15-lora"])
def test_shipped_configs_load(name):
    cfg = load_config(name)
    assert cfg.image.width == NETDIFFUSION.width == 1088
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_config_rejects_typos_and_sizes_the_unet_cannot_halve(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("unet:\n  block_out_chanels: [32]\n")
    with pytest.raises(NetdiffError, match="block_out_chanels"):
        load_config(bad)
    with pytest.raises(NetdiffError, match="not a multiple of 32"):
        ModelConfig.from_dict({"image": {"height": 40, "factor": 8}, "unet": {"block_out_channels": [8, 16, 32]}})
    with pytest.raises(NetdiffError, match="no such config"):
        load_config(tmp_path / "missing.yaml")


def test_ternary_autoencoder_is_exact_on_real_images():
    ae = TernaryAutoencoder(factor=8)
    for name, bits in real_bits(256):
        window = fit_rows(bits, 256)[0]                    # pad to a multiple of 8 rows
        z = ae.encode(bits_to_tensor(window)[None]).latent_dist.sample()
        assert z.shape == (1, 64, 32, 136), name
        back = tensor_to_bits(ae.decode(z).sample)[0]
        assert np.array_equal(back, window), name


def test_decoded_noise_rounds_to_palette_values_and_rgb_goes_to_nearest_colour():
    x = torch.tensor([[[[-3.0, -0.6, -0.4, 0.2, 0.7, 9.0]]]])
    assert tensor_to_bits(x).tolist() == [[[-1, -1, 0, 0, 1, 1]]]
    bits = np.array([[1, 0, -1, 1]], dtype=np.int8)
    rgb = bits_to_rgb_tensor(bits)[None] + 0.3 * torch.tensor([1.0, -1.0, 0.5])[None, :, None, None]
    assert np.array_equal(tensor_to_bits(rgb)[0], bits)


def test_dataset_classes_rows_and_width(tmp_path, img_dir):
    cfg = load_config("tiny").image
    ds = ImageDataset(img_dir, cfg)
    assert ds.classes == ["dns_udp", "web_tcp"] and len(ds) == 8
    item = ds[0]
    assert item["pixels"].shape == (1, 32, 1088)
    assert item["caption"].startswith("pixelated network data, type-")
    # sidecar "class" wins over the folder name; taller images are cut into row windows
    bits = np.full((80, 1088), -1, dtype=np.int8)
    bits[:70, :96] = 1
    write_png(tmp_path / "folder" / "x.png", bits)
    (tmp_path / "folder" / "x.json").write_text(json.dumps({"class": "from_sidecar"}))
    assert class_of(tmp_path / "folder" / "x.png", tmp_path) == "from_sidecar"
    tiles = ImageDataset(tmp_path / "folder", cfg)
    assert [e.bits.shape for e in tiles.examples] == [(32, 1088)] * 3 and tiles.classes == ["from_sidecar"]
    assert (tiles.examples[2].bits[6:] == -1).all()                 # the 16-row tail, padded
    # columns are never cropped
    write_png(tmp_path / "narrow" / "y.png", np.zeros((32, 1000), dtype=np.int8))
    with pytest.raises(ImageError, match="1000 pixels wide"):
        ImageDataset(tmp_path / "narrow", cfg)
    with pytest.raises(NetdiffError, match="no such directory"):
        ImageDataset(tmp_path / "does_not_exist", cfg)
    (tmp_path / "empty").mkdir()
    with pytest.raises(NetdiffError, match="no PNG"):
        ImageDataset(tmp_path / "empty", cfg)


def test_tokenizer_needs_no_download_and_handles_new_classes(tmp_path):
    from transformers import AutoTokenizer

    from netdiff.model.tokenizer import tokenize, train_caption_tokenizer

    caps = ["pixelated network data, type-web_tcp", "pixelated network data, type-dns_udp", ""]
    tok = train_caption_tokenizer(caps, 256, 16)
    assert "web_tcp" in tok.tokenize(caps[0])
    new = tok("pixelated network data, type-voip2").input_ids
    assert tok.unk_token_id not in new
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert torch.equal(tokenize(tok, caps), tokenize(again, caps))
    assert tokenize(tok, caps).shape == (3, 16)


def test_templates_match_real_packets(img_dir):
    from netdiff.image.codec import read_png_bits

    tcp = read_png_bits(img_dir / "web_tcp" / "web_tcp_0.png")
    udp = read_png_bits(img_dir / "dns_udp" / "dns_udp_0.png")
    assert np.array_equal(C.presence_mask(tcp)[0], C.template_row("tcp-options", NETDIFFUSION))
    assert np.array_equal(C.presence_mask(udp)[0], C.template_row("udp-only", NETDIFFUSION))
    m = C.template_mask("udp-only", NETDIFFUSION, 32, rows=5)
    assert m[:5].sum() == 5 * 160 and m[5:].sum() == 0
    assert C.load_control("udp-only:5", "mask", NETDIFFUSION, 32).tolist() == m.tolist()
    with pytest.raises(NetdiffError, match="unknown control template"):
        C.template_row("sctp", NETDIFFUSION)


def test_canny_finds_the_boundaries_of_a_block():
    bits = np.full((32, 64), -1, dtype=np.int8)
    bits[8:24, 16:48] = 1
    edges = C.canny(bits)
    assert set(np.unique(edges)) <= {0.0, 1.0}
    ys, xs = np.nonzero(edges)
    assert ys.min() >= 6 and ys.max() <= 25 and xs.min() >= 14 and xs.max() <= 49
    assert edges[16, 30] == 0 and edges[2, 2] == 0                      # not inside, not outside
    assert edges[7:9, 16:48].any(axis=0).all()                           # the whole top edge
    assert C.canny(np.zeros((8, 8), dtype=np.int8)).sum() == 0


def test_one_hot_column_positions_and_their_config_checks():
    from netdiff.model.build import with_positions

    z = torch.zeros(2, 64, 4, 136)
    x = with_positions(z, 136, "onehot")
    assert x.shape == (2, 200, 4, 136)
    # channel 64 + j is 1 exactly in latent column j, on every row of every image
    assert torch.equal(x[:, 64:], torch.eye(136)[None, :, None, :].expand(2, 136, 4, 136))
    with pytest.raises(NetdiffError, match="136 channels"):
        with_positions(z, 16, "onehot")
    assert with_positions(z, 16).shape[1] == 80            # octave sin/cos: saved models before onehot
    with pytest.raises(NetdiffError, match="latent width 136"):
        ModelConfig.from_dict({"image": {"height": 32}, "unet": {"block_out_channels": [64, 128],
                                                                "position_channels": 16,
                                                                "position_encoding": "onehot"}})
    with pytest.raises(NetdiffError, match="position_encoding"):
        ModelConfig.from_dict({"unet": {"position_encoding": "learned"}})
    with pytest.raises(NetdiffError, match="v_prediction or sample"):
        ModelConfig.from_dict({"train": {"rescale_betas_zero_snr": True, "prediction_type": "epsilon"}})


def test_shifted_zero_snr_schedule_round_trips_and_every_sampler_steps(tmp_path):
    from diffusers import DDPMScheduler

    from netdiff.model.build import SCHEDULERS, build_train_scheduler, make_scheduler

    tc = load_config("tiny-gaussian").train
    assert tc.prediction_type == "sample" and tc.rescale_betas_zero_snr and tc.snr_shift > 1
    sched = build_train_scheduler(tc)
    ab = sched.alphas_cumprod
    assert float(ab[-1]) < 1e-6                          # the last timestep is pure noise, as sampling starts
    plain = build_train_scheduler(type(tc)(**{**tc.__dict__, "snr_shift": 1.0})).alphas_cumprod
    # SNR divided by shift^2 at every timestep (zero-SNR rescaling aside, which moves the tail)
    snr, snr_plain = ab / (1 - ab), plain / (1 - plain)
    assert torch.all(snr[:-1] < snr_plain[:-1])
    sched.save_pretrained(tmp_path / "scheduler")
    again = DDPMScheduler.from_pretrained(tmp_path / "scheduler")
    assert torch.allclose(again.alphas_cumprod, ab)
    # every sampler, Euler a included (diffusers' own refuses clean-sample models), one step each
    x = torch.randn(1, 64, 4, 136, generator=torch.Generator().manual_seed(0))
    for name in SCHEDULERS:
        s = make_scheduler(name, again.config, clip=True)
        s.set_timesteps(4)
        t = s.timesteps[0]
        out = s.step(torch.full_like(x, 3.0), t, s.scale_model_input(x, t),
                     generator=torch.Generator().manual_seed(0)).prev_sample
        assert torch.isfinite(out).all(), name
