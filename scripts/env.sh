# Sourced by the other scripts: a virtual environment with the project's requirements,
# and offline Hugging Face settings when the shared model cache sits beside the clone.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
REQS="${1:-requirements.txt}"

PY="${PYTHON:-python3}"
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || { echo "SteerLab needs Python 3.11 or newer; $("$PY" --version) was found. Set PYTHON=/path/to/python3.11." >&2; exit 2; }

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# Reinstall only when the requirement files changed.
stamp=".venv/.installed-$(cat requirements*.txt | sha256sum | cut -c1-16)-$(basename "$REQS")"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$REQS"
  touch "$stamp"
fi
# The project itself, in editable mode: the `steerlab` command and the entry points of
# pyproject.toml. Redone only when pyproject.toml or requirements.txt (its dependencies)
# change. Built with the venv's own setuptools (installed first if the
# venv lacks it, as Python 3.12+ venvs do), so the build needs no isolated environment
# and no network.
editable=".venv/.editable-$(cat pyproject.toml requirements.txt | sha256sum | cut -c1-16)"
if [ ! -f "$editable" ]; then
  if ! .venv/bin/python -c 'import setuptools' 2>/dev/null; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check "setuptools>=70"
  fi
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
  touch "$editable"
fi

if [ -d "$ROOT/../shared/hf-cache/hub" ]; then
  HF_HUB_CACHE="$(cd "$ROOT/../shared/hf-cache/hub" && pwd)"
  export HF_HUB_CACHE
  export HF_HUB_OFFLINE=1
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
