#!/usr/bin/env bash
# One-time set-up on a fresh Debian/Ubuntu machine: system tools, a virtualenv, netdiff and its
# dependencies. Safe to run again (each step is skipped when already done).
set -euo pipefail
cd "$(dirname "$0")/.."

# tshark and tcpreplay (validation), iproute2 (network namespaces for replay).
need=()
command -v tshark >/dev/null 2>&1 || need+=(tshark)
command -v tcpreplay >/dev/null 2>&1 || need+=(tcpreplay)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
# chromium and its driver: the web app's browser test (tests/app/test_browser.py)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
  echo "installing ${need[*]} (Debian packages)"
  echo "wireshark-common wireshark-common/install-setuid boolean false" | $SUDO debconf-set-selections 2>/dev/null || true
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# Every version comes from constraints.txt, the set the test suite last passed with: a release of
# some dependency tomorrow changes nothing here (scripts/upgrade-deps.sh moves the set on).
PIN=(-c constraints.txt)
.venv/bin/python -m pip install -q "${PIN[@]}" pip setuptools >/dev/null
# A CPU build of torch: TORCH_SPEC can name another (the default matches the wheel on the
# project's build machines; pyproject itself only asks for torch>=2.1).
# An installed torch is kept only when it is the one TORCH_SPEC names (torch==X).
spec=${TORCH_SPEC:-torch==2.13.0}
want=${spec#torch==}
have=$(.venv/bin/python -c "import torch; print(torch.__version__.split('+')[0])" 2>/dev/null || true)
if [ -z "$have" ] || { [ "$want" != "$spec" ] && [ "$have" != "$want" ]; }; then
  .venv/bin/python -m pip install -q "${PIN[@]}" "$spec"
fi
# No build isolation: the build backend is the pinned setuptools of the venv, not whatever
# release an isolated build environment would fetch today.
# app: streamlit for `netdiff app` and its page tests
.venv/bin/python -m pip install -q "${PIN[@]}" --no-build-isolation -e ".[dev,app]"
echo "netdiff is set up: $(.venv/bin/netdiff --version)"
