"""generate: determinism, sizes, hires, pcaps through the repair path, the CLI."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from netdiff.cli import main as netdiff_main
from netdiff.bits.layout import named_layout
from netdiff.errors import NetdiffError
from netdiff.image.codec import read_png_bits
from netdiff.model.generate import generate
from netdiff.validation.pcaps import validate_pcaps

FAST = dict(steps=3, progress=False)


@pytest.mark.parametrize("which", ["masked", "gaussian"])
def test_same_seed_same_png_bytes_other_seed_other_image(which, tiny_model, gaussian_model, tmp_path):
    model, scheduler = (tiny_model, "masked") if which == "masked" else (gaussian_model, "dpmpp-2m-karras")
    a = generate(model, "web_tcp", 2, 7, tmp_path / "a", **FAST)
    b = generate(model, "web_tcp", 2, 7, tmp_path / "b", batch_size=1, scheduler=scheduler, **FAST)
    assert [p.name for p in a.images] == ["web_tcp_000007.png", "web_tcp_000008.png"]
    for pa, pb in zip(a.images, b.images):
        assert pa.read_bytes() == pb.read_bytes()
    assert not np.array_equal(a.bits[0], a.bits[1])
    bits = read_png_bits(a.images[0], width=1088, height=32)
    assert np.array_equal(bits, a.bits[0]) and set(np.unique(bits)) <= {-1, 0, 1}


@pytest.mark.parametrize("scheduler", ["euler-a", "ddim"])
def test_other_schedulers_are_deterministic_too(gaussian_model, scheduler):
    a = generate(gaussian_model, "dns_udp", 1, 1, None, scheduler=scheduler, **FAST)
    b = generate(gaussian_model, "dns_udp", 1, 1, None, scheduler=scheduler, **FAST)
    assert np.array_equal(a.bits, b.bits) and a.bits.shape == (1, 32, 1088)


def test_hires_second_pass_doubles_the_packets(tiny_model):
    out = generate(tiny_model, "dns_udp", 1, 0, None, hires=True, **FAST)
    assert out.bits.shape == (1, 64, 1088)


def test_unknown_class_and_bad_arguments_are_one_line_errors(tiny_model, tmp_path):
    with pytest.raises(NetdiffError, match="not one this model was trained on"):
        generate(tiny_model, "quic", 1, 0, None, **FAST)
    with pytest.raises(NetdiffError, match="go together"):
        generate(tiny_model, "dns_udp", 1, 0, None, control="udp-only", **FAST)
    with pytest.raises(NetdiffError, match="no such model folder"):
        generate(tmp_path / "nothing", "dns_udp", 1, 0, None, **FAST)


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed (Debian package tshark)")
def test_generate_pcap_passes_validate(tiny_model, tmp_path):
    out = generate(tiny_model, "web_tcp", 2, 11, tmp_path, pcap=True, **FAST)
    assert len(out.pcaps) == 2 and all(p.stat().st_size > 24 for p in out.pcaps)
    report = validate_pcaps(out.pcaps, replay=False)
    assert report["total"]["packets"] > 0
    assert report["ok"], report["files"]


def test_cli_train_finetune_generate(img_dir, tmp_path):
    runner = CliRunner()
    model, lora, gen = tmp_path / "m", tmp_path / "l", tmp_path / "g"
    from netdiff.cli import cli

    r = runner.invoke(cli, ["train-base", str(img_dir), "--config", "tiny", "--output", str(model),
                            "--steps", "2", "--batch-size", "4", "-q"])
    assert r.exit_code == 0, r.output
    assert "train-base: 2 steps" in r.output
    r = runner.invoke(cli, ["finetune", str(img_dir), "--base-model", str(model), "--output", str(lora),
                            "--class", "dns_udp", "--steps", "2", "--batch-size", "2", "--rank", "4", "-q"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["generate", "--model", str(model), "--lora", str(lora), "--class", "dns_udp",
                            "--count", "2", "--seed", "5", "--steps", "2", "--output", str(gen), "-q"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in gen.glob("*.png")) == ["dns_udp_000005.png", "dns_udp_000006.png"]
    # user errors: one line, exit 1, no traceback
    assert netdiff_main(["generate", "--model", str(model), "--class", "nope", "--output", str(gen)]) == 1
    assert netdiff_main(["train-base", str(tmp_path), "--output", str(tmp_path / "x")]) == 1


def test_cli_threads_option(img_dir, tiny_model, tmp_path):
    """--threads (or NETDIFF_THREADS) sets torch's intra-op threads before a real short run."""
    import torch

    from netdiff.cli import cli

    before = torch.get_num_threads()
    runner = CliRunner()
    try:
        torch.set_num_threads(2)
        r = runner.invoke(cli, ["train-base", str(img_dir), "--config", "tiny", "--output", str(tmp_path / "m"),
                                "--steps", "1", "--batch-size", "2", "--checkpoint-every", "0", "-q",
                                "--threads", "1"])
        assert r.exit_code == 0, r.output
        assert "train-base: 1 steps" in r.output and torch.get_num_threads() == 1
        torch.set_num_threads(2)
        r = runner.invoke(cli, ["generate", "--model", str(tiny_model), "--class", "web_tcp", "--steps", "2",
                                "--output", str(tmp_path / "g"), "-q"], env={"NETDIFF_THREADS": "1"})
        assert r.exit_code == 0, r.output
        assert torch.get_num_threads() == 1 and len(list((tmp_path / "g").glob("*.png"))) == 1
        r = runner.invoke(cli, ["generate", "--model", str(tiny_model), "--class", "web_tcp",
                                "--output", str(tmp_path / "g"), "--threads", "0"])
        assert r.exit_code == 2 and "--threads" in r.output
    finally:
        torch.set_num_threads(before)


