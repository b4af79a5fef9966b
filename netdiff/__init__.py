r"""netdiff: synthetic network traffic, from pcap to nPrint to image and back.

The Python API mirrors the CLI, one function per command; importing the package is cheap
(torch, diffusers and scikit-learn load only when a function that needs them is called). The
README's example, which runs as it stands in an empty folder::

    import netdiff
    from pathlib import Path

    netdiff.samples("captures/", seed=0)                 # seeded TCP, DNS and ICMP captures per class
    netdiff.pcap2img("captures/", "images/", layout=netdiff.named_layout("netdiffusion", height=32))
    netdiff.train_base("images/", "model/", config="tiny", steps=10)     # a smoke run; hundreds for use
    for c in ("web_tcp", "dns_udp", "icmp_echo"):
        netdiff.generate("model/", c, count=2, seed=0, steps=4, output=f"gen/{c}")
        netdiff.img2pcap(f"gen/{c}/{c}_000000.png", f"gen_pcaps/{c}/{c}_000000.pcap")
    assert netdiff.validate(["gen_pcaps/web_tcp/web_tcp_000000.pcap"], replay=False)["ok"]
    report = netdiff.evaluate("captures/", "gen_pcaps/", "report/")     # report/report.json, report.md
    batch, info = netdiff.read_capture("captures/web_tcp/web_tcp_0.pcap")
    bits, parsed = netdiff.encode(batch, netdiff.named_layout("nprint"))   # int8 1/0/-1, nPrint's columns
    Path("convert.yaml").write_text("stages:\n  - {name: images, run: 'pcap2img captures {output}', "
                                    "inputs: [captures], output: images}\n")
    netdiff.run_pipeline("convert.yaml")       # resumable stages (netdiff batch) -> out/convert/images
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> (module, attribute): resolved on first use.
_API = {
    "read_capture": ("netdiff.io.pcap", "read_capture"),
    "write_pcap": ("netdiff.io.pcap", "write_pcap"),
    "Layout": ("netdiff.bits.layout", "Layout"),
    "named_layout": ("netdiff.bits.layout", "named_layout"),
    "encode": ("netdiff.bits.codec", "encode"),
    "nprint": ("netdiff.nprint_csv.writer", "pcap_to_csv"),         # netdiff nprint -P ... -W ...
    "nprint_reverse": ("netdiff.nprint_csv.reader", "csv_to_pcap"),  # netdiff nprint -N ... -W ...
    "pcap2img": ("netdiff.pipeline.conversions", "pcap2img"),
    "img2pcap": ("netdiff.pipeline.conversions", "img2pcap"),
    "samples": ("netdiff.pipeline.sample_captures", "write_samples"),
    "quantize": ("netdiff.packet_repair", "quantize"),
    "repair": ("netdiff.packet_repair", "repair"),
    "TimingModel": ("netdiff.packet_repair", "TimingModel"),
    "validate": ("netdiff.validation.pcaps", "validate_pcaps"),
    "evaluate": ("netdiff.eval", "evaluate"),
    "generate": ("netdiff.model.generate", "generate"),
    "run_pipeline": ("netdiff.pipeline.stages", "run_pipeline"),
    "NetdiffError": ("netdiff.errors", "NetdiffError"),
}


def train_base(img_dir, output, config: str = "tiny", **options):
    """netdiff train-base: options as the CLI's (steps, batch_size, learning_rate, seed, ...)."""
    from netdiff.model import train_base as tb
    return tb.main(tb.TrainBaseArgs(img_dir=str(img_dir), output=str(output), config=config, **options))


def finetune(img_dir, base_model, output, **options):
    """netdiff finetune (LoRA): options as the CLI's (rank, steps, classes, train_text_encoder, ...)."""
    from netdiff.model import train_lora as tl
    return tl.main(tl.FinetuneArgs(img_dir=str(img_dir), base_model=str(base_model), output=str(output),
                                   **options))


def train_controlnet(img_dir, base_model, output, **options):
    """netdiff train-controlnet: options as the CLI's (kind="mask"|"canny", steps, ...)."""
    from netdiff.model import train_controlnet as tc
    return tc.main(tc.ControlNetArgs(img_dir=str(img_dir), base_model=str(base_model), output=str(output),
                                     **options))


def __getattr__(name: str):
    if name in _API:
        module, attr = _API[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'netdiff' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_API))


__all__ = sorted([*_API, "train_base", "finetune", "train_controlnet", "__version__"])
