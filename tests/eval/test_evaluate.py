"""End-to-end: netdiff.eval.evaluate and `netdiff evaluate` on cuts of the shared captures."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from netdiff.eval import evaluate, summary_line
from netdiff.eval.calibration import column_marginal_sample
from netdiff.eval.load import load_dir, restrict
from netdiff.bits.layout import NETDIFFUSION

FIGS = ("images.png", "field_heatmap.png", "distributions.png", "confusion.png",
        "mutual_information.png", "dcr.png", "flow_joint.png")


@pytest.fixture(scope="module")
def held_back(splits, tmp_path_factory):
    """Synthetic = real packets the 'model' never saw (another interleaved third)."""
    out = tmp_path_factory.mktemp("rep_heldback")
    return out, evaluate(splits["real"], splits["other"], out, training=splits["training"], seed=1)


@pytest.fixture(scope="module")
def copied(splits, training_copy, tmp_path_factory):
    out = tmp_path_factory.mktemp("rep_copy")
    return evaluate(splits["real"], training_copy, out, training=splits["training"], seed=2,
                    figures=False, compliance=False)


@pytest.fixture(scope="module")
def marginal_pngs(splits, tmp_path_factory):
    """Synthetic = the column-marginal sampler fitted on the training third, written as images."""
    from netdiff.image.codec import pad_rows, write_png

    train = restrict(load_dir(splits["training"]), NETDIFFUSION)
    sample = column_marginal_sample(train, np.random.default_rng(5))
    root = tmp_path_factory.mktemp("marginal_png")
    for c, name in enumerate(sample.classes):
        rows = sample.bits[sample.label == c]
        for k in range(0, len(rows), 128):
            stem = root / name / f"{name}_{k // 128}"
            write_png(stem.with_suffix(".png"), pad_rows(rows[k:k + 128], 1024))
            stem.with_suffix(".json").write_text(json.dumps(
                {"class": name, "layout": NETDIFFUSION.to_dict(), "rows": len(rows[k:k + 128])}))
    out = tmp_path_factory.mktemp("rep_marginal")
    return evaluate(splits["real"], root, out, training=splits["training"], seed=3, figures=False)


def test_report_files_hold_the_keys_and_figures(held_back):
    out, rep = held_back
    on_disk = json.loads((out / "report.json").read_text())
    for key in ("jsd", "tvd", "hellinger", "tstr", "trtr", "c2st_auc", "mutual_information_distance",
                "dcr", "copy_rate", "calibration", "compliance", "fidelity", "utility"):
        assert key in on_disk, key
    for key in ("jsd", "tvd", "hellinger", "c2st_auc", "mutual_information_distance"):
        assert set(on_disk[key]["per_class"]) == {"dns", "voip", "quic", "tls_web"}, key
        assert on_disk[key]["overall"] is not None
    assert set(on_disk["calibration"]) == {"real_vs_real", "column_marginal"}
    for f in FIGS:
        assert (out / f).stat().st_size > 5000, f
    md = (out / "report.md").read_text()
    for f in FIGS:
        assert f"]({f})" in md
    assert "C2ST AUC" in md and "near-copy rate" in md
    assert on_disk["dcr"]["packets"]["synthetic"]["median"] is not None
    comp = on_disk["compliance"]
    if shutil.which("tshark") is None:      # compliance needs tshark; its absence is one line
        assert "tshark not found" in comp["error"]
    else:
        assert comp["total"]["files"] == len(comp["files"]) == 8
        assert comp["total"]["packets"] >= rep["inputs"]["synthetic"]["packets"]
        assert comp["real"]["total"]["files"] == 8      # the real floor, validated too
    assert "JSD" in summary_line(rep)


def test_flow_size_duration_is_scored_per_class_too(held_back, splits):
    from netdiff.eval.flows import flow_table
    from netdiff.eval.mutual_info import flow_joint

    out, rep = held_back
    per = rep["mutual_information_distance"]["flow_size_duration_per_class"]
    assert set(per) == {"dns", "voip", "quic", "tls_web"}
    real, synth = load_dir(splits["real"]), load_dir(splits["other"])
    rf, sf = flow_table(real), flow_table(synth)
    for name, got in per.items():
        alone = flow_joint(rf[rf["label"] == real.classes.index(name)],
                           sf[sf["label"] == synth.classes.index(name)])["size_duration_jsd"]
        assert (got is None and alone is None) or got == pytest.approx(alone), name
    assert per["dns"] is not None       # dns has flows enough on both sides
    table = (out / "report.md").read_text().split("## Per class")[1]
    assert "flow size-duration JSD" in table.splitlines()[2]
    assert f"{per['dns']:.4f}" in next(line for line in table.splitlines() if line.startswith("| dns |"))


def test_held_back_real_looks_real(held_back):
    _, rep = held_back
    cm = rep["calibration"]["column_marginal"]
    assert rep["jsd"]["overall"] < 0.01
    assert rep["tvd"]["overall"] < 0.05
    assert abs(rep["c2st_auc"]["overall"] - 0.5) < 0.15
    # Held-back real packets are not copies of the training third.
    assert rep["copy_rate"]["packets"]["synthetic"]["near_copy_rate"] < 0.1
    assert rep["copy_rate"]["images"]["synthetic"]["exact_copy_rate"] == 0.0
    assert rep["dcr"]["packets"]["synthetic"]["median"] > 0.02
    # The column-marginal row has its ceiling where it belongs.
    assert cm["c2st_auc"]["overall"] > 0.8
    assert cm["mutual_information_distance"]["overall"] > \
        3 * rep["calibration"]["real_vs_real"]["mutual_information_distance"]["overall"]


def test_classifier_trained_on_real_beats_chance(held_back):
    _, rep = held_back
    chance = 1 / 4
    assert rep["trtr"]["overall"] > 2 * chance
    assert rep["tstr"]["overall"] > 2 * chance
    assert set(rep["trtr"]["per_class"]) == {"dns", "voip", "quic", "tls_web"}
    aug = rep["utility"]["augmentation"]
    assert aug["real_packets_kept"] <= 20 and aug["synthetic_packets_added"] > 0


def test_copy_of_training_set_is_flagged(copied):
    assert copied["compliance"] == {"skipped": "not requested"}
    for unit in ("packets", "flows", "images"):
        assert copied["copy_rate"][unit]["synthetic"]["exact_copy_rate"] == 1.0, unit
        assert copied["copy_rate"][unit]["synthetic"]["near_copy_rate"] == 1.0, unit
        assert copied["dcr"][unit]["synthetic"]["median"] == 0.0
        assert copied["copy_rate"][unit]["holdout"]["exact_copy_rate"] < 0.1, unit


def test_column_marginal_sampler_is_caught(marginal_pngs, held_back):
    rep = marginal_pngs
    assert rep["inputs"]["synthetic"]["kind"] == "png"
    assert rep["layout"]["columns"] == NETDIFFUSION.width
    # Per-column distances barely see it ...
    assert rep["jsd"]["overall"] < 0.02
    # ... the joint measures do.
    assert rep["c2st_auc"]["overall"] > 0.8
    assert rep["mutual_information_distance"]["overall"] > \
        3 * held_back[1]["mutual_information_distance"]["overall"]
    assert rep["copy_rate"]["packets"]["synthetic"]["near_copy_rate"] < 0.05


@pytest.fixture(scope="module")
def random_pngs(tmp_path_factory):
    from netdiff.image.codec import write_png

    root = tmp_path_factory.mktemp("rand")
    rng = np.random.default_rng(0)
    for cls in ("dns", "voip"):
        for k in range(2):
            write_png(root / cls / f"r{k}.png",
                      rng.integers(-1, 2, size=(200, NETDIFFUSION.width)).astype(np.int8))
    return root


def test_cli_random_images_score_far(splits, random_pngs, tmp_path):
    from netdiff.cli import main

    out = tmp_path / "out"
    rc = main(["evaluate", "--real", str(splits["real"]), "--synthetic", str(random_pngs),
               "--out", str(out), "--seed", "4", "--no-figures"])
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["jsd"]["overall"] > 0.2
    assert rep["jsd"]["overall"] > 20 * rep["calibration"]["real_vs_real"]["jsd"]["overall"]
    assert rep["c2st_auc"]["overall"] > 0.95
    assert set(rep["jsd"]["per_class"]) == {"dns", "voip"}
    assert not list(out.glob("*.png"))
    # No --training: the real set is the reference, half its flows against the other the baseline.
    assert rep["copy_rate"]["packets"]["synthetic"]["exact_copy_rate"] == 0.0
    assert rep["dcr"]["packets"]["synthetic"]["median"] > 0.3
    assert rep["dcr"]["packets"]["holdout"]["median"] < 0.2


def test_same_seed_same_report(splits, random_pngs, tmp_path):
    real = tmp_path / "real"
    for cls in ("dns", "voip"):
        shutil.copytree(splits["real"] / cls, real / cls)
    reps = [evaluate(real, random_pngs, tmp_path / f"o{k}", seed=7, figures=False) for k in range(2)]
    for r in reps:
        r.pop("timing_s")
    assert json.dumps(reps[0], sort_keys=True, default=str) == json.dumps(reps[1], sort_keys=True, default=str)
    on_disk = [json.loads((tmp_path / f"o{k}" / "report.json").read_text()) for k in range(2)]
    assert on_disk[0]["jsd"] == on_disk[1]["jsd"] and on_disk[0]["tstr"] == on_disk[1]["tstr"]


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    from netdiff.cli import main

    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "a.pcap").write_bytes(b"\xd4\xc3\xb2\xa1")
    (tmp_path / "mixed" / "b.png").write_bytes(b"x")
    rc = main(["evaluate", "--real", str(tmp_path / "mixed"), "--synthetic", str(tmp_path / "mixed"),
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1 and "both pcaps and PNG images" in err and "Traceback" not in err
    rc = main(["evaluate", "--real", str(tmp_path / "nope"), "--synthetic", str(tmp_path),
               "--out", str(tmp_path / "o")])
    assert rc == 1 and "no such folder" in capsys.readouterr().err


def test_images_from_pcap2img_match_their_captures(splits, tmp_path):
    """Real pcaps against `netdiff pcap2img` images of the same packets: identical distributions,
    sidecar timestamps read back, every record an exact copy."""
    from netdiff.cli import main

    real = tmp_path / "real"
    for cls in ("dns", "quic"):
        shutil.copytree(splits["real"] / cls, real / cls)
    assert main(["pcap2img", str(real), str(tmp_path / "png")]) == 0
    rep = evaluate(real, tmp_path / "png", tmp_path / "out", seed=0, figures=False)
    assert rep["inputs"]["synthetic"]["kind"] == "png"
    assert rep["inputs"]["synthetic"]["packets"] == rep["inputs"]["real"]["packets"]
    assert rep["layout"]["name"] == "netdiffusion"
    assert rep["jsd"]["overall"] == 0.0 and rep["decoded_field_jsd"]["overall"] == 0.0
    assert rep["fidelity"]["overall"]["inter_arrival"]["emd_log10_s"] == 0.0
    for unit in ("packets", "images"):
        assert rep["copy_rate"][unit]["synthetic"]["exact_copy_rate"] == 1.0, unit
    assert rep["compliance"]["skipped"].startswith("the synthetic set holds images")
