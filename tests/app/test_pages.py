"""Every page under Streamlit's AppTest: the widgets drive the same jobs a browser would, and
the results the jobs leave in the workspace show on the page (a rerun reads them back)."""
from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("streamlit")

import netdiff  # noqa: E402
from netdiff.app import jobs  # noqa: E402
from app_helpers import button, texts, wait_for  # noqa: E402


def test_captures_page_samples_convert_summaries_and_images(ws, page):
    at = page("captures")
    assert not at.exception and texts(at.info) == ["capture set: nothing in the workspace yet"]
    button(at, "Write sample captures").click().run()
    assert texts(at.success) == ["wrote 6 captures"]
    button(at, "Convert to images").click().run()
    state = wait_for(ws, "convert")
    assert state["status"] == jobs.DONE, state
    at.run()
    assert not at.exception and not at.error
    protocols = at.dataframe[1].value
    assert list(protocols["class"]) == ["dns_udp", "icmp_echo", "web_tcp"]
    assert protocols.set_index("class").loc["web_tcp", "TCP"] == protocols.set_index("class").loc["web_tcp", "packets"]
    assert protocols.set_index("class").loc["dns_udp", "UDP"] > 0
    fields = at.dataframe[2].value
    assert "ipv4.ttl" in set(fields["field"])
    images = at.get("image")
    assert images and "32 packets" in images[0].captions[0]
    at.selectbox(key="captures-class").select("web_tcp").run()
    assert "tcp.flags" in " ".join(at.dataframe[2].value["field"])
    at.slider(key="captures-zoom").set_value(4).run()
    assert not at.exception


def test_captures_page_upload_good_bad_and_too_large(ws, page, tmp_path, monkeypatch):
    made = netdiff.samples(tmp_path / "samples", seed=1)
    at = page("captures")
    at.text_input(key="upload-class").input("dns").run()
    at.file_uploader(key="upload-pcap").upload("dns_udp_0.pcap", made[2].read_bytes()).run()
    button(at, "Save upload").click().run()
    assert texts(at.success) == [f"saved captures/uploads/dns/dns_udp_0.pcap ({_packets(made[2])} packets)"]
    at.file_uploader(key="upload-pcap").set_value(("notes.pcap", b"hello, not a capture", "text/plain")).run()
    button(at, "Save upload").click().run()
    assert len(at.error) == 1 and "notes.pcap" in at.error[0].value and "\n" not in at.error[0].value
    assert not (ws.root / "captures/uploads/dns/notes.pcap").exists()
    monkeypatch.setenv("NETDIFF_APP_MAX_UPLOAD_MB", "1")
    at.file_uploader(key="upload-pcap").set_value(("big.pcap", b"\0" * (1024 * 1024 + 10), "application/octet-stream"))
    at.run()
    button(at, "Save upload").click().run()
    assert texts(at.error) == ["big.pcap: 1.0 MB is over the upload limit of 1 MB (netdiff app --max-upload-mb)"]
    at.text_input(key="upload-set").input("../../escape").run()
    button(at, "Save upload").click().run()
    assert "capture set '../../escape' is not allowed" in at.error[0].value


def _packets(path) -> int:
    return len(netdiff.read_capture(path)[0])


@pytest.fixture
def images(ws):
    """The workspace after Captures' samples + convert, done through the API (faster)."""
    netdiff.samples(ws.path("captures/samples"), seed=0, files_per_class=1)
    netdiff.pcap2img(ws.path("captures/samples"), ws.path("images/samples"),
                     layout=netdiff.named_layout("netdiffusion", height=32))
    return "images/samples"


def test_generate_page_train_generate_validate_download(ws, page, images):
    at = page("generate")
    at.number_input(key="train-steps").set_value(2).run()
    button(at, "Train").click().run()
    state = wait_for(ws, "train")
    assert state["status"] == jobs.DONE, state
    assert len(state["losses"]) == 2                         # from the loop's own progress bar
    assert state["bars"]["train-base"] == {"n": 2, "total": 2, "desc": "train-base"}
    at.run()
    assert not at.exception and texts(at.success)[0].endswith(": done")
    at.selectbox(key="gen-class").select("dns_udp").run()
    at.number_input(key="gen-count").set_value(2).run()
    at.number_input(key="gen-steps").set_value(2).run()
    assert at.selectbox(key="gen-order").value == "random"
    button(at, "Generate").click().run()
    state = wait_for(ws, "generate")
    assert state["status"] == jobs.DONE, state
    at.run()
    assert not at.exception and not at.error
    captions = [c for im in at.get("image") for c in im.captions]
    assert "dns_udp_000000.png" in captions and "dns_udp_000001.png" in captions   # generated
    assert any(c.startswith("dns_udp_0_") for c in captions)                        # real, beside them
    total = at.dataframe[0].value
    assert total.loc[0, "packets"] > 0 and bool(total.loc[0, "ok"])
    zipped = zipfile.ZipFile(io.BytesIO((ws.root / "generated/model-dns_udp-0/pcaps.zip").read_bytes()))
    assert zipped.namelist() == ["dns_udp/dns_udp_000000.pcap", "dns_udp/dns_udp_000001.pcap"]
    assert at.get("download_button")
    fresh = page("generate")            # a reload: a new session finds the job and the run on disk
    assert texts(fresh.success)[-1] == f"job {state['id']}: done"
    assert fresh.dataframe[0].value.equals(total)


