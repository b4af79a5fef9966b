"""Diffusion-layer figures: autoencoder exactness on real nPrint images, CPU/GPU step and sampling times.

    .venv/bin/python benchmarks/diffusion.py [--data ../shared/data/pcaps] [--config tiny]
        [--steps 10] [--json out.json]

1. The lossless ternary autoencoder on every real capture under --data (first 1024 packets each,
   padded to a 1024 x 1088 image): per-pixel ternary reconstruction accuracy, and its speed.
2. train-base, finetune (LoRA) and train-controlnet: seconds per optimizer step with the config,
   on this machine's device (a GPU when present, with the config's mixed precision).
3. generate: seconds per image (20 steps, dpmpp-2m-karras, guidance on), batched.
The load average is printed too: on a shared machine, step times scale with it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "model"))


def autoencoder_accuracy(data: Path) -> dict:
    import torch

    from netdiff.bits.codec import encode
    from netdiff.bits.layout import NETDIFFUSION
    from netdiff.io.pcap import read_capture
    from netdiff.model.data import fit_rows
    from netdiff.model.ternary import TernaryAutoencoder, bits_to_tensor, tensor_to_bits

    ae = TernaryAutoencoder(factor=8)
    files = sorted(data.rglob("*.pcap"))
    pixels = wrong = varying = varying_wrong = 0
    enc_s = dec_s = 0.0
    for f in files:
        batch, _ = read_capture(f)
        bits, _ = encode(batch.take(np.arange(min(1024, len(batch)))), NETDIFFUSION)
        img = fit_rows(bits, 1024)[0]
        x = bits_to_tensor(img)[None]
        t0 = time.perf_counter()
        z = ae.encode(x).latent_dist.sample()
        t1 = time.perf_counter()
        back = tensor_to_bits(ae.decode(z).sample)[0]
        t2 = time.perf_counter()
        enc_s, dec_s = enc_s + t1 - t0, dec_s + t2 - t1
        pixels += img.size
        wrong += int((back != img).sum())
        # Columns whose bit changes within the capture: the ones that carry information.
        n = len(bits)
        cols = (bits != bits[:1]).any(axis=0)
        varying += int(cols.sum()) * n
        varying_wrong += int((back[:n, cols] != bits[:, cols]).sum())
    return {"captures": len(files), "pixels": pixels, "accuracy": 1 - wrong / max(pixels, 1),
            "varying_bit_accuracy": 1 - varying_wrong / max(varying, 1),
            "encode_ms_per_image": 1000 * enc_s / max(len(files), 1),
            "decode_ms_per_image": 1000 * dec_s / max(len(files), 1),
            "latent_shape": list(z.shape[1:]) if files else None}


def timed_training(config: str, steps: int, img_dir: Path, work: Path) -> dict:
    from netdiff.model.train_base import TrainBaseArgs
    from netdiff.model.train_base import main as train_base
    from netdiff.model.train_controlnet import ControlNetArgs
    from netdiff.model.train_controlnet import main as train_cn
    from netdiff.model.train_lora import FinetuneArgs
    from netdiff.model.train_lora import main as train_lora

    out = {}
    # one warm-up step is excluded: the first step pays for allocation and kernel selection
    train_base(TrainBaseArgs(str(img_dir), str(work / "w"), config, steps=1, checkpoint_every=0, progress=False))
    r = train_base(TrainBaseArgs(str(img_dir), str(work / "base"), config, steps=steps, checkpoint_every=0,
                                 progress=False))
    out["train_base_s_per_step"] = r.seconds / steps
    out["device"] = r.device
    r = train_lora(FinetuneArgs(str(img_dir), str(work / "base"), str(work / "lora"), steps=steps,
                                checkpoint_every=0, progress=False))
    out["finetune_s_per_step"] = r.seconds / steps
    r = train_cn(ControlNetArgs(str(img_dir), str(work / "base"), str(work / "cn"), steps=steps,
                                checkpoint_every=0, progress=False))
    out["controlnet_s_per_step"] = r.seconds / steps
    return out


def timed_generation(model: Path, count: int, steps: int) -> dict:
    from netdiff.model.generate import generate

    generate(model, "web_tcp", 1, 0, None, steps=2, progress=False)           # warm-up
    t0 = time.perf_counter()
    g = generate(model, "web_tcp", count, 0, None, steps=steps, progress=False)
    s = time.perf_counter() - t0
    return {"generate_s_per_image": s / count, "generate_images": count, "generate_steps": steps,
            "image_shape": list(g.bits.shape[1:])}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "pcaps"))
    p.add_argument("--config", default="tiny")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--count", type=int, default=8)
    p.add_argument("--json")
    args = p.parse_args(argv)
    import torch

    from netdiff.model.config import load_config

    res = {"config": args.config, "torch_threads": torch.get_num_threads(),
           "load_average_before": os.getloadavg()[0], "cuda": torch.cuda.is_available()}
    data = Path(args.data)
    if data.is_dir():
        res["autoencoder"] = ae = autoencoder_accuracy(data)
        print(f"ternary autoencoder: {ae['captures']} real captures, {ae['pixels']} pixels, per-pixel "
              f"accuracy {ae['accuracy']:.6f}, on varying bits {ae['varying_bit_accuracy']:.6f}; "
              f"encode {ae['encode_ms_per_image']:.2f} ms, decode {ae['decode_ms_per_image']:.2f} ms "
              f"per 1024x1088 image; latent {ae['latent_shape']}")
    else:
        print(f"no captures at {data}: autoencoder check skipped")
    cfg = load_config(args.config)
    with tempfile.TemporaryDirectory() as tmp:
        from conftest import write_dataset

        work = Path(tmp)
        img_dir = write_dataset(work / "imgs", per_class=8, rows=cfg.image.height)
        res.update(timed_training(args.config, args.steps, img_dir, work))
        print(f"{args.config} on {res['device']}: train-base {res['train_base_s_per_step']:.2f} s/step, "
              f"finetune {res['finetune_s_per_step']:.2f} s/step, train-controlnet "
              f"{res['controlnet_s_per_step']:.2f} s/step (batch sizes from the config)")
        res.update(timed_generation(work / "base", args.count, cfg.sample.steps))
        print(f"generate: {res['generate_s_per_image']:.2f} s per {res['image_shape']} image "
              f"({res['generate_steps']} steps, {cfg.sample.scheduler}, cfg {cfg.sample.cfg}, batch "
              f"{cfg.sample.batch_size})")
    res["load_average_after"] = os.getloadavg()[0]
    print(f"load average: {res['load_average_before']:.1f} before, {res['load_average_after']:.1f} after")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
