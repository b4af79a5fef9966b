"""The container files: what they install and expose agrees with the project (a Docker engine
builds them where one runs; these machines have only the client)."""
from __future__ import annotations

import re

import yaml

from tests.conftest import REPO


def test_dockerfile_installs_the_app_with_the_pinned_versions_and_starts_it():
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r'pip install [^\n]*-c constraints\.txt "\.\[app\]"', text)
    setup = (REPO / "scripts" / "setup.sh").read_text()
    torch = re.search(r"TORCH_SPEC:-(torch==[\d.]+)", setup).group(1)
    assert f"ARG TORCH_SPEC={torch}" in text                 # the torch the tests passed with
    for path in re.findall(r"^COPY (\S+)", text, re.M):
        assert (REPO / path).exists(), path
    cmd = re.search(r"^CMD (.+)$", text, re.M).group(1)
    assert '"app"' in cmd and '"--workspace", "/workspace"' in cmd and "EXPOSE 8501" in text


def test_compose_publishes_on_loopback_only_and_keeps_the_workspace():
    svc = yaml.safe_load((REPO / "compose.yaml").read_text())["services"]["netdiff"]
    assert svc["ports"] == ["127.0.0.1:8501:8501"]            # no login: never on every interface
    assert any(v.endswith(":/workspace") for v in svc["volumes"])