def test_generate_page_cancel(ws, page, images):
    at = page("generate")
    at.number_input(key="train-steps").set_value(100_000).run()
    button(at, "Train").click().run()
    assert at.get("progress")[0].proto.text.startswith("job train-")   # the live panel, while it runs
    button(at, "Cancel").click().run()
    state = wait_for(ws, "train", timeout=20)
    assert state["status"] == jobs.CANCELLED
    at.run()
    assert texts(at.warning) == [f"job {state['id']}: cancelled"]
    assert not (ws.root / "models/model/netdiff_model.json").exists()


def test_evaluate_page_report(ws, page, images):
    # one class on each side keeps the evaluation short: the page, not evaluate, is under test
    for folder in ("captures/one/web_tcp", "generated/run/pcaps/web_tcp"):
        ws.path(folder).mkdir(parents=True)
        ws.path(folder, "x.pcap").write_bytes(ws.path("captures/samples/web_tcp/web_tcp_0.pcap").read_bytes())
    at = page("evaluate")
    at.selectbox(key="eval-real").select("captures/one").run()
    at.selectbox(key="eval-synth").select("generated/run/pcaps").run()
    button(at, "Evaluate").click().run()
    state = wait_for(ws, "evaluate")
    assert state["status"] == jobs.DONE, state
    at.run()
    assert not at.exception and not at.error
    text = "\n".join(m.value for m in at.markdown)
    assert "# netdiff evaluation report" in text and "C2ST AUC" in text and "Memorisation audit" in text
    figures = [c for im in at.get("image") for c in im.captions]
    assert {"images.png", "field_heatmap.png", "distributions.png", "dcr.png"} <= set(figures)


def telemetry_table(n_seq=16, length=12, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_seq):
        amp = 1.0 + i % 3
        t = np.arange(length)
        load = amp * (1 + np.sin(t / 2 + rng.random() * 6)) + 0.1 * rng.standard_normal(length)
        for k in range(length):
            rows.append({"host": f"h{i:02d}", "ts": f"2025-01-{1 + i:02d} {k:02d}:00:00", "kind": "abc"[i % 3],
                         "load": load[k], "queue": 0.5 * load[k] + rng.random()})
    return pd.DataFrame(rows)


def test_telemetry_page_train_evaluate_and_plots(ws, page):
    at = page("telemetry")
    at.file_uploader(key="tel-upload").upload("routers.csv", telemetry_table().to_csv(index=False).encode()).run()
    button(at, "Save table").click().run()
    assert texts(at.success) == ["saved telemetry/data/routers.csv"]
    assert at.multiselect(key="tel-key").value == ["host"]
    assert at.multiselect(key="tel-features").value == ["load", "queue"]
    assert at.selectbox(key="tel-time").value == "ts"          # guessed from its name
    at.multiselect(key="tel-attributes").select("kind").run()
    at.multiselect(key="tel-categorical").select("kind").run()
    button(at, "Train and evaluate").click().run()
    state = wait_for(ws, "telemetry")
    assert state["status"] == jobs.DONE, state
    assert state["bars"]["doppelganger"]["n"] == 2          # epochs reported from DoppelGANger's loop
    at.run()
    assert not at.exception and not at.error
    metrics = at.dataframe[0].value.set_index("metric")["value"]
    saved = json.loads((ws.root / "telemetry/runs/doppelganger-routers/metrics.json").read_text())
    shown = {k: v for k, v in saved.items() if k in ("m", "autocorrelation_mse", "cross_correlation",
                                                     "discriminative_score", "predictive_score",
                                                     "predictive_score_real") and v is not None}
    assert shown and metrics.to_dict() == shown
    if saved["discriminative_score"] is None:            # a tiny table: the reason, not a 0.5
        assert any(saved["discriminative"]["note"] in c.value for c in at.caption)
    forecast = at.dataframe[1].value.set_index("trained on")
    assert {"mse", "rmse", "mae", "mape"} <= set(forecast.columns)
    # real vs synthetic series and distribution; forecast, residuals, flagged anomalies
    assert len(at.get("vega_lite_chart")) == 5
    trace = saved["downstream"]["trace"]
    assert set(trace["predicted"]) == {"real", "synthetic"} and len(trace["step"]) > 0
    assert [c for im in at.get("image") for c in im.captions] == ["series.png", "autocorrelation.png",
                                                                   "distributions.png"]


def test_telemetry_page_bad_table_is_one_line(ws, page):
    at = page("telemetry")
    at.file_uploader(key="tel-upload").upload("x.parquet", b"PAR1 but not really").run()
    button(at, "Save table").click().run()
    assert len(at.error) == 1 and at.error[0].value.startswith("x.parquet: not a readable CSV or Parquet table")
    assert not (ws.root / "telemetry/data/x.parquet").exists()