def test_cli_class_all_writes_every_known_class(tiny_model, tmp_path):
    """--class all: one folder per class the model was trained on (what cpu-ten-class uses)."""
    from netdiff.cli import cli

    r = CliRunner().invoke(cli, ["generate", "--model", str(tiny_model), "--class", "all", "--count", "1",
                                 "--steps", "2", "--output", str(tmp_path / "g"), "-q", "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert sorted(p.parent.name for p in (tmp_path / "g").glob("*/*.png")) == ["dns_udp", "web_tcp"]
    assert r.output.count("generate: 1 images of class") == 2
    code = netdiff_main(["generate", "--model", str(tmp_path / "g"), "--class", "all", "--output",
                         str(tmp_path / "h")])
    assert code == 1


def test_generate_pcap_repairs_with_the_model_folders_timing_and_priors(tmp_path):
    import netdiff
    from netdiff.model.store import repair_files

    netdiff.samples(tmp_path / "caps", seed=1)
    netdiff.pcap2img(tmp_path / "caps", tmp_path / "img", layout=named_layout("netdiffusion", height=32))
    netdiff.train_base(tmp_path / "img", tmp_path / "m", config="tiny", steps=1, batch_size=2, progress=False)
    for name in repair_files():         # the model keeps what pcap2img learnt, byte for byte
        assert (tmp_path / "m" / name).read_bytes() == (tmp_path / "img" / name).read_bytes()

    def pcap_bytes(out, **kw):
        made = generate(tmp_path / "m", "dns_udp", 1, 4, tmp_path / out, pcap=True, steps=2, progress=False, **kw)
        return made.pcaps[0].read_bytes()

    default = pcap_bytes("a")
    assert default == pcap_bytes("b", timing=tmp_path / "img" / "timing.json",
                                 priors=tmp_path / "img" / "field_priors.json")
    for name in repair_files():
        (tmp_path / "m" / name).unlink()
    assert pcap_bytes("c") != default       # without them repair falls back to its generic choices


def test_cli_timing_without_pcap_is_a_one_line_error(tiny_model, tmp_path, capsys):
    timing = tmp_path / "timing.json"
    timing.write_text("{}")
    assert netdiff_main(["generate", "--model", str(tiny_model), "--class", "dns_udp",
                         "--output", str(tmp_path / "g"), "--timing", str(timing)]) == 1
    err = capsys.readouterr().err
    assert "add --pcap" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
