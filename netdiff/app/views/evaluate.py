"""Evaluate: netdiff evaluate on two workspace folders, and its report.md as the page."""
from __future__ import annotations

from netdiff.app import ui
from netdiff.app.ui import st
from netdiff.app.workspace import CAPTURES, GENERATED, IMAGES, REPORTS, safe_name

TITLE = "Evaluate"


def sources(ws) -> list[str]:
    """Folders evaluate can read: capture sets, image sets, and each generation run's pcaps and images."""
    runs = ws.folders(GENERATED)
    return ws.folders(CAPTURES) + ws.folders(IMAGES) + [f"{r}/{kind}" for r in runs for kind in ("pcaps", "images")
                                                        if ws.path(r, kind).is_dir()]


def render() -> None:
    ws = ui.workspace()
    st.title(TITLE)
    options = sources(ws)
    if not options:
        st.info("nothing to evaluate yet: add captures (Captures) and generate (Generate) first")
    else:
        c1, c2 = st.columns(2)
        real = c1.selectbox("real", options, key="eval-real")
        synthetic = c2.selectbox("synthetic", options, index=len(options) - 1, key="eval-synth")
        name = st.text_input("report name", "report", key="eval-name")
        if st.button("Evaluate"):
            with ui.one_line_errors():
                ui.start_job(ws, "evaluate", {"real": real, "synthetic": synthetic,
                                              "output": f"{REPORTS}/{safe_name(name, 'report name')}"})
        state = ui.job_panel(ws, "evaluate")
        if state and state["status"] == "done":
            st.info(state["result"]["summary"])
    reports = [r for r in ws.folders(REPORTS) if ws.path(r, "report.md").is_file()]
    if reports:
        st.divider()
        report = st.selectbox("report", reports, key="eval-report")
        ui.markdown_report(ws, ws.path(report, "report.md"))
