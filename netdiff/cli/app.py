"""``netdiff app``: the local web app (netdiff/app/), served by Streamlit."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import click

from netdiff.errors import NetdiffError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def streamlit_argv(main: Path, host: str, port: int, max_upload_mb: int) -> list[str]:
    """The ``streamlit run`` command line: served only where asked, no usage statistics sent
    (the app never calls out), no file watcher (the installed code does not change under it)."""
    return [sys.executable, "-m", "streamlit", "run", str(main),
            "--server.address", host, "--server.port", str(port), "--server.headless", "true",
            "--server.maxUploadSize", str(max_upload_mb), "--server.fileWatcherType", "none",
            "--server.runOnSave", "false", "--browser.gatherUsageStats", "false",
            "--client.toolbarMode", "minimal"]     # no "Deploy" button: the app is local


@click.command("app", short_help="The local web app over the toolkit (needs netdiff[app]).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback exposes the app (it has no login).")
@click.option("--port", type=click.IntRange(1, 65535), default=8501, show_default=True)
@click.option("--workspace", type=click.Path(file_okay=False), default="netdiff-workspace", show_default=True,
              help="The one folder the app reads and writes (created if need be).")
@click.option("--max-upload-mb", type=click.IntRange(1, 4096), default=64, show_default=True,
              help="Largest upload accepted.")
def app_cmd(host, port, workspace, max_upload_mb):
    """Serve the web app: Captures, Generate, Evaluate and Telemetry pages over netdiff's API."""
    if importlib.util.find_spec("streamlit") is None:
        raise NetdiffError("the web app needs streamlit: pip install 'netdiff[app]'")
    from netdiff.app.workspace import ENV, LIMIT_ENV

    ws = Path(workspace).resolve()
    ws.mkdir(parents=True, exist_ok=True)
    if host not in LOOPBACK:
        click.echo(f"netdiff: warning: serving on {host}: anyone who can reach it can use the app "
                   "and its workspace", err=True)
    main = Path(__file__).resolve().parents[1] / "app" / "main.py"
    click.echo(f"netdiff app: http://{host}:{port} (workspace {ws})", err=True)
    env = dict(os.environ, **{ENV: str(ws), LIMIT_ENV: str(max_upload_mb)})
    sys.exit(subprocess.call(streamlit_argv(main, host, port, max_upload_mb), env=env))
