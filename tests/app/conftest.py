"""Fixtures for the web app's tests: a workspace in tmp_path, pages under AppTest, job waits.

streamlit is imported only inside the fixtures that need it, so the pure tests of this folder
(workspace paths, jobs, the CLI's message without streamlit) run where it is absent."""
from __future__ import annotations

import pytest

from netdiff.app.workspace import ENV, Workspace


@pytest.fixture
def ws(tmp_path, monkeypatch) -> Workspace:
    monkeypatch.setenv(ENV, str(tmp_path / "ws"))
    return Workspace.current()


@pytest.fixture
def page(ws):
    """page("captures") -> an AppTest of that page, already run once."""
    from streamlit.testing.v1 import AppTest

    def make(name: str):
        at = AppTest.from_string(f"from netdiff.app.views import {name}\n{name}.render()", default_timeout=60)
        return at.run()

    return make
