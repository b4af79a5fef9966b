"""Generate: train a diffusion model from a config (or pick one), generate a class's images,
repair them into pcaps, validate them and download them as a zip."""
from __future__ import annotations

import json

from netdiff.app import tasks, ui
from netdiff.app.ui import st
from netdiff.app.workspace import GENERATED, IMAGES, MODELS, safe_name

TITLE = "Generate"
MODEL_FILE = "netdiff_model.json"      # what train-base writes: classes, space, config


def models(ws) -> list[str]:
    return [m for m in ws.folders(MODELS) if ws.path(m, MODEL_FILE).is_file()]


def _train(ws) -> None:
    st.subheader("Train a model")
    images = ui.folder_picker(ws, "images", ws.folders(IMAGES), "train-images")
    c1, c2, c3 = st.columns(3)
    config = c1.selectbox("config", tasks.config_names("model"), index=tasks.config_names("model").index("tiny"),
                          key="train-config")
    steps = c2.number_input("steps", 1, 100_000, 200, key="train-steps")
    seed = c3.number_input("seed", 0, 2**31 - 1, 0, key="train-seed")
    name = st.text_input("model name", "model", key="train-name")
    if images and st.button("Train"):
        with ui.one_line_errors():
            ui.start_job(ws, "train", {"images": images, "model": f"{MODELS}/{safe_name(name, 'model name')}",
                                       "config": config, "steps": int(steps), "seed": int(seed)})
    state = ui.job_panel(ws, "train")
    if state and state["status"] == "done":
        loss = ws.path(state["result"]["model"], "loss.png")
        if loss.is_file():
            st.image(str(loss))


def _generate(ws) -> None:
    st.subheader("Generate")
    model = ui.folder_picker(ws, "model", models(ws), "gen-model")
    if not model:
        return
    meta = json.loads(ws.path(model, MODEL_FILE).read_text())
    c1, c2, c3, c4 = st.columns(4)
    cls = c1.selectbox("class", meta.get("classes") or ["default"], key="gen-class")
    count = c2.number_input("count", 1, 256, 4, key="gen-count")
    seed = c3.number_input("seed", 0, 2**31 - 1, 0, key="gen-seed")
    steps = c4.number_input("sampling steps", 1, 1000, 12, key="gen-steps")
    params = {"model": model, "class": cls, "count": int(count), "seed": int(seed), "steps": int(steps)}
    if meta.get("space") == "masked":
        params["unmask_order"] = st.selectbox("sampler (unmask order)", ["random", "confidence"], key="gen-order")
    else:
        params["scheduler"] = st.selectbox("sampler", ["dpmpp-2m-karras", "euler-a", "ddim", "ddpm"], key="gen-sched")
    run = st.text_input("run name", f"{model.rsplit('/', 1)[-1]}-{cls}-{int(seed)}", key="gen-run")
    if st.button("Generate"):
        with ui.one_line_errors():
            ui.start_job(ws, "generate", {**params, "output": f"{GENERATED}/{safe_name(run, 'run name')}"})
    ui.job_panel(ws, "generate")


def _results(ws) -> None:
    runs = [r for r in ws.folders(GENERATED) if ws.path(r, tasks.VALIDATION).is_file()]
    if not runs:
        return
    st.subheader("Results")
    run = st.selectbox("run", runs, index=len(runs) - 1, key="gen-result")
    synth = sorted(ws.path(run, "images").glob("*/*.png"))
    cls = synth[0].parent.name if synth else None
    real_sets = ws.folders(IMAGES)
    real_set = st.selectbox("real images to compare with", real_sets, key="gen-real") if real_sets else None
    real = sorted(ws.path(real_set, cls).glob("*.png"))[: len(synth)] if real_set and cls else []
    left, right = st.columns(2)
    left.markdown(f"**generated** ({len(synth)})")
    right.markdown(f"**real** ({len(real)} shown)")
    for p in synth:
        left.image(str(p), caption=p.name)
    for p in real:
        right.image(str(p), caption=p.name)
    validation = json.loads(ws.path(run, tasks.VALIDATION).read_text())
    total = validation["total"]
    st.markdown(f"**validation** (tshark, rule checks; no replay): "
                f"{'all packets valid' if validation['ok'] else 'some packets invalid'}")
    st.dataframe([{k: total[k] for k in ("files", "packets", "malformed", "checksum_errors", "expert_errors",
                                         "rule_failed_packets", "ok")}], hide_index=True)
    st.dataframe([{"pcap": f["path"].rsplit("/", 1)[-1], "packets": f["packets"], "ok": f["ok"],
                   "failures": _failures(f)} for f in validation["files"]], hide_index=True)
    zipped = ws.path(run, tasks.ZIP)
    if zipped.is_file():
        st.download_button("Download pcaps (zip)", zipped.read_bytes(), file_name=f"{run.rsplit('/', 1)[-1]}.zip",
                           mime="application/zip", key="gen-download")


def _failures(report: dict) -> str:
    """What failed in one pcap (tshark's dissectors, then netdiff's rules), or nothing."""
    failed = report["failures_by_dissector"] or report["rule_failures"]
    return json.dumps(failed) if failed else ""


def render() -> None:
    ws = ui.workspace()
    st.title(TITLE)
    _train(ws)
    _generate(ws)
    _results(ws)
