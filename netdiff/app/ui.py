"""Page pieces the four pages share: the job panel, errors as one line, images, reports."""
from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path

from netdiff.app import jobs
from netdiff.app.workspace import Workspace
from netdiff.errors import NetdiffError


class LazyStreamlit:
    """``streamlit``, imported on first use: netdiff's modules all import without the optional
    ``app`` extra (as they do without ``sdv`` or ``opacus``); only running a page needs it."""

    def __getattr__(self, name):
        import streamlit

        return getattr(streamlit, name)


st = LazyStreamlit()     # the pages use this name as they would ``import streamlit as st``


def workspace() -> Workspace:
    return Workspace.current()


@contextmanager
def one_line_errors():
    """Bad input shows as one red line on the page, never a traceback."""
    try:
        yield
    except NetdiffError as e:
        st.error(str(e))


def start_job(ws: Workspace, kind: str, params: dict) -> None:
    with one_line_errors():
        st.session_state[f"job-{kind}"] = jobs.start(ws, kind, params)


def job_panel(ws: Workspace, kind: str) -> dict | None:
    """Progress, loss curve and a cancel button for the newest ``kind`` job (found again from the
    workspace after a reload); returns its state. While it runs, the panel refreshes itself every
    second and reruns the page once the job ends, so the page shows the result."""
    job_id = st.session_state.get(f"job-{kind}") or jobs.latest(ws, kind)
    if job_id is None:
        return None
    state = jobs.status(ws, job_id)
    if state["status"] == jobs.RUNNING:
        st.fragment(_live_panel, run_every=1.0)(ws, kind, job_id)
    else:
        _show_state(state)
    return state


def _live_panel(ws: Workspace, kind: str, job_id: str) -> None:
    state = jobs.status(ws, job_id)
    if state["status"] != jobs.RUNNING:
        st.rerun()          # the whole page, which now shows the result
    _show_state(state)
    if st.button("Cancel", key=f"cancel-{kind}"):
        jobs.cancel(ws, job_id)
        st.rerun()


def _show_state(state: dict) -> None:
    status, message = state["status"], state.get("message") or ""
    label = f"job {state['id']}: {message}"
    if status == jobs.RUNNING:
        prog = state.get("progress") or {}
        n, total = prog.get("n", 0), prog.get("total")
        frac = min(1.0, n / total) if total else 0.0
        st.progress(frac, text=f"{label} ({prog.get('desc', '')} {n}/{total or '?'})" if prog else label)
    elif status == jobs.DONE:
        st.success(label)
    elif status == jobs.CANCELLED:
        st.warning(label)
    else:
        st.error(label)
    losses = state.get("losses") or []
    if losses and status != jobs.DONE:        # once done, the page shows the run's own loss.png
        st.caption("training loss per step")
        st.line_chart({"loss": losses}, height=200)


def folder_picker(ws: Workspace, label: str, options: list[str], key: str) -> str | None:
    if not options:
        st.info(f"{label}: nothing in the workspace yet")
        return None
    return st.selectbox(label, options, key=key)


def nprint_image(path: Path, key: str) -> None:
    """An nPrint image, zoomable: a column range, and each bit drawn as a block of pixels
    (nearest neighbour, so every bit stays one crisp rectangle). An image is far wider than
    tall (1088 columns, 32 packets by default), so rows start taller than columns are wide."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
    w, h = im.size
    c1, c2, c3 = st.columns([2, 1, 1])
    lo, hi = c1.slider("columns", 0, w, (0, w), key=f"{key}-cols")
    col_px = c2.slider("column width (px)", 1, 16, 1, key=f"{key}-zoom")
    row_px = c3.slider("row height (px)", 1, 32, max(1, min(32, 256 // h)), key=f"{key}-rows")
    if hi <= lo:
        hi = min(w, lo + 1)
    crop = im.crop((lo, 0, hi, h))
    st.image(crop.resize(((hi - lo) * col_px, h * row_px), Image.NEAREST),
             caption=f"{path.name}: {h} packets x columns {lo}-{hi} (red 1, green 0, blue absent)")


_FIGURE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


def markdown_report(ws: Workspace, report_md: Path) -> None:
    """A report.md as the page: its text as markdown, its figures as images (each figure path
    resolved through the workspace, like any other path)."""
    text = report_md.read_text()
    pos = 0
    for m in _FIGURE.finditer(text):
        if text[pos:m.start()].strip():
            st.markdown(text[pos:m.start()])
        with one_line_errors():
            figure = ws.path(ws.rel(report_md.parent), m.group(1))
            if figure.is_file():
                st.image(str(figure), caption=m.group(1))
        pos = m.end()
    if text[pos:].strip():
        st.markdown(text[pos:])
