"""Captures: add pcaps (netdiff's samples or an upload), convert them, look at the images and
the protocol and field summaries per class."""
from __future__ import annotations

import json

import netdiff
from netdiff.app import tasks, ui
from netdiff.app.ui import st
from netdiff.app.workspace import CAPTURES, IMAGES, safe_name, upload_limit_mb
from netdiff.errors import NetdiffError

TITLE = "Captures"


def field_rows(priors: dict, cls: str) -> list[dict]:
    """One row per header field of ``cls`` in a field_priors.json: its most common values and
    their shares (the context over all packets, "*", where the priors have one)."""
    rows = []
    fields = (priors.get("classes", {}).get(cls) or {}).get("fields", {})
    for name, contexts in sorted(fields.items()):
        ctx = "*" if "*" in contexts else sorted(contexts)[0]
        d = contexts[ctx]
        if "values" in d and d.get("values"):
            top = ", ".join(f"{v!r}: {p:.0%}" for v, p in list(zip(d["values"], d["p"]))[:5])
        elif "shares" in d:
            top = ", ".join(f"{k}: {v:.0%}" for k, v in d["shares"].items())
        elif "q" in d:
            top = f"quantiles {d['q'][0]} .. {d['q'][-1]}"
        else:
            top = ""
        rows.append({"field": name, "packets": d.get("n", 0), "context": ctx, "values": top})
    return rows


def _add_captures(ws) -> None:
    st.subheader("Add captures")
    c1, c2 = st.columns(2)
    with c1:
        st.write("netdiff's seeded sample captures (TCP, DNS, ICMP), into `captures/samples`.")
        if st.button("Write sample captures"):
            with ui.one_line_errors():
                made = netdiff.samples(ws.path(CAPTURES, "samples"), seed=0)
                st.success(f"wrote {len(made)} captures")
    with c2:
        name = st.text_input("capture set", "uploads", key="upload-set")
        cls = st.text_input("class", "default", key="upload-class")
        up = st.file_uploader(f"pcap or pcapng (at most {upload_limit_mb()} MB)", type=["pcap", "pcapng", "cap"],
                              key="upload-pcap")
        if up is not None and st.button("Save upload"):
            with ui.one_line_errors():
                path = ws.save_upload(f"{CAPTURES}/{safe_name(name, 'capture set')}/{safe_name(cls, 'class')}",
                                      up.name, up.getvalue())
                try:
                    batch, _ = netdiff.read_capture(path)
                except NetdiffError:
                    path.unlink()       # a file netdiff cannot read is not kept
                    raise
                st.success(f"saved {ws.rel(path)} ({len(batch)} packets)")


def _summaries(ws, images: str) -> None:
    summary = ws.path(images, tasks.SUMMARY)
    if not summary.is_file():
        return
    doc = json.loads(summary.read_text())
    st.subheader("Protocols per class")
    st.dataframe([{"class": c, **counts} for c, counts in doc["protocols"].items()], hide_index=True)
    conv = doc["convert"]
    st.caption(f"{conv['files']} files, {conv['packets_read']} packets, {conv['images']} images; "
               f"skipped: {conv['skipped'] or 'none'}")
    for line in conv["errors"]:
        st.error(line)
    classes = ws.folders(images)
    if not classes:
        return
    cls = st.selectbox("class", [c.rsplit("/", 1)[-1] for c in classes], key="captures-class")
    priors = ws.path(images, "field_priors.json")
    if priors.is_file():
        st.subheader(f"Header fields of {cls}")
        st.dataframe(field_rows(json.loads(priors.read_text()), cls), hide_index=True)
    pngs = sorted(ws.path(images, cls).glob("*.png"))
    if pngs:
        st.subheader(f"nPrint images of {cls} ({len(pngs)})")
        pick = st.selectbox("image", [p.name for p in pngs], key="captures-image")
        ui.nprint_image(ws.path(images, cls, pick), "captures")


def render() -> None:
    ws = ui.workspace()
    st.title(TITLE)
    st.caption(f"workspace {ws.root}")
    _add_captures(ws)
    st.subheader("Convert")
    sets = ws.folders(CAPTURES)
    chosen = ui.folder_picker(ws, "capture set", sets, "captures-set")
    if chosen:
        files = sorted(p for p in ws.path(chosen).rglob("*") if p.is_file() and not p.name.startswith("."))
        st.dataframe([{"file": ws.rel(p), "bytes": p.stat().st_size} for p in files], hide_index=True)
        height = st.number_input("packets per image", 1, 1024, 32, key="captures-height")
        images = f"{IMAGES}/{chosen.rsplit('/', 1)[-1]}"
        if st.button("Convert to images"):
            ui.start_job(ws, "convert", {"captures": chosen, "images": images, "height": int(height)})
        ui.job_panel(ws, "convert")
        _summaries(ws, images)
