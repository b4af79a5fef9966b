#!/usr/bin/env bash
# Move constraints.txt on to the newest releases, deliberately and tested:
#   1. a scratch venv gets the newest versions pyproject allows (torch stays TORCH_SPEC);
#   2. the whole test suite runs there;
#   3. only if it passes is constraints.txt rewritten from that venv (review the diff, commit it).
# A failing run leaves constraints.txt alone and prints what failed: the pyproject bound or the
# code has to change first. Usage: bash scripts/upgrade-deps.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
scratch=$(mktemp -d "${TMPDIR:-/tmp}/netdiff-upgrade.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
"$PY" -m venv "$scratch/venv"
pip=("$scratch/venv/bin/python" -m pip)
"${pip[@]}" install -q --upgrade pip setuptools
# --upgrade-strategy eager: every dependency goes to its newest allowed release, not only netdiff's;
# torch named in the same command so it stays TORCH_SPEC (a plain upgrade would pull a CUDA build)
"${pip[@]}" install -q --upgrade --upgrade-strategy eager "${TORCH_SPEC:-torch==2.13.0}" -e ".[dev,app]"
echo "resolved (newest allowed):"
"${pip[@]}" freeze --exclude-editable | grep -iE "^(diffusers|transformers|peft|accelerate|numpy|scipy|scikit-learn|pandas)==" | sed 's/^/  /'
log="$scratch/pytest.log"
# NETDIFF_UPGRADING: the test that checks installed == constraints.txt is about the old file
if ! NETDIFF_UPGRADING=1 "$scratch/venv/bin/python" -m pytest tests -q -p no:cacheprovider "$@" 2>&1 | tee "$log" | tail -n 3; then
  :
fi
if ! grep -qE "^[0-9]+ passed" <(tail -n 1 "$log") || grep -qE "[0-9]+ (failed|error)" <(tail -n 1 "$log"); then
  echo "upgrade-deps: the test suite failed with the newest versions; constraints.txt is unchanged" >&2
  grep -E "^(FAILED|ERROR) " "$log" | head -20 >&2 || true
  exit 1
fi
summary=$(tail -n 1 "$log" | sed 's/=//g; s/^ *//; s/ *$//')
{
  sed -n '1,5p' constraints.txt
  echo "# generated $(date -u +%Y-%m-%d) by scripts/upgrade-deps.sh from a passing run ($summary)"
  "${pip[@]}" freeze --all --exclude-editable | grep -viE '^(torch|triton)[=-]|^nvidia-'
} > constraints.txt.new
mv constraints.txt.new constraints.txt      # same folder: the rename is atomic
echo "constraints.txt rewritten; review 'git diff constraints.txt', run bash scripts/setup.sh, commit"
